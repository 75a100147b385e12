"""Interaction files: round trips, error messages that point at the right line, lenient accounting."""

from __future__ import annotations

import gzip
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from shared.data.schema import COLUMNS, read_interactions, write_interactions
from shared.errors import DataError

HEADER = "user_id,item_id,timestamp,event\n"


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "007", "NA"],
            "item_id": ["i1", "i, with comma", "i3", "i1"],
            "timestamp": np.array([1, 2, 1_700_000_000, -5], dtype=np.int64),
            "event": ["view", "cart", "purchase", "view"],
        }
    )


def _assert_schema(frame: pd.DataFrame) -> None:
    assert tuple(frame.columns) == COLUMNS
    assert frame["timestamp"].dtype == np.int64
    for name in ("user_id", "item_id", "event"):
        assert pd.api.types.is_string_dtype(frame[name]), name


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    write_interactions(_frame(), path)
    frame, report = read_interactions(path)
    _assert_schema(frame)
    pd.testing.assert_frame_equal(frame, _frame(), check_dtype=False)
    assert (report.rows_read, report.rows_kept, report.rows_dropped) == (4, 4, 0)


def test_event_column_defaults_to_view_and_order_is_kept(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "user_id,item_id,timestamp\nb,x,9\na,y,1\n")
    frame, _ = read_interactions(path)
    _assert_schema(frame)
    assert frame["user_id"].tolist() == ["b", "a"]  # file order, not sorted
    assert frame["event"].tolist() == ["view", "view"]


def test_iso_timestamps_become_unix_seconds(tmp_path: Path) -> None:
    text = (
        "user_id,item_id,timestamp\n"
        "u,i,2024-01-01T00:00:00Z\n"
        "u,i,2024-01-01T02:00:00+02:00\n"
        "u,i,2024-01-01\n"
        "u,i,1704067200\n"
    )
    frame, _ = read_interactions(_write(tmp_path / "iso.csv", text))
    assert frame["timestamp"].tolist() == [1704067200] * 4


def test_parquet_native_timestamp_and_int_ids(tmp_path: Path) -> None:
    path = tmp_path / "native.parquet"
    table = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "item_id": pa.array([10, 20], pa.int32()),
            "timestamp": pa.array([1_000_000, 2_000_000], pa.timestamp("ms", tz="UTC")),
        }
    )
    pq.write_table(table, path)
    frame, _ = read_interactions(path)
    assert frame["user_id"].tolist() == ["1", "2"]
    assert frame["item_id"].tolist() == ["10", "20"]
    assert frame["timestamp"].tolist() == [1000, 2000]


# ------------------------------------------------------------------------------------ error cases


def _error(path: Path, **kwargs: bool) -> str:
    with pytest.raises(DataError) as info:
        read_interactions(path, **kwargs)
    message = str(info.value)
    assert path.name in message
    return message


def test_bad_timestamp_names_file_and_line(tmp_path: Path) -> None:
    rows = ["u,i,1", "u,i,2", "u,i,3", "u,i,yesterday", "u,i,5"]
    message = _error(_write(tmp_path / "shop.csv", "user_id,item_id,timestamp\n" + "\n".join(rows)))
    assert "line 5" in message
    assert "'yesterday'" in message


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (",i,1,view", "missing user_id"),
        ("u,  ,1,view", "missing item_id"),
        ("u,i,1,click", "unknown event 'click'"),
    ],
)
def test_bad_values_name_the_line(tmp_path: Path, row: str, expected: str) -> None:
    message = _error(_write(tmp_path / "s.csv", HEADER + "u,i,1,view\n" + row + "\n"))
    assert "line 3" in message
    assert expected in message


def test_first_bad_row_is_reported(tmp_path: Path) -> None:
    text = HEADER + "u,i,1,view\nu,i,1,click\n,i,oops,view\n"
    message = _error(_write(tmp_path / "s.csv", text))
    assert "line 3" in message and "click" in message


def test_line_numbers_count_blank_lines_and_multiline_quotes(tmp_path: Path) -> None:
    text = HEADER + 'u,i,1,view\n\nu,"multi\nline item",2,view\nu,i,never,view\n'
    assert "line 6" in _error(_write(tmp_path / "s.csv", text))


def test_wrong_field_count_names_the_line(tmp_path: Path) -> None:
    text = HEADER + "u,i,1,view\nu,i,1,view,extra\n"
    message = _error(_write(tmp_path / "s.csv", text))
    assert "line 3" in message and "fields" in message


