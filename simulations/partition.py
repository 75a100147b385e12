"""Carve a data set into simulated stores (non-IID) and lay out each store's state dir on disk.

**Synthetic default**: the generator already makes non-IID stores (own category mix, own assortment, uneven
sizes; see ``simulations.synthetic``); ``n`` stores are generated directly.

**Real data sets** (``partition_customers``), whole customers only (a customer is the privacy unit, and a
store owns all of a customer's history):

1. *Item categories*: the catalog's first category token (Amazon ``item2attributes`` ids); items without one
   fall into seeded random groups.
2. *Taste clusters*: each customer's most frequent category; the ``clusters - 1`` most common become clusters,
   the rest share one "other" cluster.
3. *Uneven store sizes*: lognormal shares (sigma ``size_sigma``), i.e. a few big stores and a long tail.
4. *Non-IID mixes*: every store draws a cluster mix from ``Dirichlet(alpha)`` (small alpha = stores
   specialise; large alpha = IID-like); a customer of cluster ``k`` joins store ``s`` with probability
   proportional to ``size_s * mix_s[k]``. Stores left with fewer than ``min_customers`` take customers from
   the largest one.

``ensure_run_data`` writes, once per run dir (under a file lock, so concurrent simulated stores agree):
``data/catalog.json``, ``data/stores.json`` (store ids in partition order, sizes, the spec, written last as
the completion marker), and per store ``stores/<id>/interactions.parquet`` + ``catalog.json`` -- the same
layout a real store's state dir has, so ``fedrec-store serve --state <run>/stores/<id>`` works on a simulated
store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.atomic import atomic_write_text
from shared.config import SimulationDataConfig
from shared.data.catalog import Catalog
from shared.data.schema import write_interactions
from shared.errors import ConfigError, DataError

__all__ = [
    "PartitionSpec",
    "RunData",
    "catalog_for",
    "ensure_run_data",
    "load_run_data",
    "partition_customers",
]

STORES_MANIFEST = "stores.json"


@dataclass(frozen=True)
class PartitionSpec:
    """Everything that determines a partition; a run dir refuses data made from another spec."""

    dataset: str
    n_stores: int
    seed: int
    alpha: float = 0.5
    synthetic_items: int = 2000
    synthetic_customers: int = 3000
    max_customers: int = 0
    clusters: int = 10
    size_sigma: float = 0.8
    min_customers: int = 20

    @classmethod
    def from_config(cls, data: SimulationDataConfig, n_stores: int, seed: int) -> PartitionSpec:
        return cls(
            dataset=data.dataset,
            n_stores=n_stores,
            seed=seed,
            alpha=data.partition_alpha,
            synthetic_items=data.synthetic_items,
            synthetic_customers=data.synthetic_customers,
            max_customers=data.max_customers,
        )


@dataclass(frozen=True)
class RunData:
    """Paths of a prepared simulation: the catalog and one state dir per store, in partition order."""

    root: Path
    store_ids: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def catalog_path(self) -> Path:
        return self.root / "data" / "catalog.json"

    def store_dir(self, store_id: str) -> Path:
        return self.root / "stores" / store_id


# ------------------------------------------------------------------------------------------ partition
def _item_groups(catalog: Catalog, rng: np.random.Generator, fallback_groups: int) -> np.ndarray:
    """Group id per model item index (index 0 = padding, group -1)."""
    groups = np.full(catalog.n_items + 1, -1, dtype=np.int64)
    names: dict[str, int] = {}
    cats = catalog.categories
    for position in range(catalog.n_items):
        raw = cats[position] if cats is not None else None
        token = raw.split("|")[0] if raw else None
        if token is None:
            groups[position + 1] = -2  # filled below
        else:
            groups[position + 1] = names.setdefault(token, len(names))
    missing = groups == -2
    groups[missing] = len(names) + rng.integers(0, fallback_groups, size=int(missing.sum()))
    return groups


def partition_customers(
    frame: pd.DataFrame, catalog: Catalog, spec: PartitionSpec
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Split ``frame`` into ``spec.n_stores`` stores by whole customers (see the module docstring).

    Returns the store frames (``store-00``...) and a report (sizes, clusters, mean total-variation distance
    between each store's cluster mix and the pooled one: 0 = IID, 1 = disjoint).
    """
    if spec.n_stores < 2:
        raise ConfigError(f"num-stores={spec.n_stores} must be >= 2")
    rng = np.random.default_rng(spec.seed)
    users = frame["user_id"].to_numpy()
    unique, user_index = np.unique(users, return_inverse=True)
    n_users = len(unique)
    if n_users < spec.n_stores * spec.min_customers:
        raise DataError(
            f"{spec.dataset}: {n_users} customers cannot fill {spec.n_stores} stores of at least "
            f"{spec.min_customers} customers"
        )
    groups = _item_groups(catalog, rng, fallback_groups=spec.clusters)
    item_group = groups[catalog.encode(frame["item_id"].to_numpy())]
    # Most frequent item group per customer (ties: lowest group id).
    n_groups = int(groups.max()) + 1
    counts = np.zeros((n_users, n_groups), dtype=np.int64)
    known = item_group >= 0
    np.add.at(counts, (user_index[known], item_group[known]), 1)
    favourite = counts.argmax(axis=1)
    # Keep the clusters-1 most common favourites; everything else is one "other" cluster.
    popularity = np.bincount(favourite, minlength=n_groups)
    top = np.argsort(-popularity, kind="stable")[: spec.clusters - 1]
    cluster_of_group = np.full(n_groups, spec.clusters - 1, dtype=np.int64)
    cluster_of_group[top] = np.arange(len(top))
    cluster = cluster_of_group[favourite]
    k = spec.clusters

    sizes = rng.lognormal(0.0, spec.size_sigma, size=spec.n_stores)
    sizes /= sizes.sum()
    mix = rng.dirichlet(np.full(k, spec.alpha), size=spec.n_stores)  # [S, K]
    prob = sizes[:, None] * mix  # [S, K]
    prob = prob / prob.sum(axis=0, keepdims=True)
    store = np.empty(n_users, dtype=np.int64)
    for c in range(k):
        members = np.flatnonzero(cluster == c)
        store[members] = rng.choice(spec.n_stores, size=len(members), p=prob[:, c])
    # Every store needs enough customers to train and to evaluate on.
    for s in range(spec.n_stores):
        short = spec.min_customers - int((store == s).sum())
        if short > 0:
            donor = int(np.bincount(store, minlength=spec.n_stores).argmax())
            moved = rng.choice(np.flatnonzero(store == donor), size=short, replace=False)
            store[moved] = s

    width = max(2, len(str(spec.n_stores - 1)))
    row_store = store[user_index]
    out = {f"store-{s:0{width}d}": frame[row_store == s].reset_index(drop=True) for s in range(spec.n_stores)}
    pooled = np.bincount(cluster, minlength=k) / n_users
    tv = []
    for s in range(spec.n_stores):
        local = np.bincount(cluster[store == s], minlength=k) / max(1, int((store == s).sum()))
        tv.append(0.5 * float(np.abs(local - pooled).sum()))
    report = {
        "method": "Dirichlet over customer taste clusters + lognormal store sizes",
        "clusters": k,
        "alpha": spec.alpha,
        "customers": {sid: int(f["user_id"].nunique()) for sid, f in out.items()},
        "mean_tv_distance_to_pooled": float(np.mean(tv)),
    }
    return out, report


