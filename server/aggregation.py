"""The one place that chooses how store updates are combined: SecAgg+ (default) or plain (explicit, insecure).

Operator side: ``fit_workflow`` returns the round's fit workflow: ``server.secagg.RobustSecAggPlusWorkflow``,
or, only with ``insecure-plain-aggregation = true``, a plain legacy fit round (logged as a warning: the
operator then receives every store's update). Both have a finite timeout.

Store side: ``client_mods`` returns the mod chain: ``aggregation_mod`` runs Flower's ``secaggplus_mod`` (which
masks the reply of the store's ``fit``) for every SecAgg+ message, and lets a plain training request through
only if plain aggregation is allowed for this store (see below); otherwise the store answers with an error.
Any extra mod that must see plaintext updates (e.g. a clipping mod) has to go *after* it (inside
``call_next``); a mod before it sees only masked vectors.

Who may turn secure aggregation off: in a simulation the auditor (the run config flag); a deployed store
(one with ``store-dir`` in its node config) additionally needs ``allow-plain-aggregation = true`` in its own
node config, so an operator cannot switch a store to plain aggregation on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from logging import getLogger
from typing import cast

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Code, FitRes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from server.secagg import RobustSecAggPlusWorkflow, derive_params
from shared.config import AggregationConfig
from shared.errors import AggregationError

__all__ = ["PLAIN_WARNING", "aggregation_mod", "client_mods", "fit_workflow", "mode_name"]

logger = getLogger(__name__)

PLAIN_WARNING = (
    "INSECURE: plain aggregation is on (insecure-plain-aggregation = true): the operator receives every "
    "store's individual update. Use it only for debugging and benchmarks."
)


def mode_name(cfg: AggregationConfig) -> str:
    return "secagg+" if cfg.secure else "plain-insecure"


def fit_workflow(
    cfg: AggregationConfig, sample_size: Callable[[int], int]
) -> Callable[[Grid, Context], None]:
    """The fit workflow for every round of this run (see the module docstring)."""
    if not math.isfinite(cfg.stage_timeout) or cfg.stage_timeout <= 0:
        raise AggregationError(f"stage-timeout={cfg.stage_timeout!r}: a finite timeout is required")
    if cfg.secure:
        return RobustSecAggPlusWorkflow(
            params_for=lambda n: derive_params(
                n, clipping_range=cfg.delta_bound, max_weight=cfg.max_weight, timeout=cfg.stage_timeout
            ),
            sample_size=sample_size,
        )
    logger.warning(PLAIN_WARNING)
    return PlainFitWorkflow(cfg.stage_timeout)


class PlainFitWorkflow:
    """Flower's default legacy fit round with a timeout (the default one waits forever)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but get {type(context).__name__}.")
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        current_round = cast(int, cfg[Key.CURRENT_ROUND])
        parameters = compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
        )
        instructions = context.strategy.configure_fit(current_round, parameters, context.client_manager)
        if not instructions:
            logger.info("configure_fit: no stores selected, round skipped")
            return
        proxies = {proxy.node_id: proxy for proxy, _ in instructions}
        messages = [
            Message(
                content=compat.fitins_to_recorddict(fitins, True),
                dst_node_id=proxy.node_id,
                message_type=MessageType.TRAIN,
                group_id=str(current_round),
            )
            for proxy, fitins in instructions
        ]
        replies = list(grid.send_and_receive(messages, timeout=self.timeout))
        results: list[tuple[ClientProxy, FitRes]] = []
        failures: list[tuple[ClientProxy, FitRes] | BaseException] = []
        for msg in replies:
            if msg.has_content():
                fitres = compat.recorddict_to_fitres(msg.content, False)
                target = results if fitres.status.code == Code.OK else failures
                target.append((proxies[msg.metadata.src_node_id], fitres))
            else:
                failures.append(Exception(msg.error))
        missing = len(instructions) - len(replies)
        failures.extend(TimeoutError(f"no reply within {self.timeout:.0f} s") for _ in range(missing))
        parameters_aggregated, metrics = context.strategy.aggregate_fit(current_round, results, failures)
        if parameters_aggregated:
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                parameters_aggregated, True
            )
            context.history.add_metrics_distributed_fit(server_round=current_round, metrics=metrics)


# --------------------------------------------------------------------------------------------- store side
def plain_allowed(context: Context, cfg: AggregationConfig | None = None) -> bool:
    """Whether this store may send an unmasked update (see the module docstring)."""
    if "store-dir" in context.node_config:  # a deployed store decides for itself
        return context.node_config.get("allow-plain-aggregation") in (True, "true")
    if cfg is not None:
        return cfg.insecure_plain
    return context.run_config.get("insecure-plain-aggregation") in (True, "true")


_warned_plain: list[bool] = []


def make_aggregation_mod(cfg: AggregationConfig | None = None) -> Mod:
    """The store's aggregation mod; ``cfg`` is the run's parsed config where the run config is not passed."""

    def aggregation_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        """SecAgg+ for every training message that carries its protocol; plain only where allowed."""
        if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS in msg.content.config_records:
            return secaggplus_mod(msg, ctx, call_next)  # non-train messages pass through it untouched
        if not plain_allowed(ctx, cfg):
            raise PermissionError(
                "this store sends updates only through secure aggregation; the operator asked for a plain "
                "update (a deployed store permits it only with allow-plain-aggregation = true in its node "
                "config)"
            )
        if not _warned_plain:
            _warned_plain.append(True)
            logger.warning(PLAIN_WARNING)  # once per store process, not once per round
        return call_next(msg, ctx)

    return aggregation_mod


aggregation_mod = make_aggregation_mod()


def client_mods(cfg: AggregationConfig | None = None) -> list[Mod]:
    """The store's mod chain, outermost first: one mod that applies SecAgg+ (or the plain-mode policy).

    Mods that must see a store's plaintext update go after it (they are inside ``call_next``).
    """
    return [make_aggregation_mod(cfg)]
