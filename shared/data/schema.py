"""Interaction files: the one place that turns a store's CSV/Parquet export into a clean frame.

Store operators are not data engineers, so every problem is reported as a ``DataError`` that names the
file and the line *as a person counts it in an editor* (CSV header = line 1) or the 1-based Parquet row,
and says what is wrong. Parser tracebacks never escape. ``lenient=True`` drops bad rows instead and
accounts for them in a ``ReadReport`` so the operator can see what was lost.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.atomic import atomic_path
from shared.errors import DataError

__all__ = [
    "COLUMNS",
    "DEFAULT_EVENT",
    "EVENTS",
    "REQUIRED_COLUMNS",
    "ReadReport",
    "make_frame",
    "read_interactions",
    "write_interactions",
]

COLUMNS: tuple[str, ...] = ("user_id", "item_id", "timestamp", "event")
REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "timestamp")
EVENTS: tuple[str, ...] = ("view", "cart", "purchase")
DEFAULT_EVENT = "view"
_TEXT_COLUMNS = ("user_id", "item_id", "event")

_MAX_EXAMPLES = 5
# Integer unix seconds, optionally written as "123.0" by tools that went through floats. 18 digits keep
# the value inside int64 without overflow checks.
_INT_RE = r"[+-]?\d{1,18}(?:\.0*)?"

# Reason keys used in ReadReport.dropped_by_reason (stable: tooling may aggregate them).
R_FIELDS = "wrong number of fields"
R_USER = "missing user_id"
R_ITEM = "missing item_id"
R_TIME = "unparsable timestamp"
R_EVENT = "unknown event"


@dataclass
class ReadReport:
    """What ``read_interactions`` kept and dropped; ``first_bad_lines`` holds a few examples."""

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_dropped: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    first_bad_lines: list[str] = field(default_factory=list)


def make_frame(
    user_ids: object,
    item_ids: object,
    timestamps: object,
    events: object | None = None,
) -> pd.DataFrame:
    """Build a frame with exactly the schema columns and dtypes (used by loaders and the reader)."""
    users = pd.Series(user_ids).astype("str").reset_index(drop=True)
    frame = pd.DataFrame(
        {
            "user_id": users,
            "item_id": pd.Series(item_ids).astype("str").reset_index(drop=True),
            "timestamp": pd.Series(np.asarray(timestamps, dtype=np.int64)),
        }
    )
    if events is None:
        frame["event"] = pd.Series([DEFAULT_EVENT] * len(frame), dtype="str")
    else:
        frame["event"] = pd.Series(events).astype("str").reset_index(drop=True)
    return frame


# --------------------------------------------------------------------------------------------- read


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".csv.gz"):
        return "csv.gz"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise DataError(
        f"{path}: unsupported file type; expected .csv, .csv.gz or .parquet "
        "(rename the file or export it in one of these formats)"
    )


def _missing_columns_error(path: Path, found: list[str]) -> DataError | None:
    missing = [c for c in REQUIRED_COLUMNS if c not in found]
    if not missing:
        return None
    return DataError(
        f"{path}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
        f"columns found: {', '.join(repr(c) for c in found) or '(none)'}; "
        f"expected {', '.join(COLUMNS)} (event optional)"
    )


@dataclass
class _Raw:
    """Columns as parsed, before validation; ``locate`` maps a 0-based row to 'line N' / 'row N'."""

    user: pd.Series  # str, "" where missing
    item: pd.Series
    ts_values: np.ndarray  # int64; meaningless where ts_ok is False
    ts_ok: np.ndarray  # bool
    ts_shown: Callable[[int], str]  # display of the raw timestamp value for messages
    event: pd.Series | None  # str, lower-cased, "" where missing; None = column absent
    locate: Callable[[np.ndarray], np.ndarray]  # row indexes -> human line/row numbers
    unit: str  # "line" or "row"
    structural: list[tuple[int, str]] = field(default_factory=list)  # (line, message) from the CSV fallback


def _parse_timestamp_strings(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integers as unix seconds, anything else as ISO-8601 (naive = UTC); returns (seconds, ok)."""
    n = len(values)
    out = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    is_int = values.str.fullmatch(_INT_RE).fillna(False).to_numpy(dtype=bool)
    if is_int.any():
        digits = values[is_int].str.replace(r"\.0*$", "", regex=True)
        out[is_int] = pd.to_numeric(digits).to_numpy(dtype=np.int64)
        ok[is_int] = True
    rest = ~is_int & (values != "").to_numpy(dtype=bool)
    if rest.any():
        parsed = pd.to_datetime(values[rest], format="ISO8601", utc=True, errors="coerce")
        good = parsed.notna().to_numpy(dtype=bool)
        seconds = (parsed[good] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        idx = np.flatnonzero(rest)
        out[idx[good]] = seconds.to_numpy(dtype=np.int64)
        ok[idx[good]] = True
    return out, ok


def _clean(series: pd.Series) -> pd.Series:
    # Values are stripped: "u1, i1, 5" exported by hand must not create an item " i1".
    return series.astype("str").fillna("").str.strip()


def _read_csv_fast(path: Path, compression: str | None) -> pd.DataFrame:
    # Everything as text with no NA guessing: ids like "007" or "NA" must survive, and blank lines
    # are kept as rows so row i is line i + 2 (plus newlines inside quoted fields).
    # index_col=False stops pandas from silently turning an extra first-row field into an index
    # (shifting every column); the truncation warning it gives instead is escalated to an error so
    # the caller falls back to the exact reader, which reports the line.
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        return pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            index_col=False,
            compression=compression,
            encoding="utf-8-sig",
        )


