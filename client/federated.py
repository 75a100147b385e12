"""The store's side of a federated round, as a legacy ``NumPyClient`` (the only kind SecAgg+ accepts in 1.42).

``fit`` (one round, DESIGN.md "Flows"): load the store and its ledger; if the round is already in the
ledger, re-send that round's cached update (same global model) or decline; otherwise
``client.private_round.run_private_round`` (budget veto, DP-SGD, ledger entry before anything leaves; the
bounded update is cached just before the entry) -> bounded delta + weight + plaintext metrics (store id,
status, epsilon with its delta/accountant/unit, reason). A declined store sends zeros with weight 0, so it
still completes the SecAgg+ protocol and the operator sees the reason ("budget exhausted: ...").

``evaluate``: ``phase=valid`` -> the global model's metrics on the store's validation customers;
``phase=final`` -> publish the global model, fine-tune and publish the personalized copy
(``client.personalize``), and report both models' test metrics. Only aggregates over customers leave.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.client import NumPyClient

from client.ledger import PrivacyLedger
from client.private_round import PrivacyPlan, run_private_round
from client.store import Store, open_store, store_seed
from client.update import CachedUpdate, arrays_sha256, bound_delta, compute_delta, store_weight
from shared.config import FederationConfig
from shared.errors import CatalogMismatchError
from shared.evaluation import evaluate_model
from shared.models import SequentialRecommender, build_model
from shared.privacy.accounting import DEFAULT_UNIT, PrivacyEvent

__all__ = ["StoreClient", "arrays_to_model", "model_arrays"]

logger = logging.getLogger(__name__)


def model_arrays(model: torch.nn.Module) -> list[np.ndarray]:
    """The model's state as float32 arrays, in ``state_dict`` order (the order on the wire)."""
    return [v.detach().cpu().numpy().astype(np.float32, copy=True) for v in model.state_dict().values()]


def arrays_to_model(cfg: FederationConfig, n_items: int, arrays: list[np.ndarray]) -> SequentialRecommender:
    model = build_model(cfg.model, n_items)
    keys = list(model.state_dict())
    if len(keys) != len(arrays):
        raise ValueError(f"received {len(arrays)} arrays for a model with {len(keys)} tensors")
    model.load_state_dict(
        {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in zip(keys, arrays, strict=True)}
    )
    return model


class _CacheFirst:
    """A ledger whose ``append`` first calls ``before`` (to cache the update) and then records the event."""

    def __init__(self, ledger: PrivacyLedger, before: Callable[[PrivacyEvent], None]) -> None:
        self._ledger = ledger
        self._before = before

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def append(self, event: PrivacyEvent, **kwargs: Any) -> None:
        self._before(event)
        self._ledger.append(event, **kwargs)


