"""Pure privacy math: privacy events, budgets, epsilon recomputed from events, noise calibration.

Every store trains with DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy"): Poisson
sampling with rate ``q``, per-record clipping, Gaussian noise of standard deviation ``sigma * C``. One
record is one customer's whole history, so every guarantee here is per **customer of one store**.

Epsilon is never summed by hand: it is recomputed from the full list of events by an Opacus accountant,
either RDP (Mironov 2017, "Renyi Differential Privacy"; subsampled Gaussian per Mironov, Talwar & Zhang
2019) or PRV (Gopi, Lee & Wutschitz 2021, "Numerical Composition of Differential Privacy"). The caller keeps
the events (see ``client.ledger``); this module holds no state and touches no files.

Opacus (and through it torch) is imported lazily: tools that only read a ledger should not pay ~2 s of
import time for it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import numpy as np

from shared.errors import BudgetExhaustedError, ConfigError

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_UNIT",
    "MECHANISM",
    "PrivacyBudget",
    "PrivacyEvent",
    "calibrate_noise",
    "check_budget",
    "epsilon_after",
    "epsilon_from_events",
]

logger = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "prv")
DEFAULT_UNIT = "customer"
MECHANISM = "subsampled-gaussian"

# Above this RDP epsilon the PRV discretisation grows with epsilon and takes seconds to minutes (sigma 0.05,
# q 0.01, 100 steps: 175 s, then inf). Such values are far beyond any budget, so the RDP bound, which is also
# a valid upper bound, is reported instead.
_PRV_MAX_EPSILON = 64.0
# Noise multipliers searched by calibration: below _MIN_SIGMA the budget is absurdly generous; above
# _MAX_SIGMA training would be pure noise (and Opacus's RDP series gets slow), so the budget is spent.
_MIN_SIGMA = 1e-3
_MAX_SIGMA = 1e4

# (noise_multiplier, sample_rate, steps): the shape of an Opacus accountant's ``history``.
_History = list[tuple[float, float, int]]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class PrivacyEvent:
    """One federated round of local DP-SGD at one store: ``steps`` Poisson-subsampled Gaussian steps.

    Keyword-only, because three bare floats in a row are easy to swap.

    Parameters
    ----------
    round_id : int
        Federated round number (>= 0); strictly increasing within one ledger.
    noise_multiplier : float
        ``sigma``: noise standard deviation divided by the clipping norm (>= 0; 0 means no privacy).
    sample_rate : float
        ``q``: Poisson sampling probability of one record (customer) per step, in (0, 1].
    steps : int
        Number of noisy optimizer steps in the round (>= 0).
    accountant : str
        ``"rdp"`` or ``"prv"``; one ledger never mixes them.
    unit : str, default "customer"
        The privacy unit; epsilons of different units are never composed.
    time : float
        Unix seconds when the event was recorded.
    mechanism : str, default "subsampled-gaussian"
        The only mechanism Opacus's DP-SGD accountants know.
    """

    round_id: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    unit: str = DEFAULT_UNIT
    time: float
    mechanism: str = MECHANISM

    def __post_init__(self) -> None:
        if not isinstance(self.round_id, int) or isinstance(self.round_id, bool) or self.round_id < 0:
            raise ValueError(f"round_id must be an int >= 0, got {self.round_id!r}")
        if not _is_number(self.noise_multiplier) or not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0
        ):
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not _is_number(self.sample_rate) or not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {self.steps!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if not isinstance(self.unit, str) or not self.unit:
            raise ValueError(f"unit must be a non-empty string, got {self.unit!r}")
        if not _is_number(self.time) or not (math.isfinite(self.time) and self.time >= 0):
            raise ValueError(f"time must be finite unix seconds >= 0, got {self.time!r}")
        if self.mechanism != MECHANISM:
            raise ValueError(f"mechanism must be {MECHANISM!r}, got {self.mechanism!r}")
        # Store floats as floats so that equal events serialize to identical JSON (1 vs 1.0).
        for name in ("noise_multiplier", "sample_rate", "time"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every field (the ledger's canonical form)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyEvent:
        """Inverse of ``to_dict``; unknown or missing keys raise ``ValueError``."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown privacy event keys {sorted(unknown)}")
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = required - set(data)
        if missing:
            raise ValueError(f"missing privacy event keys {sorted(missing)}")
        return cls(**data)


