"""What a store sends: the bounded delta of its DP-trained model, its weight, and the cache that makes
re-sends free.

* **Delta, not weights**: ``local - global`` per tensor. SecAgg+ quantizes every value within a fixed range;
  deltas are small and centred on 0, so they quantize finely, and the operator adds their mean to the global
  model itself (``server.optimizer``).
* **Bounded**: every coordinate is clipped to ``[-bound, bound]``, the operator's SecAgg+ clipping range, so
  the protocol never clips (silently) on its own. Clipping the DP-SGD output is post-processing: no privacy
  cost. The fraction of clipped coordinates is reported (it is a function of the DP output too).
* **Weight**: customers with a training target, capped at SecAgg+'s ``max_weight`` (a larger weight would
  overflow its quantized weight factor).
* **Re-send cache**: the update is written to ``<state>/federation/`` right before the ledger records the
  round. If the operator crashes and repeats the round with the same global model, the store re-sends that
  update instead of training again: the round's privacy was spent once and is recorded once. A cached
  update whose round is not in the ledger never left the store and is overwritten by the next training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from shared.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["BoundedDelta", "CachedUpdate", "arrays_sha256", "bound_delta", "compute_delta", "store_weight"]

_CACHE_WEIGHTS = "last-update.safetensors"
_CACHE_META = "last-update.json"


def arrays_sha256(arrays: list[np.ndarray]) -> str:
    """Fingerprint of a list of arrays (shapes, dtypes and bytes), e.g. of the global model a round started
    from."""
    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(array)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def compute_delta(local: list[np.ndarray], global_: list[np.ndarray]) -> list[np.ndarray]:
    """``local - global`` per array, float32."""
    if len(local) != len(global_):
        raise ValueError(f"local model has {len(local)} arrays, the global one {len(global_)}")
    return [
        (np.asarray(a, np.float32) - np.asarray(b, np.float32)) for a, b in zip(local, global_, strict=True)
    ]


@dataclass(frozen=True)
class BoundedDelta:
    arrays: list[np.ndarray]
    clipped_fraction: float
    max_abs: float  # before clipping


def bound_delta(delta: list[np.ndarray], bound: float) -> BoundedDelta:
    """Clip every coordinate to ``[-bound, bound]``; report how many were clipped and the largest
    magnitude."""
    if not bound > 0:
        raise ValueError(f"delta bound must be > 0, got {bound!r}")
    total = sum(a.size for a in delta)
    clipped = sum(int(np.count_nonzero(np.abs(a) > bound)) for a in delta)
    max_abs = max((float(np.abs(a).max()) for a in delta if a.size), default=0.0)
    arrays = [np.clip(a, -bound, bound).astype(np.float32) for a in delta]
    return BoundedDelta(arrays=arrays, clipped_fraction=clipped / max(total, 1), max_abs=max_abs)


def store_weight(n_customers: int, max_weight: float) -> int:
    """The store's aggregation weight: its customers with a training target, capped at ``max_weight``."""
    return int(min(n_customers, int(max_weight)))


@dataclass(frozen=True)
class CachedUpdate:
    """The last update a store produced, kept (inside the store) so a repeated round re-sends it."""

    round_id: int
    global_sha256: str
    weight: int
    metrics: dict
    arrays: list[np.ndarray]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        payload = st_save({f"{i:04d}": np.ascontiguousarray(a) for i, a in enumerate(self.arrays)})
        atomic_write_bytes(directory / _CACHE_WEIGHTS, payload)
        meta = {k: v for k, v in asdict(self).items() if k != "arrays"}
        meta["weights_sha256"] = hashlib.sha256(payload).hexdigest()
        atomic_write_text(directory / _CACHE_META, json.dumps(meta, sort_keys=True))

    @classmethod
    def load(cls, directory: Path) -> CachedUpdate | None:
        """The cached update, or None when absent or inconsistent (e.g. a crash between the two writes)."""
        try:
            meta = json.loads((directory / _CACHE_META).read_text())
            payload = (directory / _CACHE_WEIGHTS).read_bytes()
        except (OSError, ValueError):
            return None
        if hashlib.sha256(payload).hexdigest() != meta.get("weights_sha256"):
            return None
        tensors = st_load(payload)
        arrays = [tensors[k] for k in sorted(tensors)]
        return cls(
            round_id=int(meta["round_id"]),
            global_sha256=str(meta["global_sha256"]),
            weight=int(meta["weight"]),
            metrics=dict(meta["metrics"]),
            arrays=arrays,
        )
