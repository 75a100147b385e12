"""The operator's strategy on Flower's legacy API (SecAgg+ needs ``configure_fit`` / ``aggregate_fit``).

Stores send bounded deltas; the strategy turns their weighted mean into a server step (``server.optimizer``).
With secure aggregation the mean arrives already unmasked and weighted (every result carries the same
aggregate); in plain mode the strategy computes it. Either way it records, per round, what the operator is
allowed to log: each store's status and reported epsilon (with delta, accountant and unit), and aggregates.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from logging import getLogger

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from server.optimizer import ServerOptimizer
from shared.config import FederationConfig

__all__ = ["DeltaStrategy", "FitSummary", "StoreReport"]

logger = getLogger(__name__)


@dataclass(frozen=True)
class StoreReport:
    """What one store reported in plaintext for one round (never its update)."""

    store_id: str
    status: str
    epsilon: float | None
    delta: float | None
    accountant: str
    unit: str
    reason: str
    weight: int
    clipped_fraction: float = 0.0
    resent: bool = False

    @classmethod
    def from_fitres(cls, res: FitRes) -> StoreReport:
        m = res.metrics
        eps = float(m.get("epsilon", -1.0))
        return cls(
            store_id=str(m.get("store-id", "?")),
            status=str(m.get("status", "trained")),
            epsilon=eps if eps >= 0 else None,
            delta=float(m["delta"]) if "delta" in m else None,
            accountant=str(m.get("accountant", "")),
            unit=str(m.get("unit", "")),
            reason=str(m.get("reason", "")),
            weight=int(res.num_examples),
            clipped_fraction=float(m.get("clipped-fraction", 0.0)),
            resent=bool(m.get("resent", 0)),
        )


@dataclass
class FitSummary:
    round: int
    sampled: int
    reports: list[StoreReport] = field(default_factory=list)
    failures: int = 0
    updated: bool = False
    note: str = ""

    def row(self) -> dict:
        """Aggregates only (plus the per-store epsilons the operator may log, in ``privacy_rows``)."""
        trained = [r for r in self.reports if r.status == "trained"]
        declined = [r for r in self.reports if r.status == "declined"]
        eps = [r.epsilon for r in self.reports if r.epsilon is not None and math.isfinite(r.epsilon)]
        weight = sum(r.weight for r in trained)
        clipped = sum(r.clipped_fraction * r.weight for r in trained) / weight if weight else 0.0
        return {
            "round": self.round,
            "sampled": self.sampled,
            "trained": len(trained),
            "declined": len(declined),
            "failed": self.sampled - len(self.reports),
            "resent": sum(r.resent for r in self.reports),
            "weight": weight,
            "updated": self.updated,
            "epsilon_min": min(eps) if eps else None,
            "epsilon_median": statistics.median(eps) if eps else None,
            "epsilon_max": max(eps) if eps else None,
            "clipped_fraction": clipped,
            "declined_reasons": sorted({r.reason for r in declined}),
            "note": self.note,
        }

    def privacy_rows(self) -> list[dict]:
        return [
            {
                "round": self.round,
                "store_id": r.store_id,
                "status": r.status,
                "epsilon": r.epsilon,
                "delta": r.delta,
                "accountant": r.accountant,
                "unit": r.unit,
                "reason": r.reason,
            }
            for r in self.reports
        ]


def weighted_mean(updates: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray] | None:
    """Plain-mode aggregate: sum(w_i * d_i) / sum(w_i) in float64; None if the total weight is 0."""
    total = sum(w for _, w in updates)
    if total <= 0:
        return None
    first = updates[0][0]
    acc = [np.zeros(a.shape, dtype=np.float64) for a in first]
    for arrays, w in updates:
        for i, a in enumerate(arrays):
            acc[i] += w * a.astype(np.float64)
    return [(a / total).astype(np.float32) for a in acc]


class DeltaStrategy(Strategy):
    """Samples stores, sends global weights + round config, applies the server optimizer to the mean delta."""

    def __init__(
        self,
        cfg: FederationConfig,
        weights: list[np.ndarray],
        optimizer: ServerOptimizer,
        catalog_hash: str = "",
    ) -> None:
        self.cfg = cfg
        self.catalog_hash = catalog_hash
        self.weights = weights
        self.optimizer = optimizer
        self.secure = cfg.aggregation.secure
        self.max_weight = cfg.aggregation.max_weight
        self.eval_phase = "valid"
        self.fit_summary: FitSummary | None = None
        self.eval_metrics: dict[str, float] = {}
        self.eval_stores = 0

    def sample_size(self, available: int) -> int:
        """Stores per round: ``ceil(fraction-train * available)``, at least ``min-stores`` (if available)."""
        wanted = max(
            self.cfg.aggregation.min_stores, math.ceil(self.cfg.aggregation.fraction_train * available)
        )
        return min(wanted, available)

    # ------------------------------------------------------------------------------------------- fit
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.weights)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.weights = parameters_to_ndarrays(parameters)
        available = client_manager.num_available()
        n = self.sample_size(available)
        self.fit_summary = FitSummary(round=server_round, sampled=0)
        if n < self.cfg.aggregation.min_stores:
            self.fit_summary.note = (
                f"only {available} store(s) available, min-stores={self.cfg.aggregation.min_stores}"
            )
            logger.warning("round %d skipped: %s", server_round, self.fit_summary.note)
            return []
        clients = client_manager.sample(num_clients=n, min_num_clients=n)
        self.fit_summary.sampled = len(clients)
        config: dict[str, Scalar] = {
            "round": server_round,
            "rounds": self.cfg.rounds,
            "delta-bound": self.cfg.aggregation.delta_bound,
            "max-weight": self.max_weight,
            "secure": self.secure,
            "catalog-hash": self.catalog_hash,
        }
        fit_ins = FitIns(parameters, config)
        return [(client, fit_ins) for client in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        summary = self.fit_summary or FitSummary(round=server_round, sampled=len(results))
        summary.reports = [StoreReport.from_fitres(res) for _, res in results]
        self.fit_summary = summary
        weight = sum(r.weight for r in summary.reports if r.status == "trained")
        if not results or weight <= 0:
            summary.note = "no store trained: global model unchanged"
            return None, {}
        if self.secure:
            # SecAgg+ hands every result the same unmasked, weighted mean of the masked inputs.
            mean = [a.astype(np.float32) for a in parameters_to_ndarrays(results[0][1].parameters)]
        else:
            mean = weighted_mean(
                [(parameters_to_ndarrays(res.parameters), res.num_examples) for _, res in results]
            )
        if mean is None:
            return None, {}
        self.weights = self.optimizer.step(self.weights, mean)
        summary.updated = True
        return ndarrays_to_parameters(self.weights), {}

    # -------------------------------------------------------------------------------------- evaluate
    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        available = client_manager.num_available()
        if available < 1:
            return []
        clients = client_manager.sample(num_clients=available, min_num_clients=1)
        ins = EvaluateIns(
            parameters, {"round": server_round, "phase": self.eval_phase, "catalog-hash": self.catalog_hash}
        )
        return [(client, ins) for client in clients]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Customer-weighted means of every numeric metric (a store's weight = its evaluated customers)."""
        total = sum(res.num_examples for _, res in results)
        self.eval_stores = len(results)
        if total <= 0:
            self.eval_metrics = {}
            return None, {}
        keys = sorted({k for _, res in results for k, v in res.metrics.items() if isinstance(v, int | float)})
        means = {
            k: sum(float(res.metrics.get(k, 0.0)) * res.num_examples for _, res in results) / total
            for k in keys
        }
        means["customers"] = total
        self.eval_metrics = means
        loss = sum(res.loss * res.num_examples for _, res in results) / total
        return loss, means

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None  # the operator holds no data: evaluation happens at the stores
