"""Per-round checkpoints of the operator: global weights, server-optimizer state, round number, logs so far.

Layout under ``<run-dir>/operator/checkpoints/``::

    round-000003/weights.safetensors     global model after round 3 (state_dict names)
    round-000003/optimizer.safetensors   server-optimizer moments (FedAdam; empty for FedAvg)
    round-000003/state.json              round, config fingerprint, optimizer meta, metrics + privacy rows,
                                         sha256 of both tensor files
    LATEST                               name of the newest complete checkpoint

A checkpoint directory is built under a temporary name, fsynced and renamed into place; ``LATEST`` is then
replaced atomically. A crash leaves either the previous or the new checkpoint, never a half one; a
directory without ``LATEST`` pointing to it is ignored. The two newest checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from shared.atomic import atomic_write_text
from shared.errors import FedrecError

__all__ = ["Checkpoint", "CheckpointStore"]

KEEP = 2


@dataclass(frozen=True)
class Checkpoint:
    round: int
    weights: dict[str, np.ndarray]  # state_dict name -> array, in model order
    optimizer: dict[str, np.ndarray]
    state: dict
    path: Path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def save(
        self, round_id: int, weights: dict[str, np.ndarray], optimizer: dict[str, np.ndarray], state: dict
    ) -> Path:
        """Write the checkpoint of ``round_id`` atomically and point ``LATEST`` at it."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"round-{round_id:06d}"
        target = self.root / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        try:
            files = {
                "weights.safetensors": st_save(
                    {k: np.ascontiguousarray(v) for k, v in weights.items()},
                    metadata={"order": json.dumps(list(weights))},
                ),
                "optimizer.safetensors": st_save({k: np.ascontiguousarray(v) for k, v in optimizer.items()}),
            }
            digests = {}
            for file, payload in files.items():
                with open(tmp / file, "wb") as fh:
                    fh.write(payload)
                    fh.flush()
                    os.fsync(fh.fileno())
                digests[file] = hashlib.sha256(payload).hexdigest()
            doc = {**state, "round": round_id, "sha256": digests}
            with open(tmp / "state.json", "w") as fh:
                json.dump(doc, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync(tmp)
            if target.exists():  # a previous attempt of this round completed but LATEST was not switched
                shutil.rmtree(target)
            os.rename(tmp, target)
            _fsync(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(self.root / "LATEST", name + "\n")
        self._prune(keep=name)
        return target

    def _prune(self, keep: str) -> None:
        rounds = sorted(p for p in self.root.glob("round-*") if p.is_dir())
        for path in rounds[:-KEEP]:
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)
        for stale in self.root.glob(".round-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint (verified), or None when there is none."""
        try:
            name = (self.root / "LATEST").read_text().strip()
        except FileNotFoundError:
            return None
        return self.load(self.root / name)

    @staticmethod
    def load(path: Path) -> Checkpoint:
        """One checkpoint directory, verified against its checksums."""
        try:
            state = json.loads((path / "state.json").read_text())
            payloads = {f: (path / f).read_bytes() for f in ("weights.safetensors", "optimizer.safetensors")}
        except (OSError, ValueError) as err:
            raise FedrecError(
                f"checkpoint {path} is unreadable ({err}); remove LATEST to start over"
            ) from err
        for file, payload in payloads.items():
            if hashlib.sha256(payload).hexdigest() != state["sha256"][file]:
                raise FedrecError(f"checkpoint {path}: {file} does not match its checksum")
        tensors = st_load(payloads["weights.safetensors"])
        order = _order(payloads["weights.safetensors"]) or sorted(tensors)
        return Checkpoint(
            round=int(state["round"]),
            weights={k: tensors[k] for k in order},
            optimizer=st_load(payloads["optimizer.safetensors"]),
            state=state,
            path=path,
        )


def _order(payload: bytes) -> list[str] | None:
    """The tensor order recorded in a safetensors header (safetensors itself sorts names)."""
    size = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + size])
    meta = header.get("__metadata__") or {}
    return json.loads(meta["order"]) if "order" in meta else None
