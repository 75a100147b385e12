"""The global item vocabulary shared by the operator and every store.

Federated averaging only makes sense if row ``i`` of every store's embedding table means the same item,
so the catalog is fixed, ordered, and identified by a content hash that models and updates carry.
Model index of ``item_ids[i]`` is ``i + 1``; index 0 is padding (and "unknown").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from shared.atomic import atomic_write_text
from shared.errors import CatalogMismatchError, DataError

__all__ = ["CATALOG_FORMAT", "PADDING_INDEX", "Catalog", "encode_frame"]

CATALOG_FORMAT = "fedrec-catalog/1"
PADDING_INDEX = 0


def _optional_column(values: Iterable[str | None] | None, n: int, name: str) -> tuple[str | None, ...] | None:
    if values is None:
        return None
    column = tuple(None if v is None else str(v) for v in values)
    if len(column) != n:
        raise DataError(f"catalog: {name} has {len(column)} entries for {n} items")
    return column


@dataclass(frozen=True, repr=False)
class Catalog:
    """Ordered item ids with optional titles/categories; immutable so its hash can be cached."""

    item_ids: tuple[str, ...]
    titles: tuple[str | None, ...] | None = None
    categories: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        # Validate here (not only in from_items) so no code path can build an ambiguous vocabulary.
        for name in ("item_ids", "titles", "categories"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))  # lists would break hashing
        ids = self.item_ids
        if len(set(ids)) != len(ids) or any(not isinstance(i, str) or not i.strip() for i in ids):
            seen: dict[str, int] = {}
            for position, item in enumerate(ids, start=1):
                if not isinstance(item, str) or not item.strip():
                    raise DataError(f"catalog: item at position {position} has an empty id")
                if item in seen:
                    raise DataError(
                        f"catalog: duplicate item id {item!r} (positions {seen[item]} and {position})"
                    )
                seen[item] = position
        for name in ("titles", "categories"):
            column = getattr(self, name)
            if column is not None and len(column) != len(ids):
                raise DataError(f"catalog: {name} has {len(column)} entries for {len(ids)} items")

    def __repr__(self) -> str:
        # The default repr would print every id (tens of thousands) into logs and tracebacks.
        return f"Catalog(n_items={self.n_items}, content_hash={self.content_hash[:12]}...)"

    @classmethod
    def from_items(
        cls,
        item_ids: Iterable[object],
        titles: Iterable[str | None] | None = None,
        categories: Iterable[str | None] | None = None,
    ) -> Catalog:
        """Build a catalog keeping the given order; ids are converted to ``str``."""
        ids = tuple(str(i) if i is not None else "" for i in item_ids)
        return cls(
            ids,
            _optional_column(titles, len(ids), "titles"),
            _optional_column(categories, len(ids), "categories"),
        )

    @property
    def n_items(self) -> int:
        """Number of real items (the model's vocabulary is ``n_items + 1`` with padding)."""
        return len(self.item_ids)

    @cached_property
    def content_hash(self) -> str:
        """sha256 of a canonical JSON of ids, titles and categories."""
        canonical = json.dumps(
            {
                "categories": None if self.categories is None else list(self.categories),
                "items": list(self.item_ids),
                "titles": None if self.titles is None else list(self.titles),
            },
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @cached_property
    def index_of(self) -> dict[str, int]:
        """Item id -> model index (1-based)."""
        return {item: position for position, item in enumerate(self.item_ids, start=1)}

    @cached_property
    def _lookup(self) -> pd.Index:
        # A hash-table index makes encoding a million ids one vectorized call.
        return pd.Index(np.asarray(self.item_ids, dtype=object), dtype=object)

    def encode(self, item_ids: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
        """Model indexes (int64) for ``item_ids``; unknown ids map to the padding index 0."""
        values = np.asarray(item_ids, dtype=object)
        if values.size == 0:
            return np.zeros(0, dtype=np.int64)
        return self._lookup.get_indexer(values).astype(np.int64) + 1

    def decode(self, indexes: Iterable[int] | np.ndarray) -> list[str]:
        """Item ids for model indexes; 0 (padding) or out-of-range indexes are a caller bug."""
        out: list[str] = []
        for index in np.asarray(indexes, dtype=np.int64).ravel().tolist():
            out.append(self.item_ids[self._position(index)])
        return out

    def title(self, index: int) -> str | None:
        """Title of the item at model ``index`` (None when the catalog has no titles)."""
        position = self._position(index)
        return None if self.titles is None else self.titles[position]

    def _position(self, index: int) -> int:
        if not 1 <= index <= self.n_items:
            raise IndexError(f"model index {index} outside 1..{self.n_items} (0 is padding)")
        return index - 1

    # ------------------------------------------------------------------------------------ storage

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the catalog atomically as JSON, with its hash so corruption is detectable."""
        document = {
            "format": CATALOG_FORMAT,
            "content_hash": self.content_hash,
            "items": list(self.item_ids),
            "titles": None if self.titles is None else list(self.titles),
            "categories": None if self.categories is None else list(self.categories),
        }
        atomic_write_text(path, json.dumps(document, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str], expected_hash: str | None = None) -> Catalog:
        """Read a saved catalog, verifying its stored hash and, if given, the expected one."""
        source = Path(path)
        try:
            document = json.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{source}: catalog file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{source}: not a readable catalog JSON file ({exc})") from None
        if not isinstance(document, dict) or document.get("format") != CATALOG_FORMAT:
            found = document.get("format") if isinstance(document, dict) else type(document)
            raise DataError(f"{source}: not a catalog (format {found!r}, expected {CATALOG_FORMAT!r})")
        items = document.get("items")
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise DataError(f"{source}: 'items' must be a list of strings")
        for name in ("titles", "categories"):
            column = document.get(name)
            if column is not None and (
                not isinstance(column, list) or not all(v is None or isinstance(v, str) for v in column)
            ):
                raise DataError(f"{source}: {name!r} must be null or a list of strings/nulls")
        try:
            catalog = cls.from_items(items, document.get("titles"), document.get("categories"))
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None
        stored = document.get("content_hash")
        if stored != catalog.content_hash:
            raise DataError(
                f"{source}: catalog is corrupt or was edited: stored content_hash {stored!r} but "
                f"the contents hash to {catalog.content_hash!r}"
            )
        if expected_hash is not None and expected_hash != catalog.content_hash:
            raise CatalogMismatchError(
                f"{source}: catalog hash {catalog.content_hash} differs from the expected "
                f"{expected_hash}; the model/update was built against a different item vocabulary"
            )
        return catalog


def encode_frame(frame: pd.DataFrame, catalog: Catalog) -> tuple[pd.DataFrame, int]:
    """Add an int64 ``item`` column (model index), drop rows with unknown items; return the count dropped.

    Unknown items are dropped rather than mapped to padding because padding is masked out in training;
    the count lets callers report how much of a store's data falls outside the shared vocabulary.
    """
    items = frame["item_id"]
    if not pd.api.types.is_string_dtype(items):
        # Integer ids from a hand-built frame must match the catalog's string ids.
        items = items.astype("str")
    codes = catalog.encode(items.to_numpy(dtype=object))
    known = codes != PADDING_INDEX
    dropped = int(len(codes) - np.count_nonzero(known))
    out = frame.loc[known] if dropped else frame.copy()
    out = out.reset_index(drop=True)
    out["item"] = codes[known] if dropped else codes
    return out, dropped
