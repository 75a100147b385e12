"""The operator's logs: metrics per round and the privacy-spend log (each store's reported epsilon per round).

Both are JSON lines under ``<run-dir>/operator/``: ``metrics.jsonl`` (aggregates only) and ``privacy.jsonl``
(store id, status, epsilon with its delta, accountant and unit -- the privacy unit is one customer of that
store; a person who shops at k stores is k customers -- and the reason of a declined round). The rows of every
completed round are also inside the round's checkpoint, and ``rewrite`` puts the files back to exactly those
rows on resume, so a round is never logged twice or lost across a crash.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from shared.atomic import atomic_write_text

__all__ = ["JsonlLog", "OperatorDir", "latest_epsilons"]


def _clean(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class JsonlLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(_clean(row), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def rewrite(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(json.dumps(_clean(r), sort_keys=True) + "\n" for r in rows))

    def read(self) -> list[dict]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]


class OperatorDir:
    """``<run-dir>/operator``: checkpoints, logs, the resolved config and the final report."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.root = Path(run_dir) / "operator"
        self.metrics = JsonlLog(self.root / "metrics.jsonl")
        self.privacy = JsonlLog(self.root / "privacy.jsonl")
        self.checkpoints = self.root / "checkpoints"
        self.final = self.root / "final.json"
        self.config = self.root / "config.json"

    def write_json(self, path: Path, doc: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(_clean(doc), indent=2, sort_keys=True) + "\n")


def latest_epsilons(privacy_rows: list[dict]) -> dict[str, float]:
    """Each store's most recently reported epsilon (stores that never reported one are absent)."""
    out: dict[str, float] = {}
    for row in sorted(privacy_rows, key=lambda r: r["round"]):
        if row.get("epsilon") is not None:
            out[row["store_id"]] = float(row["epsilon"])
    return out