def _synthetic(spec: PartitionSpec) -> tuple[Catalog, dict[str, pd.DataFrame], dict]:
    from simulations.synthetic import SyntheticConfig, generate

    data = generate(
        SyntheticConfig(
            n_stores=spec.n_stores,
            n_items=spec.synthetic_items,
            n_customers=spec.synthetic_customers,
            seed=spec.seed,
        )
    )
    report = {
        "method": "synthetic generator (Dirichlet store category mixes, own assortments, lognormal sizes)",
        "customers": {sid: int(f["user_id"].nunique()) for sid, f in data.stores.items()},
    }
    return data.catalog, data.stores, report


def subsample_frame(frame: pd.DataFrame, max_customers: int, seed: int) -> pd.DataFrame:
    users = frame["user_id"].unique()
    if max_customers <= 0 or len(users) <= max_customers:
        return frame
    keep = set(np.random.default_rng(seed).choice(users, size=max_customers, replace=False).tolist())
    return frame[frame["user_id"].isin(keep)].reset_index(drop=True)


def build_stores(spec: PartitionSpec) -> tuple[Catalog, dict[str, pd.DataFrame], dict]:
    """The catalog and the per-store interaction frames for ``spec`` (nothing written)."""
    if spec.dataset == "synthetic":
        return _synthetic(spec)
    from simulations.datasets import load_interactions

    _, frame, catalog = load_interactions(spec.dataset)
    frame = subsample_frame(frame, spec.max_customers, spec.seed)
    stores, report = partition_customers(frame, catalog, spec)
    return catalog, stores, report


def catalog_for(data: SimulationDataConfig, seed: int) -> Catalog:
    """The catalog a simulation of ``data`` uses (independent of the number of stores)."""
    if data.dataset == "synthetic":
        from simulations.synthetic import SyntheticConfig, generate

        cfg = SyntheticConfig(
            n_stores=2, n_items=data.synthetic_items, n_customers=data.synthetic_customers, seed=seed
        )
        return generate(cfg).catalog  # the item structure is drawn before (and without) the stores
    from simulations.datasets import load_interactions

    return load_interactions(data.dataset)[2]


# ------------------------------------------------------------------------------------------ on disk
@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_run_data(root: str | os.PathLike[str]) -> RunData | None:
    """The prepared simulation data under ``root``, or None if it is not (completely) there."""
    manifest = Path(root) / "data" / STORES_MANIFEST
    if not manifest.exists():
        return None
    doc = json.loads(manifest.read_text())
    return RunData(Path(root), tuple(doc["store_ids"]), tuple(doc["sizes"]))


def ensure_run_data(root: str | os.PathLike[str], spec: PartitionSpec) -> RunData:
    """Prepare (once) or reuse the partition of ``spec`` under run dir ``root``; safe across processes."""
    root = Path(root)
    manifest = root / "data" / STORES_MANIFEST
    with _lock(root / "data" / ".lock"):
        if manifest.exists():
            doc = json.loads(manifest.read_text())
            if doc["spec"] != asdict(spec):
                raise ConfigError(
                    f"run dir {root} holds data for {doc['spec']}, this run asks for {asdict(spec)}; "
                    "use another run-dir"
                )
            return RunData(root, tuple(doc["store_ids"]), tuple(doc["sizes"]))
        catalog, stores, report = build_stores(spec)
        catalog.save(root / "data" / "catalog.json")
        for sid, frame in stores.items():
            state = root / "stores" / sid
            state.mkdir(parents=True, exist_ok=True)
            write_interactions(frame, state / "interactions.parquet")
            catalog.save(state / "catalog.json")
        sizes = tuple(int(f["user_id"].nunique()) for f in stores.values())
        doc = {
            "spec": asdict(spec),
            "store_ids": list(stores),
            "sizes": list(sizes),
            "catalog_hash": catalog.content_hash,
            "report": report,
        }
        atomic_write_text(manifest, json.dumps(doc, indent=2) + "\n")
        return RunData(root, tuple(stores), sizes)
