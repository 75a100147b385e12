"""Where serving finds things in a store's state dir (the contract in DESIGN.md, "Store state dir").

``<state>/catalog.json``, the store's interaction log ``<state>/interactions.{csv,csv.gz,parquet}``, the live
event log the API appends to ``<state>/events.csv``, model versions under ``<state>/models/`` (see
``client.model_store``), the privacy ledger ``<state>/ledger.jsonl`` and the API key file ``<state>/api_key``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client.serving.config import ServeConfig

# Same precedence as client.store (training), so serving and training read the same log.
INTERACTION_NAMES = ("interactions.parquet", "interactions.csv", "interactions.csv.gz")


@dataclass(frozen=True)
class StoreLayout:
    root: Path
    catalog: Path
    interactions: Path | None
    events: Path
    ledger: Path
    api_key: Path

    @classmethod
    def from_config(cls, config: ServeConfig) -> StoreLayout:
        root = config.state_dir
        interactions = config.interactions
        if interactions is None:
            interactions = next((root / n for n in INTERACTION_NAMES if (root / n).exists()), None)
        return cls(
            root=root,
            catalog=config.catalog or root / "catalog.json",
            interactions=interactions,
            events=root / "events.csv",
            ledger=root / "ledger.jsonl",
            api_key=root / "api_key",
        )