def _read_csv_exact(path: Path, compression: str | None) -> tuple[pd.DataFrame, np.ndarray, list]:
    """Slow path for structurally broken files: the csv module knows each record's line number."""
    opener = gzip.open if compression == "gzip" else open
    records: list[list[str]] = []
    lines: list[int] = []
    structural: list[tuple[int, str]] = []
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            header = []
        width = len(header)
        previous = reader.line_num
        try:
            for record in reader:
                line = previous + 1
                previous = reader.line_num
                if len(record) > width:
                    structural.append((line, f"{R_FIELDS}: expected {width}, found {len(record)}"))
                    continue
                records.append(record + [""] * (width - len(record)))
                lines.append(line)
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    frame = pd.DataFrame(records, columns=header, dtype="str")
    return frame, np.asarray(lines, dtype=np.int64), structural


def _csv_line_numbers(frame: pd.DataFrame) -> Callable[[np.ndarray], np.ndarray]:
    def locate(rows: np.ndarray) -> np.ndarray:
        # Quoted fields may span lines; count their newlines so numbers match an editor.
        extra = np.zeros(len(frame), dtype=np.int64)
        for name in frame.columns:
            extra += frame[name].str.count("\n").fillna(0).to_numpy(dtype=np.int64)
        before = np.concatenate([[0], np.cumsum(extra)[:-1]]) if len(frame) else extra
        return rows + 2 + before[rows]

    return locate


def _raw_from_csv(path: Path, kind: str) -> _Raw:
    compression = "gzip" if kind == "csv.gz" else None
    structural: list[tuple[int, str]] = []
    lines: np.ndarray | None = None
    try:
        try:
            frame = _read_csv_fast(path, compression)
        except (pd.errors.ParserError, pd.errors.ParserWarning):
            frame, lines, structural = _read_csv_exact(path, compression)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (expected a header line and data rows)") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CSV: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise DataError(f"{path}: line 1: duplicate column(s) {', '.join(map(repr, duplicated))}")
    error = _missing_columns_error(path, list(frame.columns))
    if error is not None:
        raise error

    # Lines that are completely blank are layout, not data: skip them without counting.
    cleaned = {name: _clean(frame[name]) for name in COLUMNS if name in frame.columns}
    blank = np.ones(len(frame), dtype=bool)
    for name in frame.columns:
        blank &= (frame[name].fillna("") == "").to_numpy(dtype=bool)
    if lines is None:
        full_locate = _csv_line_numbers(frame)
    else:
        line_array = lines

        def full_locate(rows: np.ndarray) -> np.ndarray:
            return line_array[rows]

    keep = np.flatnonzero(~blank)
    if len(keep) != len(frame):
        cleaned = {k: v.iloc[keep].reset_index(drop=True) for k, v in cleaned.items()}

        def locate(rows: np.ndarray) -> np.ndarray:
            return full_locate(keep[rows])
    else:
        locate = full_locate

    ts_text = cleaned["timestamp"]
    ts_values, ts_ok = _parse_timestamp_strings(ts_text)
    if len(cleaned["user_id"]) == 0 and not structural:
        raise DataError(f"{path}: no data rows after the header line")
    return _Raw(
        user=cleaned["user_id"],
        item=cleaned["item_id"],
        ts_values=ts_values,
        ts_ok=ts_ok,
        ts_shown=lambda i: repr(ts_text.iloc[i]),
        event=cleaned["event"].str.lower() if "event" in cleaned else None,
        locate=locate,
        unit="line",
        structural=structural,
    )