class StoreClient(NumPyClient):
    """One store in one Flower message (cheap to build; the store is opened on first use)."""

    def __init__(self, cfg: FederationConfig, context: Context) -> None:
        self.cfg = cfg
        self.context = context
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            torch.set_num_threads(self.cfg.client_threads)
            self._store = open_store(self.cfg, self.context.node_config)
        return self._store

    def _check_catalog(self, config: dict[str, Any]) -> None:
        expected = str(config.get("catalog-hash", ""))
        if expected and expected != self.store.catalog.content_hash:
            raise CatalogMismatchError(
                f"{self.store.store_id}: the operator's model is built on catalog {expected[:12]}, "
                f"this store "
                f"holds {self.store.catalog.content_hash[:12]}"
            )

    def _seed(self, round_id: int) -> int | None:
        # Seeded noise is predictable noise: only simulations (which must be reproducible) seed it.
        return store_seed(self.cfg.seed, self.store.store_id, round_id) if self.store.simulated else None

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        start = time.perf_counter()
        round_id = int(config["round"])
        rounds = int(config.get("rounds", self.cfg.rounds))
        bound = float(config.get("delta-bound", self.cfg.aggregation.delta_bound))
        max_weight = float(config.get("max-weight", self.cfg.aggregation.max_weight))
        store = self.store
        self._check_catalog(config)
        global_arrays = [np.asarray(p, dtype=np.float32) for p in parameters]
        global_sha = arrays_sha256(global_arrays)
        base = {"store-id": store.store_id, "round": round_id}
        if not self.cfg.privacy.dp:
            return self._fit_non_private(global_arrays, bound, max_weight, base, start)

        privacy = self.cfg.privacy
        budget = privacy.budget()
        ledger = store.ledger(budget)
        spent = {"delta": budget.delta, "accountant": budget.accountant, "unit": DEFAULT_UNIT}
        last = ledger.last_round()
        if last is not None and last >= round_id:
            cached = CachedUpdate.load(store.federation_dir)
            if cached and cached.round_id == round_id and cached.global_sha256 == global_sha:
                # Same round, same global model: the update was released once; sending it again is free.
                logger.info("%s: round %d already trained; re-sending its update", store.store_id, round_id)
                metrics = {**cached.metrics, "epsilon": ledger.epsilon(), "resent": 1}
                return cached.arrays, cached.weight, metrics
            reason = f"round {round_id} is already in the ledger (last {last}) and its update is gone"
            return self._declined(global_arrays, ledger.epsilon(), reason, {**base, **spent}, start)

        model = arrays_to_model(self.cfg, store.catalog.n_items, global_arrays)
        plan = PrivacyPlan(budget=budget, rounds=rounds, dp=self.cfg.local.to_dp_config(round_id))
        weight = store_weight(len(store.data.train), max_weight)
        pending: dict[str, Any] = {}

        def keep_update(event: PrivacyEvent) -> None:
            # Called by the ledger right before it records the round: the update is cached first, so a crash
            # can never leave a recorded round without the update to re-send (a cached update whose round is
            # not in the ledger never left the store and is simply overwritten).
            bounded = bound_delta(compute_delta(model_arrays(model), global_arrays), bound)
            extra = {"noise-multiplier": event.noise_multiplier, "steps": event.steps}
            metrics = {
                **base,
                **spent,
                "status": "trained",
                "reason": "",
                **extra,
                "clipped-fraction": bounded.clipped_fraction,
                "delta-max-abs": bounded.max_abs,
            }
            CachedUpdate(round_id, global_sha, weight, metrics, bounded.arrays).save(store.federation_dir)
            pending.update(bounded=bounded, metrics=metrics)

        outcome = run_private_round(
            model,
            store.data.train,
            _CacheFirst(ledger, keep_update),
            plan,
            round_id,
            seed=self._seed(round_id),
        )
        if outcome.status != "trained":
            logger.warning("%s: declined round %d: %s", store.store_id, round_id, outcome.reason)
            return self._declined(global_arrays, outcome.epsilon, outcome.reason, {**base, **spent}, start)
        bounded = pending["bounded"]
        metrics = {
            **pending["metrics"],
            "epsilon": float(outcome.epsilon),
            "seconds": time.perf_counter() - start,
        }
        return bounded.arrays, weight, metrics

    def _declined(
        self, global_arrays: list[np.ndarray], epsilon: float, reason: str, base: dict, start: float
    ) -> tuple[list[np.ndarray], int, dict]:
        zeros = [np.zeros_like(a) for a in global_arrays]  # same shapes: the masked sum needs every store
        metrics = {
            **base,
            "status": "declined",
            "epsilon": float(epsilon),
            "reason": reason,
            "seconds": time.perf_counter() - start,
        }
        return zeros, 0, metrics

    def _fit_non_private(
        self, global_arrays: list[np.ndarray], bound: float, max_weight: float, base: dict, start: float
    ) -> tuple[list[np.ndarray], int, dict]:
        """Benchmark arm without DP: plain local epochs (no ledger entry, epsilon reported as -1 = none)."""
        from shared.training import TrainConfig, make_optimizer, train_epoch

        store = self.store
        round_id = int(base["round"])
        model = arrays_to_model(self.cfg, store.catalog.n_items, global_arrays)
        seed = self._seed(round_id) or 0
        torch.manual_seed(seed)
        train_cfg = TrainConfig(
            batch_size=min(128, self.cfg.local.batch_size), lr=self.cfg.local.round_lr(round_id), seed=seed
        )
        optimizer = make_optimizer(model, train_cfg)
        rng = np.random.default_rng(seed)
        epochs = max(1, round(self.cfg.local.epochs))
        for _ in range(epochs):
            train_epoch(model, store.data.train, optimizer, train_cfg, rng)
        bounded = bound_delta(compute_delta(model_arrays(model), global_arrays), bound)
        metrics = {
            **base,
            "status": "trained",
            "epsilon": -1.0,
            "reason": "no DP (benchmark arm)",
            "clipped-fraction": bounded.clipped_fraction,
            "delta-max-abs": bounded.max_abs,
            "seconds": time.perf_counter() - start,
        }
        weight = store_weight(len(store.data.train), max_weight)
        CachedUpdate(round_id, arrays_sha256(global_arrays), weight, metrics, bounded.arrays).save(
            store.federation_dir
        )
        return bounded.arrays, weight, metrics

    # -------------------------------------------------------------------------------------- evaluate
    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        store = self.store
        self._check_catalog(config)
        model = arrays_to_model(self.cfg, store.catalog.n_items, [np.asarray(p) for p in parameters])
        phase = str(config.get("phase", "valid"))
        if phase == "final":
            return self._final(model, int(config.get("round", self.cfg.rounds)))
        data = store.data.valid
        if not len(data):
            return 0.0, 0, {"store-id": store.store_id}
        metrics = evaluate_model(model, data)
        return 1.0 - metrics["ndcg@10"], len(data), {"ndcg@10": metrics["ndcg@10"], "hr@10": metrics["hr@10"]}

    def _final(self, model: SequentialRecommender, round_id: int) -> tuple[float, int, dict]:
        store = self.store
        n_test = len(store.data.test)
        if not self.cfg.personalization.enabled:
            test = evaluate_model(model, store.data.test) if n_test else {"ndcg@10": 0.0, "hr@10": 0.0}
            return 1.0 - test["ndcg@10"], n_test, {"ndcg@10": test["ndcg@10"], "hr@10": test["hr@10"]}
        from client.personalize import personalize

        result = personalize(store, model, self.cfg.personalization, round_id, seed=self._seed(round_id) or 0)
        g, p = result.global_test, result.personalized_test
        metrics = {
            "ndcg@10": g.get("ndcg@10", 0.0),
            "hr@10": g.get("hr@10", 0.0),
            "personalized-ndcg@10": p.get("ndcg@10", 0.0),
            "personalized-hr@10": p.get("hr@10", 0.0),
            "personalized-improved": int(result.improved_on_validation),
        }
        return 1.0 - metrics["ndcg@10"], n_test, metrics
