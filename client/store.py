"""A store as the ClientApp sees it: its state dir, its prepared data, its ledger.

State dir layout (shared with ``client.serving.state`` and ``client.model_store``)::

    <state>/catalog.json            the operator's catalog (hash checked)
    <state>/interactions.{csv,csv.gz,parquet}
    <state>/ledger.jsonl            the privacy ledger (client.ledger)
    <state>/models/<version>/       global and personalized model versions + CURRENT pointer
    <state>/federation/             the last update sent (re-sent, not re-trained, if the operator repeats
                                    a round after a crash; see client.update)

A **deployed** store names its state dir in the SuperNode's node config (``store-dir``, optionally
``interactions``, ``catalog``, ``store-id``). A **simulated** store has no ``store-dir``: its partition id
picks its state dir in the simulation's run dir (prepared by ``simulations.partition.ensure_run_data``).

Each Flower message may run in a fresh process (deployment) or in a long-lived simulation actor; prepared data
is cached per process, keyed by the files' identity, so an actor serving many virtual stores re-reads nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.ledger import PrivacyLedger
from shared.config import FederationConfig
from shared.data.catalog import Catalog
from shared.data.prepare import PreparedData, prepare
from shared.data.schema import read_interactions
from shared.errors import ConfigError, DataError
from shared.privacy.accounting import PrivacyBudget

__all__ = ["LEDGER", "Store", "open_store"]

LEDGER = "ledger.jsonl"
CATALOG = "catalog.json"
INTERACTION_NAMES = ("interactions.parquet", "interactions.csv", "interactions.csv.gz")

_CACHE: dict[tuple, PreparedData] = {}
_CACHE_LIMIT = 64  # virtual stores one simulation actor keeps prepared


@dataclass(frozen=True)
class Store:
    store_id: str
    state_dir: Path
    data: PreparedData
    simulated: bool

    @property
    def catalog(self) -> Catalog:
        return self.data.catalog

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / LEDGER

    def ledger(self, budget: PrivacyBudget) -> PrivacyLedger:
        return PrivacyLedger.open(self.ledger_path, self.store_id, budget)

    @property
    def federation_dir(self) -> Path:
        return self.state_dir / "federation"


def _interactions_in(state: Path) -> Path:
    for name in INTERACTION_NAMES:
        if (state / name).exists():
            return state / name
    raise DataError(f"{state}: no interaction log ({' / '.join(INTERACTION_NAMES)})")


def _prepared(interactions: Path, catalog_path: Path, max_len: int) -> PreparedData:
    stat_i, stat_c = interactions.stat(), catalog_path.stat()
    key = (
        str(interactions),
        stat_i.st_mtime_ns,
        stat_i.st_size,
        str(catalog_path),
        stat_c.st_mtime_ns,
        max_len,
    )
    cached = _CACHE.get(key)
    if cached is None:
        catalog = Catalog.load(catalog_path)
        frame, _ = read_interactions(interactions)
        cached = prepare(frame, catalog, max_len)
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = cached
    return cached


def open_store(cfg: FederationConfig, node_config: Mapping[str, Any]) -> Store:
    """The store behind this SuperNode: deployed (``store-dir``) or simulated (``partition-id``)."""
    if "store-dir" in node_config:
        state = Path(str(node_config["store-dir"])).expanduser()
        if not state.is_dir():
            raise ConfigError(f"node config store-dir={str(state)!r} is not a directory")
        interactions = (
            Path(str(node_config["interactions"]))
            if "interactions" in node_config
            else _interactions_in(state)
        )
        catalog = Path(str(node_config.get("catalog", state / CATALOG)))
        store_id = str(node_config.get("store-id", state.name))
        return Store(store_id, state, _prepared(interactions, catalog, cfg.model.max_len), simulated=False)
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise ConfigError(
            "node config has neither store-dir (a deployed store) nor partition-id/num-partitions "
            "(a simulated one)"
        )
    from simulations.partition import PartitionSpec, ensure_run_data

    partition, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
    run = ensure_run_data(cfg.run_dir, PartitionSpec.from_config(cfg.data, n, cfg.seed))
    store_id = run.store_ids[partition]
    state = run.store_dir(store_id)
    data = _prepared(_interactions_in(state), state / CATALOG, cfg.model.max_len)
    return Store(store_id, state, data, simulated=True)


def store_seed(base: int, store_id: str, round_id: int) -> int:
    """A reproducible seed per (run, store, round) for simulations; deployed stores use OS randomness."""
    digest = int.from_bytes(os.fsencode(store_id)[-8:].rjust(8, b"\0"), "big")
    return (base * 1_000_003 + digest * 10_007 + round_id) % (2**31 - 1)
