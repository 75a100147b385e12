"""The operator's run: rounds of secure fit + store-side evaluation, a checkpoint after each, a final phase.

Round ``r`` (DESIGN.md "Flows"): sample stores, send global weights + round config; stores train with DP-SGD
and send bounded deltas through SecAgg+; the strategy applies the server optimizer to the unmasked mean; every
store evaluates the new global model on its validation customers; the operator checkpoints the global model
and its state atomically, then appends the round's aggregates to ``metrics.jsonl`` and each store's reported
epsilon to ``privacy.jsonl``. After the last round every store saves the global model, fine-tunes its own copy
and reports test metrics of both (``phase=final``).

``resume`` continues after the last complete checkpoint; the logs are rewritten from the checkpoint first, so
no round is lost or logged twice. A store asked to repeat a round it already trained re-sends the same update
(``client.update``), so its ledger records the round once.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path
from typing import cast

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.common import Code, EvaluateRes, ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from server.aggregation import fit_workflow, mode_name
from server.checkpoints import CheckpointStore
from server.optimizer import ServerOptimizer
from server.privacy_log import OperatorDir, latest_epsilons
from server.secagg import RobustSecAggPlusWorkflow
from server.strategy import DeltaStrategy, FitSummary
from shared.config import FederationConfig
from shared.data.catalog import Catalog
from shared.errors import AggregationError, ConfigError
from shared.models import build_model

__all__ = ["Federation", "RunHooks"]

logger = getLogger(__name__)
flower_log = getLogger("flwr")  # Flower's console handler: visible in `flwr run --stream` and `flwr log`


@dataclass
class RunHooks:
    """Callbacks for whoever drives the run in-process (progress bars, tests); all optional."""

    on_start: Callable[[int, int], None] | None = None  # (first round to run, total rounds)
    on_round: Callable[[dict], None] | None = None
    on_final: Callable[[dict], None] | None = None
    wrap_grid: Callable[[Grid], Grid] | None = None
    store_wait_seconds: float = 120.0


def resolve_catalog(cfg: FederationConfig) -> Catalog:
    """The operator's catalog: ``catalog`` if configured, else the simulation's (the data set's item list)."""
    if cfg.catalog:
        return Catalog.load(cfg.catalog)
    prepared = Path(cfg.run_dir) / "data" / "catalog.json"
    if prepared.exists():
        return Catalog.load(prepared)
    from simulations.partition import catalog_for

    return catalog_for(cfg.data, cfg.seed)


def evaluate_round(grid: Grid, context: LegacyContext, timeout: float) -> None:
    """Flower's legacy evaluate round with a timeout (the default one waits forever)."""
    cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
    current_round = cast(int, cfg[Key.CURRENT_ROUND])
    parameters = compat.arrayrecord_to_parameters(
        context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
    )
    instructions = context.strategy.configure_evaluate(current_round, parameters, context.client_manager)
    if not instructions:
        return
    proxies = {proxy.node_id: proxy for proxy, _ in instructions}
    messages = [
        Message(
            content=compat.evaluateins_to_recorddict(ins, True),
            dst_node_id=proxy.node_id,
            message_type=MessageType.EVALUATE,
            group_id=str(current_round),
        )
        for proxy, ins in instructions
    ]
    results: list[tuple[ClientProxy, EvaluateRes]] = []
    failures: list = []
    for msg in grid.send_and_receive(messages, timeout=timeout):
        if msg.has_content():
            res = compat.recorddict_to_evaluateres(msg.content)
            (results if res.status.code == Code.OK else failures).append(
                (proxies[msg.metadata.src_node_id], res)
            )
        else:
            failures.append(Exception(msg.error))
            logger.warning("evaluation failed at a store: %s", msg.error.reason)
    context.strategy.aggregate_evaluate(current_round, results, failures)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class Federation:
    """One federated run on a Grid; ``run`` returns the final report."""

    def __init__(self, cfg: FederationConfig, hooks: RunHooks | None = None) -> None:
        self.cfg = cfg
        self.hooks = hooks or RunHooks()
        self.op = OperatorDir(cfg.run_dir)

    def _wait_for_stores(self, manager: SimpleClientManager) -> int:
        """Wait until at least ``min-stores`` stores are connected and their number is stable for a second."""
        deadline = time.monotonic() + self.hooks.store_wait_seconds
        last, stable_since = -1, time.monotonic()
        while True:
            n = manager.num_available()
            now = time.monotonic()
            if n != last:
                last, stable_since = n, now
            if n >= self.cfg.aggregation.min_stores and now - stable_since >= 1.0:
                return n
            if now > deadline:
                raise AggregationError(
                    f"only {n} store(s) connected after {self.hooks.store_wait_seconds:.0f} s; "
                    f"min-stores={self.cfg.aggregation.min_stores}"
                )
            time.sleep(0.25)

    def run(self, grid: Grid, context: Context) -> dict:
        if self.hooks.wrap_grid is not None:
            grid = self.hooks.wrap_grid(grid)
        manager = SimpleClientManager()
        thread, f_stop, c_done = start_update_client_manager_thread(grid, manager)
        c_done.wait()
        try:
            return self._run(grid, context, manager)
        finally:
            f_stop.set()
            thread.join(timeout=10)

    def _fingerprint(self, catalog: Catalog) -> dict:
        return {
            "model": self.cfg.model.to_dict(),
            "catalog_hash": catalog.content_hash,
            "server_optimizer": self.cfg.aggregation.server_optimizer,
        }

    def _run(self, grid: Grid, context: Context, manager: SimpleClientManager) -> dict:
        cfg, op = self.cfg, self.op
        started = time.perf_counter()
        n_stores = self._wait_for_stores(manager)
        catalog = resolve_catalog(cfg)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, catalog.n_items)
        names = list(model.state_dict())
        weights = [v.detach().numpy().astype(np.float32, copy=True) for v in model.state_dict().values()]
        optimizer = ServerOptimizer.from_config(cfg.aggregation)
        store = CheckpointStore(op.checkpoints)
        history: list[dict] = []
        privacy_rows: list[dict] = []
        start_round = 1
        checkpoint = store.latest()
        if checkpoint is not None:
            if not cfg.resume:
                raise ConfigError(
                    f"run dir {cfg.run_dir} already has checkpoints up to round {checkpoint.round}; "
                    "resume it (resume = true / --resume) or choose another run-dir"
                )
            if checkpoint.state.get("fingerprint") != self._fingerprint(catalog):
                raise ConfigError(
                    f"cannot resume {cfg.run_dir}: it was run with {checkpoint.state.get('fingerprint')}, "
                    f"this config has {self._fingerprint(catalog)}"
                )
            weights = [checkpoint.weights[name] for name in names]
            optimizer.load_state(checkpoint.state["optimizer"], checkpoint.optimizer)
            history = list(checkpoint.state["metrics"])
            privacy_rows = list(checkpoint.state["privacy"])
            start_round = checkpoint.round + 1
            logger.info("resuming after round %d (checkpoint %s)", checkpoint.round, checkpoint.path)
            if start_round > cfg.rounds and op.final.exists():
                logger.info("run %s is already complete; nothing to resume", cfg.run_dir)
                return json.loads(op.final.read_text())
        # The logs hold exactly the completed rounds, whatever a crash left behind.
        op.metrics.rewrite(history)
        op.privacy.rewrite(privacy_rows)
        op.write_json(
            op.config,
            {
                "run_config": cfg.to_run_config(),
                "catalog_hash": catalog.content_hash,
                "stores_connected": n_stores,
                "aggregation": mode_name(cfg.aggregation),
            },
        )

        strategy = DeltaStrategy(cfg, weights, optimizer, catalog_hash=catalog.content_hash)
        legacy = LegacyContext(
            context=context,
            config=ServerConfig(num_rounds=cfg.rounds),
            strategy=strategy,
            client_manager=manager,
        )
        legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(weights), True
        )
        round_cfg = ConfigRecord({Key.START_TIME: time.time(), Key.CURRENT_ROUND: start_round})
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = round_cfg
        fit = fit_workflow(cfg.aggregation, strategy.sample_size)
        timeout = cfg.aggregation.stage_timeout
        if self.hooks.on_start:
            self.hooks.on_start(start_round, cfg.rounds)

        for r in range(start_round, cfg.rounds + 1):
            round_cfg[Key.CURRENT_ROUND] = r
            t0 = time.perf_counter()
            strategy.fit_summary = None
            fit(grid, legacy)
            summary = strategy.fit_summary or FitSummary(round=r, sampled=0, note="no stores sampled")
            if summary.sampled and not summary.reports and not summary.note:
                summary.note = "secure aggregation halted (see the operator log): global model unchanged"
            fit_seconds = time.perf_counter() - t0
            strategy.eval_phase = "valid"
            strategy.eval_metrics = {}
            evaluate_round(grid, legacy, timeout)
            row = {
                **summary.row(),
                "aggregation": mode_name(cfg.aggregation),
                "valid_ndcg@10": strategy.eval_metrics.get("ndcg@10"),
                "valid_hr@10": strategy.eval_metrics.get("hr@10"),
                "valid_customers": strategy.eval_metrics.get("customers"),
                "fit_seconds": fit_seconds,
                "seconds": time.perf_counter() - t0,
                "time": time.time(),
            }
            if isinstance(fit, RobustSecAggPlusWorkflow) and fit.last_params is not None:
                p = fit.last_params
                row["secagg"] = {
                    "num_shares": p.num_shares,
                    "threshold": p.threshold,
                    "quantization_bits": p.quantization_range.bit_length() - 1,
                    "clipping_range": p.clipping_range,
                    "max_weight": p.max_weight,
                    "pruned_before_masking": len(fit.last_pruned),
                }
            history.append(row)
            privacy_rows.extend(summary.privacy_rows())
            store.save(
                r,
                dict(zip(names, strategy.weights, strict=True)),
                optimizer.state_arrays(),
                {
                    "fingerprint": self._fingerprint(catalog),
                    "optimizer": optimizer.state_meta(),
                    "metrics": history,
                    "privacy": privacy_rows,
                    "rounds_total": cfg.rounds,
                },
            )
            op.metrics.append([row])
            op.privacy.append(summary.privacy_rows())
            flower_log.info(
                "[fedrec] round %d/%d: %d trained, %d declined, %d failed; valid NDCG@10 %s; "
                "epsilon per store max %s; %.1f s",
                r,
                cfg.rounds,
                row["trained"],
                row["declined"],
                row["failed"],
                _fmt(row["valid_ndcg@10"]),
                _fmt(row["epsilon_max"]),
                row["seconds"],
            )
            if self.hooks.on_round:
                self.hooks.on_round(row)

        final = self._final(grid, legacy, strategy, catalog, names, history, privacy_rows, started)
        flower_log.info(
            "[fedrec] final: test NDCG@10 %s (personalized %s), HR@10 %s; epsilon min/median/max %s/%s/%s "
            "(delta %g, %s, per customer of one store); report %s",
            _fmt(final["test_ndcg@10"]),
            _fmt(final["personalized_test_ndcg@10"]),
            _fmt(final["test_hr@10"]),
            _fmt(final["epsilon_min"]),
            _fmt(final["epsilon_median"]),
            _fmt(final["epsilon_max"]),
            cfg.privacy.delta,
            cfg.privacy.accountant,
            self.op.final,
        )
        if self.hooks.on_final:
            self.hooks.on_final(final)
        return final

    def _final(self, grid, legacy, strategy, catalog, names, history, privacy_rows, started) -> dict:
        """Every store saves the global model, fine-tunes its copy and reports test metrics of both."""
        cfg, op = self.cfg, self.op
        t0 = time.perf_counter()
        legacy.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND] = cfg.rounds
        legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(strategy.weights), True
        )
        strategy.eval_phase = "final"
        strategy.eval_metrics = {}
        evaluate_round(grid, legacy, cfg.aggregation.stage_timeout)
        test = dict(strategy.eval_metrics)
        eps = sorted(latest_epsilons(privacy_rows).values())
        final = {
            "rounds": cfg.rounds,
            "rounds_logged": [row["round"] for row in history],
            "stores_evaluated": strategy.eval_stores,
            "aggregation": mode_name(cfg.aggregation),
            "dp": cfg.privacy.dp,
            "test_ndcg@10": test.get("ndcg@10"),
            "test_hr@10": test.get("hr@10"),
            "personalized_test_ndcg@10": test.get("personalized-ndcg@10"),
            "personalized_test_hr@10": test.get("personalized-hr@10"),
            "test_customers": test.get("customers"),
            "epsilon_min": eps[0] if eps else None,
            "epsilon_median": statistics.median(eps) if eps else None,
            "epsilon_max": eps[-1] if eps else None,
            "privacy": {
                "delta": cfg.privacy.delta,
                "accountant": cfg.privacy.accountant,
                "unit": "customer of one store (a person at k stores is k customers)",
            },
            "round_seconds": sum(row["seconds"] for row in history),
            "final_seconds": time.perf_counter() - t0,
            "wall_seconds": time.perf_counter() - started,
        }
        model = build_model(cfg.model, catalog.n_items)
        model.load_state_dict(
            {n: torch.from_numpy(np.array(w)) for n, w in zip(names, strategy.weights, strict=True)}
        )
        target = op.root / "models" / f"global-r{cfg.rounds:06d}"
        if not target.exists():
            from shared.serde import save_model

            save_model(model, target, catalog_hash=catalog.content_hash, origin="global", round_id=cfg.rounds)
        final["global_model"] = str(target)
        op.write_json(op.final, final)
        return final