def _arrow_strings(column: pa.ChunkedArray) -> pd.Series:
    # Ids may be stored as integers; cast in Arrow so nulls stay nulls (pandas would go via float).
    return _clean(pd.Series(pc.cast(column, pa.string()).to_pandas()))


def _arrow_timestamps(path: Path, column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, list]:
    kind = column.type
    shown: list = []
    if pa.types.is_integer(kind):
        ok = pc.is_valid(column).to_numpy(zero_copy_only=False)
        values = pc.fill_null(pc.cast(column, pa.int64()), 0).to_numpy(zero_copy_only=False)
        return values.astype(np.int64), ok, shown
    if pa.types.is_floating(kind):
        raw = column.to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(raw) & (np.floor(raw) == raw) & (np.abs(raw) < 1e18)
        values = np.where(ok, raw, 0).astype(np.int64)
        return values, ok, list(raw)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        seconds = pc.cast(column, pa.timestamp("s", tz=getattr(kind, "tz", None)), safe=False)
        ok = pc.is_valid(seconds).to_numpy(zero_copy_only=False)
        values = pc.fill_null(pc.cast(seconds, pa.int64()), 0).to_numpy(zero_copy_only=False)
        return values.astype(np.int64), ok, shown
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        text = _arrow_strings(column)
        values, ok = _parse_timestamp_strings(text)
        return values, ok, list(text)
    raise DataError(
        f"{path}: column 'timestamp' has type {kind}; expected integer unix seconds, "
        "a timestamp type or ISO-8601 strings"
    )


def _raw_from_parquet(path: Path) -> _Raw:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read Parquet file: {exc}") from None
    error = _missing_columns_error(path, list(table.column_names))
    if error is not None:
        raise error
    if table.num_rows == 0:
        raise DataError(f"{path}: Parquet file has no rows")
    try:
        ts_values, ts_ok, shown = _arrow_timestamps(path, table.column("timestamp"))
        user = _arrow_strings(table.column("user_id"))
        item = _arrow_strings(table.column("item_id"))
        event = _arrow_strings(table.column("event")).str.lower() if "event" in table.column_names else None
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise DataError(f"{path}: cannot decode Parquet columns: {exc}") from None
    return _Raw(
        user=user,
        item=item,
        ts_values=ts_values,
        ts_ok=ts_ok,
        ts_shown=lambda i: repr(shown[i]) if shown else "null",
        event=event,
        locate=lambda rows: rows + 1,
        unit="row",
    )


def _first_problem(raw: _Raw) -> tuple[np.ndarray, list[str]]:
    """Index of each row's first failing check (-1 = row is fine), checks in column order."""
    checks = [
        (R_USER, (raw.user == "").to_numpy(dtype=bool)),
        (R_ITEM, (raw.item == "").to_numpy(dtype=bool)),
        (R_TIME, ~raw.ts_ok),
    ]
    if raw.event is not None:
        # A blank event cell means the default, like a missing column.
        known = raw.event.isin([*EVENTS, ""]).to_numpy(dtype=bool)
        checks.append((R_EVENT, ~known))
    stacked = np.stack([mask for _, mask in checks])
    first = np.where(stacked.any(axis=0), stacked.argmax(axis=0), -1)
    return first, [reason for reason, _ in checks]


def _describe(raw: _Raw, row: int, reason: str) -> str:
    if reason == R_TIME:
        return f"{R_TIME} {raw.ts_shown(row)} (expected unix seconds or ISO-8601)"
    if reason == R_EVENT:
        assert raw.event is not None
        return f"{R_EVENT} {raw.event.iloc[row]!r} (allowed: {', '.join(EVENTS)})"
    return f"{reason} (empty value)"


