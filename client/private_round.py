"""One round of local private training at a store: budget veto, DP-SGD, ledger entry, then the update.

Order matters for the privacy promise:
1. compute the round's event (noise fixed for the whole plan, this round's sample rate and steps) and the
   epsilon it would lead to, from the ledger's events; decline with a clear reason if it exceeds the budget;
2. train with DP-SGD;
3. append the event to the ledger (atomic, fsynced) -- only then may the caller send the update.
A crash between 3 and sending loses an update, never a ledger entry; a crash before 3 sends nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from client.dp_training import DPTrainConfig, PrivateRunResult, StepPlan, plan_steps, train_private
from client.ledger import PrivacyLedger
from shared.data.sequences import TrainSequenceDataset
from shared.errors import BudgetExhaustedError, ConfigError
from shared.models.base import SequentialRecommender
from shared.privacy.accounting import PrivacyBudget, PrivacyEvent, calibrate_noise


@dataclass(frozen=True)
class PrivacyPlan:
    """The store's stated budget and the training it plans to spend it on.

    ``rounds`` x ``dp.epochs`` local epochs in total; noise is calibrated once so that the whole plan fits
    ``budget`` (calibration rounds toward more privacy).
    """

    budget: PrivacyBudget
    rounds: int
    dp: DPTrainConfig

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"privacy.rounds={self.rounds!r} must be >= 1")


@dataclass(frozen=True)
class RoundOutcome:
    """``trained`` with the recorded event, or ``declined`` with the reason the operator will see."""

    status: str
    epsilon: float
    reason: str = ""
    event: PrivacyEvent | None = None
    result: PrivateRunResult | None = None


def plan_noise(plan: PrivacyPlan, steps: StepPlan) -> float:
    """Noise multiplier for the whole plan: ``rounds * steps`` steps at rate ``q`` within the budget.

    Computed from the plan alone (no prior events), so every round of an unchanged plan gets the same sigma
    and the plan lands at the budget; the ledger still vetoes any round that would pass it.
    """
    return calibrate_noise(plan.budget, steps.sample_rate, plan.rounds * steps.steps)


def run_private_round(
    model: SequentialRecommender,
    data: TrainSequenceDataset,
    ledger: PrivacyLedger,
    plan: PrivacyPlan,
    round_id: int,
    seed: int | None = None,
) -> RoundOutcome:
    """Train ``model`` in place for one round if the budget allows it; the ledger entry precedes any send."""
    steps = plan_steps(len(data), plan.dp)
    sigma = plan_noise(plan, steps)
    event = PrivacyEvent(
        round_id=round_id,
        noise_multiplier=sigma,
        sample_rate=steps.sample_rate,
        steps=steps.steps,
        accountant=plan.budget.accountant,
        time=time.time(),
    )
    try:
        after = ledger.check(event)
    except BudgetExhaustedError as err:
        return RoundOutcome(status="declined", epsilon=ledger.epsilon(), reason=f"budget exhausted: {err}")
    result = train_private(model, data, plan.dp, sigma, plan=steps, seed=seed)
    ledger.append(event)  # durable before the caller may let the update leave the store
    return RoundOutcome(status="trained", epsilon=after, event=event, result=result)