@dataclass(frozen=True)
class PrivacyBudget:
    """A store's total budget ``(epsilon_max, delta)`` for one privacy unit, under one accountant.

    Parameters
    ----------
    epsilon_max : float
        Largest epsilon the store accepts over the whole plan (finite, > 0).
    delta : float
        Target delta in (0, 1); keep it well below 1 / (number of customers), e.g. 1e-5.
    accountant : str, default "rdp"
        ``"rdp"`` (Mironov 2017) or ``"prv"`` (Gopi et al. 2021); PRV is tighter, RDP cheaper.
    """

    epsilon_max: float
    delta: float
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if not _is_number(self.epsilon_max) or not (math.isfinite(self.epsilon_max) and self.epsilon_max > 0):
            raise ConfigError(f"epsilon_max must be a finite number > 0, got {self.epsilon_max!r}")
        if not _is_number(self.delta) or not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        object.__setattr__(self, "epsilon_max", float(self.epsilon_max))
        object.__setattr__(self, "delta", float(self.delta))


def _history(events: Iterable[PrivacyEvent], accountant: str, unit: str) -> _History:
    """Events -> an Opacus history, refusing mixed units/accountants and merging equal ``(sigma, q)``.

    Merging is exact: composition of k Gaussian steps does not depend on which round they came from, and
    Opacus itself merges consecutive equal steps. It makes the result independent of how the steps were split
    into rounds, and keeps PRV's heterogeneous composition small.
    """
    merged: dict[tuple[float, float], int] = {}
    for event in events:
        if not isinstance(event, PrivacyEvent):
            raise TypeError(f"expected PrivacyEvent, got {type(event).__name__}")
        if event.unit != unit:
            raise ValueError(
                f"round {event.round_id} has unit {event.unit!r}, expected {unit!r}: "
                "epsilons of different privacy units are never composed"
            )
        if event.accountant != accountant:
            raise ValueError(
                f"round {event.round_id} was accounted with {event.accountant!r}, expected {accountant!r}"
            )
        if event.steps == 0:
            continue  # no step, no release, no loss (and PRV divides by the step count)
        key = (event.noise_multiplier, event.sample_rate)
        merged[key] = merged.get(key, 0) + event.steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def _rdp_epsilon(history: _History, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta))


def _epsilon(history: _History, delta: float, accountant: str) -> float:
    """Epsilon of a validated history; the single place that calls Opacus."""
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf  # an un-noised release of a record: no finite epsilon
    if delta >= 1:
        return 0.0  # every mechanism is (0, 1)-DP
    if delta <= 0:
        return math.inf  # the Gaussian mechanism is not pure DP
    # Opacus's numerics emit overflow/divide warnings at q = 1 and at tiny sigma; the results stay valid.
    with np.errstate(all="ignore"):
        rdp = _rdp_epsilon(history, delta)
        if accountant == "rdp":
            return rdp
        if rdp > _PRV_MAX_EPSILON:
            return rdp
        from opacus.accountants import PRVAccountant

        prv = PRVAccountant()
        prv.history = list(history)
        try:
            value = float(prv.get_epsilon(delta))
        except (ArithmeticError, ValueError) as exc:
            # Both are valid upper bounds on epsilon; a failed discretisation must not stop accounting.
            logger.warning("PRV accountant failed (%s); reporting the RDP bound %.4f instead", exc, rdp)
            return rdp
        return value if math.isfinite(value) else rdp


def _check_delta(delta: float) -> None:
    if not _is_number(delta) or not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1], got {delta!r}")


def epsilon_from_events(
    events: Iterable[PrivacyEvent], delta: float, accountant: str, unit: str = DEFAULT_UNIT
) -> float:
    """Epsilon spent by ``events`` at ``delta``, recomputed from scratch by an Opacus accountant.

    Parameters
    ----------
    events : iterable of PrivacyEvent
        All rounds so far (any order; composition is commutative).
    delta : float
        Target delta in [0, 1]. ``0`` gives ``inf`` once any step was taken (the Gaussian mechanism is not
        pure DP); ``1`` gives ``0``.
    accountant : str
        ``"rdp"`` (Mironov 2017) or ``"prv"`` (Gopi, Lee & Wutschitz 2021; Opacus returns its upper bound,
        estimate + 0.01). Every event must have been recorded for this accountant.
    unit : str, default "customer"
        Every event must carry this unit; mixing units raises ``ValueError``.

    Returns
    -------
    float
        ``0.0`` for no events (or only zero-step events); ``math.inf`` if any step ran with
        ``noise_multiplier == 0``. For PRV, when the RDP bound exceeds 64 (where PRV's discretisation takes
        minutes) the RDP bound is returned: it is also a valid upper bound.
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    _check_delta(delta)
    return _epsilon(_history(events, accountant, unit), delta, accountant)


def epsilon_after(
    events: Sequence[PrivacyEvent], planned_event: PrivacyEvent, budget: PrivacyBudget
) -> float:
    """Epsilon the store would have spent after ``planned_event``, under ``budget``'s accountant and delta."""
    return epsilon_from_events(
        (*events, planned_event), budget.delta, budget.accountant, unit=planned_event.unit
    )


