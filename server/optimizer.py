"""Server optimizers: how the operator moves the global model by the stores' mean update.

Stores send deltas (local - global); the operator only learns their weighted mean ``d`` (secure aggregation),
treats ``-d`` as a pseudo-gradient and takes one server step (Reddi et al. 2021, "Adaptive Federated
Optimization"):

* ``fedavg``: ``x <- x + lr * d`` (``lr = 1`` is plain FedAvg, McMahan et al. 2017);
* ``fedadam``: ``m <- b1 m + (1 - b1) d``, ``v <- b2 v + (1 - b2) d^2``, ``x <- x + lr * m / (sqrt(v) + tau)``
  (no bias correction, as in the paper).

Pure numpy on float32 arrays, with a ``state_dict`` that checkpoints round-trip exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.config import AggregationConfig
from shared.errors import AggregationError

Arrays = list[np.ndarray]


@dataclass
class ServerOptimizer:
    """One server step per round; ``kind`` is ``fedavg`` or ``fedadam`` (see module docstring)."""

    kind: str = "fedavg"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    steps: int = 0
    m: Arrays = field(default_factory=list)
    v: Arrays = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: AggregationConfig) -> ServerOptimizer:
        return cls(
            kind=cfg.server_optimizer,
            lr=cfg.server_lr,
            beta1=cfg.server_beta1,
            beta2=cfg.server_beta2,
            tau=cfg.server_tau,
        )

    def step(self, weights: Arrays, mean_delta: Arrays) -> Arrays:
        """New global weights from the current ones and the stores' weighted mean delta."""
        if len(weights) != len(mean_delta):
            raise AggregationError(f"update has {len(mean_delta)} arrays, the model {len(weights)}")
        for index, (w, d) in enumerate(zip(weights, mean_delta, strict=True)):
            if w.shape != d.shape:
                raise AggregationError(f"update array {index} has shape {d.shape}, the model {w.shape}")
            if not np.all(np.isfinite(d)):
                raise AggregationError(f"update array {index} holds non-finite values")
        self.steps += 1
        if self.kind == "fedavg":
            return [(w + self.lr * d).astype(w.dtype) for w, d in zip(weights, mean_delta, strict=True)]
        if not self.m:
            self.m = [np.zeros_like(w, dtype=np.float32) for w in weights]
            self.v = [np.zeros_like(w, dtype=np.float32) for w in weights]
        out = []
        for i, (w, d) in enumerate(zip(weights, mean_delta, strict=True)):
            self.m[i] = (self.beta1 * self.m[i] + (1 - self.beta1) * d).astype(np.float32)
            self.v[i] = (self.beta2 * self.v[i] + (1 - self.beta2) * d * d).astype(np.float32)
            out.append((w + self.lr * self.m[i] / (np.sqrt(self.v[i]) + self.tau)).astype(w.dtype))
        return out

    # ------------------------------------------------------------------------------------ checkpoints
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Moment arrays by name (empty for FedAvg or before the first FedAdam step)."""
        out = {f"m.{i}": a for i, a in enumerate(self.m)}
        out.update({f"v.{i}": a for i, a in enumerate(self.v)})
        return out

    def state_meta(self) -> dict:
        return {
            "kind": self.kind,
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
            "steps": self.steps,
        }

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        if meta.get("kind") != self.kind:
            raise AggregationError(
                f"checkpoint was written with server-optimizer={meta.get('kind')!r}, "
                f"this run uses {self.kind!r}"
            )
        self.steps = int(meta["steps"])
        count = sum(1 for k in arrays if k.startswith("m."))
        self.m = [arrays[f"m.{i}"] for i in range(count)]
        self.v = [arrays[f"v.{i}"] for i in range(count)]