def test_extra_field_in_first_row_is_not_taken_as_index(tmp_path: Path) -> None:
    # pandas would otherwise treat the extra field as an index and shift every column silently.
    text = "user_id,item_id,timestamp\nu,i,1,x\nu,i,2\n"
    assert "line 2" in _error(_write(tmp_path / "s.csv", text))


def test_duplicate_columns(tmp_path: Path) -> None:
    text = "user_id,item_id,timestamp, user_id\nu,i,1,v\n"
    assert "duplicate" in _error(_write(tmp_path / "s.csv", text))


def test_missing_column_lists_found_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "user,item_id,timestamp\nu,i,1\n")
    for lenient in (False, True):  # not droppable row by row, so lenient fails too
        message = _error(path, lenient=lenient)
        assert "'user_id'" in message and "'user'" in message


def test_parquet_errors_say_row(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"user_id": ["u", None], "item_id": ["i", "j"], "timestamp": [1, 2]}), path)
    message = _error(path)
    assert "row 2" in message and "missing user_id" in message


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.csv", b"", "empty"),
        ("header.csv", HEADER.encode(), "no data rows"),
        ("bad.csv.gz", b"not gzip at all", "cannot read"),
        ("latin.csv", HEADER.encode() + "ü,i,1,view\n".encode("latin-1"), "UTF-8"),
        ("junk.parquet", b"not parquet", "Parquet"),
        ("data.xlsx", b"x", "unsupported"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert expected in _error(path)


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------------------- lenient


def test_lenient_drops_and_counts(tmp_path: Path) -> None:
    text = HEADER + (
        "u1,i1,1,view\n"
        ",i2,2,view\n"
        "u3,i3,yesterday,view\n"
        "u4,i4,4,click\n"
        "u5,i5,5,cart,extra\n"
        "u6,i6,2024-01-01,\n"
    )
    frame, report = read_interactions(_write(tmp_path / "s.csv", text), lenient=True)
    assert frame["user_id"].tolist() == ["u1", "u6"]
    assert frame["event"].tolist() == ["view", "view"]  # blank event cell = default
    assert (report.rows_read, report.rows_kept, report.rows_dropped) == (6, 2, 4)
    assert report.dropped_by_reason == {
        "missing user_id": 1,
        "unparsable timestamp": 1,
        "unknown event": 1,
        "wrong number of fields": 1,
    }
    assert [line.split(":")[0] for line in report.first_bad_lines] == [
        "line 3",
        "line 4",
        "line 5",
        "line 6",
    ]


def test_lenient_keeps_at_most_a_few_examples(tmp_path: Path) -> None:
    text = HEADER + "".join(f"u,i,bad{n},view\n" for n in range(50)) + "u,i,1,view\n"
    frame, report = read_interactions(_write(tmp_path / "s.csv", text), lenient=True)
    assert len(frame) == 1 and report.rows_dropped == 50
    assert 0 < len(report.first_bad_lines) <= 5


# ---------------------------------------------------------------------------------------- property

_ID_CHARS = string.ascii_letters + string.digits + " ,\"'\n\r\t;|é漢-_"
_ids = st.text(alphabet=_ID_CHARS, min_size=1, max_size=8).map(str.strip).filter(bool)
_rows = st.lists(
    st.tuples(
        _ids,
        _ids,
        st.integers(min_value=-(10**17), max_value=10**17),
        st.sampled_from(["view", "cart", "purchase"]),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows, suffix=st.sampled_from([".csv", ".csv.gz", ".parquet"]))
def test_valid_frames_round_trip_exactly(tmp_path: Path, rows: list, suffix: str) -> None:
    original = pd.DataFrame(rows, columns=list(COLUMNS)).astype({"timestamp": np.int64})
    path = tmp_path / f"prop{suffix}"
    write_interactions(original, path)
    frame, report = read_interactions(path)
    assert report.rows_dropped == 0
    pd.testing.assert_frame_equal(frame, original, check_dtype=False)
    _assert_schema(frame)


# ------------------------------------------------------------------------------------------ atomic


def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "data.csv"
    write_interactions(_frame(), target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"user_id,item_id,timest")  # half written...
        raise RuntimeError("disk full")  # ...then the writer dies
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]  # temp file cleaned up


def test_write_interactions_failure_leaves_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "data.parquet"
    write_interactions(_frame(), target)
    before = target.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("simulated crash mid-write")

    monkeypatch.setattr(pq, "write_table", explode)
    with pytest.raises(OSError):
        write_interactions(_frame().iloc[:1], target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["data.parquet"]


def test_atomic_write_helpers(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    atomic_write_text(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    gz = tmp_path / "y.csv.gz"
    write_interactions(_frame(), gz)
    assert gzip.decompress(gz.read_bytes()).startswith(HEADER.encode())