def _fmt_epsilon(value: float, limit: float) -> str:
    # Two decimals unless rounding would hide which side of the budget the value is on ("8.00 > 8.0").
    for digits in (2, 4, 6, 8):
        text = f"{value:.{digits}f}"
        if (float(text) > limit) == (value > limit):
            return text
    return repr(value)


def check_budget(events: Sequence[PrivacyEvent], planned_event: PrivacyEvent, budget: PrivacyBudget) -> None:
    """Raise ``BudgetExhaustedError`` if ``planned_event`` would push epsilon past ``budget.epsilon_max``.

    Call it before training a round, and again (the ledger does) before the update leaves the store.
    A round that lands exactly on the budget is accepted.
    """
    after = epsilon_after(events, planned_event, budget)
    if after <= budget.epsilon_max:
        return
    before = epsilon_from_events(events, budget.delta, budget.accountant, unit=planned_event.unit)
    raise BudgetExhaustedError(
        f"round {planned_event.round_id} would raise epsilon from "
        f"{_fmt_epsilon(before, budget.epsilon_max)} to {_fmt_epsilon(after, budget.epsilon_max)} > budget "
        f"{budget.epsilon_max} (delta {budget.delta}, {budget.accountant}, unit {planned_event.unit})"
    )


def calibrate_noise(
    budget: PrivacyBudget,
    sample_rate: float,
    planned_steps_total: int,
    prior_events: Sequence[PrivacyEvent] = (),
    *,
    unit: str = DEFAULT_UNIT,
    epsilon_tolerance: float = 0.01,
    sigma_rtol: float = 1e-4,
) -> float:
    """Smallest practical noise multiplier that keeps epsilon(prior + whole remaining plan) <= epsilon_max.

    Noise is fixed once for the whole plan (all remaining rounds), not per round: budgeting one round at a
    time would let the first rounds spend what later ones need. The result always errs toward more privacy:
    it is verified by recomputation and stepped up until it meets the budget.

    Parameters
    ----------
    budget : PrivacyBudget
        ``(epsilon_max, delta)`` and the accountant to calibrate under.
    sample_rate : float
        Poisson sampling rate ``q`` per step, in (0, 1] (Opacus: ``1 / len(data_loader)``).
    planned_steps_total : int
        DP-SGD steps in all remaining rounds together (>= 1).
    prior_events : sequence of PrivacyEvent, default ()
        Rounds already spent (the ledger's events); their loss is composed with the plan's.
    unit : str, default "customer"
        Privacy unit of the events.
    epsilon_tolerance : float, default 0.01
        The resulting epsilon is within this of ``epsilon_max`` (not wastefully noisy). Without prior events
        under RDP this is exactly Opacus's ``get_noise_multiplier``; otherwise a root search on top of the
        prior events (same tolerance).
    sigma_rtol : float, default 1e-4
        The root search also stops once sigma is known to this relative precision (where epsilon is flat in
        sigma, i.e. the remaining budget is tiny); the verification step-up uses the same factor.

    Raises
    ------
    BudgetExhaustedError
        If prior events alone already reach ``epsilon_max``, or no sigma up to 1e4 fits the plan.
    """
    if not _is_number(sample_rate) or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if (
        not isinstance(planned_steps_total, int)
        or isinstance(planned_steps_total, bool)
        or planned_steps_total < 1
    ):
        raise ValueError(f"planned_steps_total must be an int >= 1, got {planned_steps_total!r}")
    prior = _history(prior_events, budget.accountant, unit)
    target, delta, accountant = budget.epsilon_max, budget.delta, budget.accountant
    prior_epsilon = _epsilon(prior, delta, accountant)
    context = f"(delta {delta}, {accountant}, unit {unit})"
    if prior_epsilon >= target:
        raise BudgetExhaustedError(
            f"prior rounds already spent epsilon {prior_epsilon:.4f} >= budget {target} {context}; "
            "no further training is possible"
        )

    cache: dict[float, float] = {}

    def epsilon_for(sigma: float) -> float:
        if sigma not in cache:
            cache[sigma] = _epsilon(
                [*prior, (sigma, float(sample_rate), planned_steps_total)], delta, accountant
            )
        return cache[sigma]

    from opacus.accountants.utils import get_noise_multiplier

    exact = accountant == "rdp" and not prior
    try:
        # RDP without prior events is exactly Opacus's own calibration; otherwise it is only a first guess
        # (PRV needs a little less noise, prior events need more), so a coarse tolerance saves evaluations.
        with warnings.catch_warnings():
            # Its bisection probes tiny sigmas, where the best RDP order is the largest one; only the answer
            # matters, and that is recomputed below.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=target,
                    target_delta=delta,
                    sample_rate=float(sample_rate),
                    steps=planned_steps_total,
                    accountant="rdp",
                    epsilon_tolerance=epsilon_tolerance if exact else max(epsilon_tolerance, 0.05 * target),
                )
            )
    except ValueError as exc:  # "The privacy budget is too low." (sigma > 1e6)
        raise BudgetExhaustedError(
            f"no noise multiplier meets epsilon {target} over {planned_steps_total} steps at q={sample_rate} "
            f"{context}"
        ) from exc
    if not exact:
        sigma = _solve_sigma(epsilon_for, target, sigma, epsilon_tolerance, sigma_rtol, context)

    # Round toward more privacy: never return a sigma whose recomputed epsilon exceeds the target.
    for _ in range(1000):
        if epsilon_for(sigma) <= target:
            return sigma
        sigma *= 1 + sigma_rtol
    raise BudgetExhaustedError(f"could not verify a noise multiplier within budget {target} {context}")


