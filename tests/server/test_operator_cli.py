"""The operator publishes the catalog; a store verifies it has exactly that version."""

from __future__ import annotations

from pathlib import Path

from client.cli import main as store_main
from server.cli import main as operator_main
from shared.data.catalog import Catalog
from shared.data.schema import make_frame, write_interactions


def write_log(path: Path, items: list[str]) -> Path:
    frame = make_frame(
        user_ids=[f"c{i % 3}" for i in range(len(items))],
        item_ids=items,
        timestamps=list(range(len(items))),
    )
    write_interactions(frame, path)
    return path


def test_build_from_item_list_keeps_order_titles_and_hash(tmp_path, capsys):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,category\nb,Bee,x\na,Ay,y\n")
    out = tmp_path / "catalog.json"
    assert operator_main(["catalog", "build", "--items", str(items), "--out", str(out)]) == 0
    catalog = Catalog.load(out)
    assert catalog.item_ids == ("b", "a")
    assert catalog.titles == ("Bee", "Ay")
    assert catalog.content_hash in capsys.readouterr().out


def test_build_from_interactions_unions_items(tmp_path):
    a = write_log(tmp_path / "a.csv", ["i1", "i2", "i3"])
    b = write_log(tmp_path / "b.csv", ["i3", "i4"])
    out = tmp_path / "catalog.json"
    assert operator_main(["catalog", "build", "--interactions", str(a), str(b), "--out", str(out)]) == 0
    assert Catalog.load(out).item_ids == ("i1", "i2", "i3", "i4")


def test_missing_item_column_is_a_clear_error(tmp_path, capsys):
    items = tmp_path / "items.csv"
    items.write_text("sku,title\nb,Bee\n")
    code = operator_main(["catalog", "build", "--items", str(items), "--out", str(tmp_path / "c.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "items.csv" in err and "item_id" in err and "Traceback" not in err


def test_store_check_data_counts_unknown_items_and_verifies_hash(tmp_path, capsys):
    catalog = Catalog.from_items(["i1", "i2", "i3"])
    catalog.save(tmp_path / "catalog.json")
    log = write_log(tmp_path / "log.csv", ["i1", "i2", "zzz", "i3", "i1", "i2"])
    args = ["check-data", "--interactions", str(log), "--catalog", str(tmp_path / "catalog.json")]
    assert store_main([*args, "--expected-hash", catalog.content_hash]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "unknown items dropped" in line)
    assert row.split("│")[-2].strip() == "1"
    assert store_main([*args, "--expected-hash", "0" * 64]) == 2
    assert "hash" in capsys.readouterr().err
