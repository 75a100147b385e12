"""SecAgg+ on Flower 1.42's legacy path, isolated here, with the dropout fix and parameters derived per round.

Flower 1.42 ships SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead") only as ``flwr.server.workflow.SecAggPlusWorkflow`` (a ``LegacyContext`` workflow calling a legacy
strategy's ``configure_fit`` / ``aggregate_fit``) plus ``flwr.client.mod.secaggplus_mod`` on the store. Only
this file and ``server.aggregation`` import them; if SecAgg+ moves to the Message API, only they change.

What this adds to Flower's workflow:

* **Dropout fix.** In 1.42 a store that fails at the ``setup`` or ``share_keys`` stage stays in the sampled
  set and in its neighbours' lists. At ``unmask`` the operator then asks for shares of a secret that was never
  distributed and the whole round fails ("Not enough shares to recover secret"), and a neighbour that dropped
  at ``collect_masked_vectors`` would get a pairwise mask removed for a pair that never added one.
  ``RobustSecAggPlusWorkflow`` removes stores that failed at ``setup`` or ``share_keys`` from the round (the
  sampled set, every neighbour set, and the key tables) before checking the threshold; their updates were
  never masked into the sum, so nothing needs unmasking. Failures at ``collect_masked_vectors`` or ``unmask``
  are Flower's normal dropout path and stay untouched.
* **Parameters from the number of sampled stores** (``derive_params``): ``num_shares`` odd (an even value
  below the store count crashes 1.42 because stores are told one share count and get another number of
  neighbours), ``2 * ceil(log2 n) + 1`` neighbours capped at ``n`` (SecAgg+'s logarithmic neighbourhoods);
  reconstruction threshold ``num_shares // 2 + 1`` (an honest majority of each neighbourhood, so the operator
  never obtains both secrets of one store); the quantization range as fine as the 2^32 modulus allows for
  ``n`` summands.
* A finite ``timeout`` always (Flower's default waits forever).

What the operator still sees in plaintext: each store's weight (``num_examples``) and fit metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from logging import getLogger

from flwr.app import Context
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from shared.errors import AggregationError

__all__ = ["MODULUS_RANGE", "RobustSecAggPlusWorkflow", "SecAggParams", "derive_params"]

logger = getLogger(__name__)

MODULUS_RANGE = 2**32  # Flower's masks live in [0, 2^32); the sum of n quantized inputs must stay below it
_MAX_QUANTIZATION_BITS = 30  # the store's stochastic rounding casts to int32


@dataclass(frozen=True)
class SecAggParams:
    """SecAgg+ settings for one round with ``n`` sampled stores."""

    num_shares: int
    threshold: int
    quantization_range: int
    clipping_range: float
    max_weight: float
    timeout: float


def derive_params(n: int, *, clipping_range: float, max_weight: float, timeout: float) -> SecAggParams:
    """SecAgg+ parameters for ``n`` sampled stores (see the module docstring for the reasoning).

    Quantization step per store is ``2 * clipping_range / quantization_range`` on
    ``weight / max_weight * delta``; the range is the largest power of two with ``n * range <= 2^32`` (no
    wrap-around of the sum), at most 2^30.
    """
    if n < 2:
        raise AggregationError(f"secure aggregation needs at least 2 stores in a round, got {n}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise AggregationError(f"SecAgg+ needs a finite positive timeout, got {timeout!r}")
    # Every store is its own neighbour: shares = neighbourhood size. 2 * ceil(log2 n) + 1 is odd, so it is
    # either below n and odd, or capped at n (Flower accepts an even count only when it equals n).
    shares = min(n, 2 * math.ceil(math.log2(n)) + 1)
    threshold = shares // 2 + 1
    bits = min(_MAX_QUANTIZATION_BITS, math.floor(math.log2(MODULUS_RANGE / n)))
    return SecAggParams(
        num_shares=shares,
        threshold=threshold,
        quantization_range=2**bits,
        clipping_range=float(clipping_range),
        max_weight=float(max_weight),
        timeout=float(timeout),
    )


class RobustSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, re-parameterized for each round, surviving dropouts at every stage.

    ``params_for(n)`` gives the round's ``SecAggParams`` for ``n`` sampled stores; ``sample_size(available)``
    says how many stores the strategy will sample from ``available`` (so the parameters match the sample).
    """

    def __init__(self, params_for, sample_size) -> None:
        probe = params_for(3)
        super().__init__(
            num_shares=probe.num_shares,  # replaced in every round by the values for the actual sample
            reconstruction_threshold=probe.threshold,
            max_weight=probe.max_weight,
            clipping_range=probe.clipping_range,
            quantization_range=probe.quantization_range,
            modulus_range=MODULUS_RANGE,
            timeout=probe.timeout,
        )
        self._params_for = params_for
        self._sample_size = sample_size
        self._prune = False
        self.last_params: SecAggParams | None = None
        self.last_pruned: set[int] = set()

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but get {type(context).__name__}.")
        n = self._sample_size(context.client_manager.num_available())
        if n >= 2:
            p = self._params_for(n)
            # Flower rejects an integer share count <= 2; the fraction 1.0 means "every sampled store".
            self.num_shares = p.num_shares if p.num_shares > 2 else 1.0
            self.reconstruction_threshold = p.threshold
            self.max_weight = p.max_weight
            self.clipping_range = p.clipping_range
            self.quantization_range = p.quantization_range
            self.timeout = p.timeout
            self._check_init_params()
            self.last_params = p
        self.last_pruned = set()
        super().__call__(grid, context)

    # The two stages after which a missing store is pruned instead of treated as a masked dropout.
    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        self._prune = True
        try:
            return super().setup_stage(grid, context, state)
        finally:
            self._prune = False

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        self._prune = True
        try:
            return super().share_keys_stage(grid, context, state)
        finally:
            self._prune = False

    def _check_threshold(self, state: WorkflowState) -> bool:
        if self._prune:
            self.last_pruned |= prune_dropped(state)
        return super()._check_threshold(state)


def prune_dropped(state: WorkflowState) -> set[int]:
    """Remove stores that stopped before ``collect_masked_vectors`` from every SecAgg+ table; returns them.

    Such a store either sent no public keys (``setup``) or distributed no key shares (``share_keys``): no
    surviving store added a pairwise mask with it, so it must not appear among the dropped stores whose masks
    the operator reconstructs at ``unmask``.
    """
    dropped = set(state.sampled_node_ids) - set(state.active_node_ids)
    if not dropped:
        return dropped
    state.sampled_node_ids.difference_update(dropped)
    for nid in dropped:
        state.nid_to_neighbours.pop(nid, None)
        state.nid_to_publickeys.pop(nid, None)
    for neighbours in state.nid_to_neighbours.values():
        neighbours.difference_update(dropped)
    logger.warning(
        "secure aggregation: %d store(s) dropped before masking; continuing without them", len(dropped)
    )
    return dropped