def _solve_sigma(
    epsilon_for: Callable[[float], float],
    target: float,
    guess: float,
    epsilon_tolerance: float,
    sigma_rtol: float,
    context: str,
) -> float:
    """Smallest sigma (to tolerance) with ``epsilon_for(sigma) <= target``, assuming epsilon falls in sigma.

    Illinois regula falsi on ``log(epsilon / target)`` against ``log(sigma)``: epsilon is roughly
    ``c / sigma``, so the line is nearly straight and a few evaluations suffice (PRV costs 0.1-0.5 s each).
    The bracket grows from ``guess`` by small factors first, so PRV is never evaluated far below the answer,
    where it is slow. Stops when ``target - epsilon <= epsilon_tolerance`` or the bracket is ``sigma_rtol``
    tight; the returned end is always feasible.
    """

    def gap(sigma: float) -> float:
        return math.log(epsilon_for(sigma) / target) if epsilon_for(sigma) > 0 else -math.inf

    def done(low: float, high: float) -> bool:
        return target - epsilon_for(high) <= epsilon_tolerance or high - low <= sigma_rtol * high

    factor = 1.25
    if gap(guess) <= 0:
        high, low = guess, guess / factor
        while gap(low) <= 0:
            factor *= factor
            high, low = low, low / factor
            if low < _MIN_SIGMA:
                return high
    else:
        low, high = guess, guess * factor
        while gap(high) > 0:
            factor *= factor
            low, high = high, min(high * factor, 2 * _MAX_SIGMA)
            if high > _MAX_SIGMA:
                raise BudgetExhaustedError(
                    f"even noise multiplier {_MAX_SIGMA:g} would exceed budget {target} {context}; "
                    "the remaining budget cannot cover the plan"
                )
    x_low, x_high = math.log(low), math.log(high)
    g_low, g_high = gap(low), gap(high)
    side = 0
    while not done(low, high):
        if math.isfinite(g_high) and g_low != g_high:
            x = x_high - g_high * (x_high - x_low) / (g_high - g_low)
        else:
            x = (x_low + x_high) / 2
        # Stay strictly inside the bracket so that it always shrinks.
        margin = 0.02 * (x_high - x_low)
        x = min(max(x, x_low + margin), x_high - margin)
        g = gap(math.exp(x))
        if g <= 0:
            x_high, g_high, high = x, g, math.exp(x)
            if side == -1:
                g_low /= 2  # Illinois: damp the end that keeps being retained
            side = -1
        else:
            x_low, g_low, low = x, g, math.exp(x)
            if side == 1:
                g_high /= 2
            side = 1
    return high
