"""Resolve a data set name for simulations: the built-in synthetic stores, a shared real set, or a file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shared.data.catalog import Catalog
from shared.data.loaders import known_datasets, load_named, load_path
from shared.errors import DataError
from simulations.synthetic import SyntheticConfig, generate

SYNTHETIC = "synthetic"


def load_interactions(
    spec: str, synthetic: SyntheticConfig | None = None
) -> tuple[str, pd.DataFrame, Catalog]:
    """``(name, interactions, catalog)`` for ``spec``: ``synthetic``, a known data set name, or a file path.

    The synthetic default is generated in memory (seeded), with every store's customers pooled: a
    centralized run sees what all stores together hold.
    """
    if spec == SYNTHETIC:
        data = generate(synthetic or SyntheticConfig())
        frame = pd.concat(list(data.stores.values()), ignore_index=True)
        return SYNTHETIC, frame, data.catalog
    if spec in known_datasets():
        loaded = load_named(spec)
        return loaded.name, loaded.interactions, loaded.catalog
    path = Path(spec)
    if path.exists():
        loaded = load_path(path)
        return loaded.name, loaded.interactions, loaded.catalog
    raise DataError(
        f"unknown data set {spec!r}: use '{SYNTHETIC}', one of {list(known_datasets())}, "
        "or the path of a CSV/Parquet interaction file"
    )