def read_interactions(
    path: str | os.PathLike[str], *, lenient: bool = False
) -> tuple[pd.DataFrame, ReadReport]:
    """Read a CSV (.csv, .csv.gz) or Parquet interaction file into the schema frame, in file order."""
    source = Path(path)
    kind = _kind(source)
    if not source.exists():
        raise DataError(f"{source}: file not found")
    if not source.is_file():
        raise DataError(f"{source}: not a regular file")
    raw = _raw_from_parquet(source) if kind == "parquet" else _raw_from_csv(source, kind)

    first, reasons = _first_problem(raw)
    bad = first >= 0
    report = ReadReport(path=str(source))
    report.rows_read = len(bad) + len(raw.structural)

    # Only a few problems are described (strict mode needs one), so a file with a million bad rows
    # is still handled in vectorized time; structural ones (wrong field count) are merged by line.
    bad_rows = np.flatnonzero(bad)[:_MAX_EXAMPLES]
    problems: list[tuple[int, str]] = [(ln, msg) for ln, msg in raw.structural[:_MAX_EXAMPLES]]
    for row, number in zip(bad_rows, raw.locate(bad_rows), strict=True):
        problems.append((int(number), _describe(raw, int(row), reasons[first[row]])))
    problems.sort(key=lambda p: p[0])
    if problems and not lenient:
        number, message = problems[0]
        raise DataError(f"{source}: {raw.unit} {number}: {message}")

    counts = np.bincount(first[bad], minlength=len(reasons))
    if raw.structural:
        report.dropped_by_reason[R_FIELDS] = len(raw.structural)
    for reason, count in zip(reasons, counts, strict=True):
        if count:
            report.dropped_by_reason[reason] = int(count)
    report.first_bad_lines = [f"{raw.unit} {n}: {m}" for n, m in problems[:_MAX_EXAMPLES]]

    keep = ~bad
    events = None
    if raw.event is not None:
        events = raw.event[keep].replace("", DEFAULT_EVENT)
    frame = make_frame(raw.user[keep], raw.item[keep], raw.ts_values[keep], events)
    report.rows_kept = len(frame)
    report.rows_dropped = report.rows_read - report.rows_kept
    return frame, report


# -------------------------------------------------------------------------------------------- write


def _normalized_for_write(frame: pd.DataFrame, target: Path) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{target}: cannot write interactions, frame lacks column(s) {', '.join(missing)}; "
            f"has {', '.join(map(str, frame.columns))}"
        )
    if not pd.api.types.is_integer_dtype(frame["timestamp"]):
        raise DataError(
            f"{target}: cannot write interactions, 'timestamp' must be integer unix seconds "
            f"(got dtype {frame['timestamp'].dtype})"
        )
    events = frame["event"] if "event" in frame.columns else None
    return make_frame(frame["user_id"], frame["item_id"], frame["timestamp"], events)


def write_interactions(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write the schema columns atomically, format by suffix, so a crash never leaves half a file."""
    target = Path(path)
    kind = _kind(target)
    data = _normalized_for_write(frame, target)
    with atomic_path(target) as tmp:
        if kind == "parquet":
            table = pa.table(
                {
                    "user_id": pa.array(data["user_id"].to_numpy(dtype=object), pa.string()),
                    "item_id": pa.array(data["item_id"].to_numpy(dtype=object), pa.string()),
                    "timestamp": pa.array(data["timestamp"].to_numpy(), pa.int64()),
                    "event": pa.array(data["event"].to_numpy(dtype=object), pa.string()),
                }
            )
            pq.write_table(table, tmp)
        else:
            # Write through our own handle (not pandas' compression inference on the temp name) so
            # the bytes are identical to a direct write and gzip gets no embedded file name.
            buffer = io.StringIO()
            # Minimal quoting does not quote a lone "\r" (not part of the "\n" terminator), which
            # readers take as a line break; quote every text field in that rare case.
            has_cr = any(data[c].str.contains("\r", regex=False).any() for c in _TEXT_COLUMNS)
            quoting = csv.QUOTE_NONNUMERIC if has_cr else csv.QUOTE_MINIMAL
            data.to_csv(buffer, index=False, lineterminator="\n", quoting=quoting)
            payload = buffer.getvalue().encode("utf-8")
            if kind == "csv.gz":
                payload = gzip.compress(payload, mtime=0)
            tmp.write_bytes(payload)
