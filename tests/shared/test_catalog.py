"""Catalog: stable indexes, unknown-item handling, and a hash that detects corruption and mismatches."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.data.catalog import Catalog, encode_frame
from shared.errors import CatalogMismatchError, DataError


def _catalog() -> Catalog:
    return Catalog.from_items(["b", "a", "c"], titles=["Bee", None, "Sea"], categories=["x|y", None, "z"])


def test_indexes_follow_given_order_with_padding_zero() -> None:
    catalog = _catalog()
    assert catalog.n_items == 3
    assert catalog.index_of == {"b": 1, "a": 2, "c": 3}
    codes = catalog.encode(["a", "zzz", "c", "b"])
    assert codes.dtype == np.int64
    assert codes.tolist() == [2, 0, 3, 1]  # unknown -> padding 0
    assert catalog.decode([2, 3, 1]) == ["a", "c", "b"]
    assert catalog.decode(np.array([1])) == ["b"]
    assert catalog.title(1) == "Bee" and catalog.title(2) is None
    assert Catalog.from_items(["x"]).title(1) is None
    with pytest.raises(IndexError):
        catalog.decode([0])
    with pytest.raises(IndexError):
        catalog.title(4)


@pytest.mark.parametrize("ids", [["a", "b", "a"], ["a", ""], ["a", "  "]])
def test_duplicate_or_empty_ids_rejected(ids: list[str]) -> None:
    with pytest.raises(DataError):
        Catalog.from_items(ids)


def test_titles_must_align() -> None:
    with pytest.raises(DataError):
        Catalog.from_items(["a", "b"], titles=["only one"])


def test_encode_frame_drops_and_counts_unknown() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2"],
            "item_id": ["a", "nope", "c", "gone"],
            "timestamp": np.arange(4, dtype=np.int64),
            "event": ["view"] * 4,
        }
    )
    encoded, dropped = encode_frame(frame, _catalog())
    assert dropped == 2
    assert encoded["item"].dtype == np.int64
    assert encoded["item"].tolist() == [2, 3]
    assert encoded["user_id"].tolist() == ["u1", "u2"]
    assert len(frame) == 4  # input untouched


def test_encode_frame_is_vectorized_fast() -> None:
    catalog = Catalog.from_items([f"i{n}" for n in range(20_000)])
    rng = np.random.default_rng(0)
    ids = pd.Series([f"i{n}" for n in range(25_000)], dtype="str")
    frame = pd.DataFrame({"item_id": ids.take(rng.integers(0, 25_000, 1_000_000)).to_numpy()})
    started = time.perf_counter()
    encoded, dropped = encode_frame(frame, catalog)
    elapsed = time.perf_counter() - started
    assert dropped + len(encoded) == 1_000_000 and dropped > 0
    assert elapsed < 2.0  # ~0.2 s here; generous bound for a loaded CI machine


def test_hash_is_stable_across_save_and_load(tmp_path: Path) -> None:
    catalog = _catalog()
    path = tmp_path / "catalog.json"
    catalog.save(path)
    loaded = Catalog.load(path, expected_hash=catalog.content_hash)
    assert loaded == catalog
    assert loaded.content_hash == catalog.content_hash
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["format"] == "fedrec-catalog/1"
    assert document["content_hash"] == catalog.content_hash
    # The hash covers order and metadata, not just the set of ids.
    assert (
        Catalog.from_items(["a", "b", "c"]).content_hash != Catalog.from_items(["b", "a", "c"]).content_hash
    )
    assert _catalog().content_hash != Catalog.from_items(["b", "a", "c"]).content_hash


def test_tampered_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    _catalog().save(path)
    document = json.loads(path.read_text(encoding="utf-8"))
    document["items"][0], document["items"][1] = document["items"][1], document["items"][0]
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(DataError, match="corrupt"):
        Catalog.load(path)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": "other"}'])
def test_garbage_file_is_a_data_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"catalog\.json"):
        Catalog.load(path)


def test_expected_hash_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    catalog = _catalog()
    catalog.save(path)
    other = Catalog.from_items(["a"]).content_hash
    with pytest.raises(CatalogMismatchError) as info:
        Catalog.load(path, expected_hash=other)
    assert other in str(info.value) and catalog.content_hash in str(info.value)
