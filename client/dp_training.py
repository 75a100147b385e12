"""Customer-level DP-SGD on a store's data (Abadi et al., CCS 2016), built from Opacus's parts.

One record = one customer's whole (truncated) history, so clipping bounds what any one customer can change.
Batches are Poisson-sampled with rate ``q`` for exactly ``steps`` steps, the plan the ledger records; we
assemble the Opacus pieces (grad-sample module, DP optimizer, Poisson sampler) ourselves instead of calling
``make_private`` so that the sample rate and step count are exactly what is accounted, not derived from a
loader's length.

Default grad-sample mode is ``ghost`` (ghost clipping): per-record norms without per-sample gradients of the
embedding and output tables, which is what keeps DP affordable on large catalogs.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader

from shared.data.sequences import TrainSequenceDataset, trim_padding
from shared.errors import ConfigError
from shared.models.base import SequentialRecommender
from shared.privacy.dp_sgd import GRAD_SAMPLE_MODES, dp_loss_backward, wrap_private


@dataclass(frozen=True)
class DPTrainConfig:
    """Local DP-SGD settings of one round.

    Parameters
    ----------
    epochs : float
        Local epochs per round; steps = ceil(epochs / q) with q = expected_batch_size / records.
    expected_batch_size : int
        Mean Poisson batch size (default 256).
    max_grad_norm : float
        Per-customer clipping bound C (default 1.0); the Gaussian noise has std ``noise_multiplier * C``.
    grad_sample_mode : str
        ``bk`` (default: book-keeping output layer + ghost-clipped encoder), ``ghost`` (Opacus ghost
        clipping throughout) or ``hooks`` (reference; materialises per-sample gradients).
    loss_window : int or None
        Only each customer's most recent ``loss_window`` positions carry a loss (default 10; median history
        on amazon-beauty is 6). The full-catalog output layer is the dominant cost and a Poisson batch is as
        wide as its longest history, so this bounds the step cost; ``None`` uses every position.
    """

    epochs: float = 1.0
    expected_batch_size: int = 256
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "bk"
    label_smoothing: float = 0.0
    loss_window: int | None = 10

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"dp.epochs={self.epochs!r} must be > 0")
        if self.expected_batch_size < 1:
            raise ConfigError(f"dp.expected-batch-size={self.expected_batch_size!r} must be >= 1")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"dp.max-grad-norm={self.max_grad_norm!r} must be > 0")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"dp.grad-sample-mode={self.grad_sample_mode!r}; choose one of {GRAD_SAMPLE_MODES}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StepPlan:
    """What one round of local training will do; exactly what the ledger records."""

    sample_rate: float
    steps: int


def plan_steps(n_records: int, cfg: DPTrainConfig) -> StepPlan:
    """Poisson rate ``q = min(1, B / n)`` and ``ceil(epochs / q)`` steps for ``n`` customer records."""
    if n_records < 1:
        raise ConfigError("no customer has a training target; nothing to train on")
    q = min(1.0, cfg.expected_batch_size / n_records)
    return StepPlan(sample_rate=q, steps=max(1, math.ceil(cfg.epochs / q)))


@dataclass
class PrivateRunResult:
    steps: int
    sample_rate: float
    noise_multiplier: float
    mean_loss: float
    seconds: float
    empty_batches: int


def _collate(
    batch: list[tuple[torch.Tensor, torch.Tensor]], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if not batch:  # Poisson sampling can draw nobody; the step still happens (pure noise)
        empty = torch.zeros(0, max_len, dtype=torch.long)
        return empty, empty.clone()
    inputs = torch.stack([b[0] for b in batch])
    targets = torch.stack([b[1] for b in batch])
    return trim_padding(inputs, targets)  # type: ignore[return-value]


def train_private(
    model: SequentialRecommender,
    data: TrainSequenceDataset,
    cfg: DPTrainConfig,
    noise_multiplier: float,
    plan: StepPlan | None = None,
    seed: int | None = None,
) -> PrivateRunResult:
    """Run ``plan.steps`` DP-SGD steps on ``model`` in place (its weights end up trained).

    ``seed`` fixes batch sampling and noise for reproducible simulations; ``None`` draws both from the OS,
    which is what a real store must use (seeded noise is predictable noise).
    """
    plan = plan or plan_steps(len(data), cfg)
    sample_gen = torch.Generator()
    noise_gen = torch.Generator()
    if seed is None:
        sample_gen.seed()
        noise_gen.seed()
    else:
        sample_gen.manual_seed(seed)
        noise_gen.manual_seed(seed + 1)
    expected = max(1, round(plan.sample_rate * len(data)))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    module, dp_opt = wrap_private(
        model,
        optimizer,
        grad_sample_mode=cfg.grad_sample_mode,
        noise_multiplier=noise_multiplier,
        max_grad_norm=cfg.max_grad_norm,
        expected_batch_size=expected,
        noise_generator=noise_gen,
    )
    sampler = UniformWithReplacementSampler(
        num_samples=len(data), sample_rate=plan.sample_rate, generator=sample_gen, steps=plan.steps
    )
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=lambda b: _collate(b, data.max_len))
    start = time.perf_counter()
    total, count, empty = 0.0, 0, 0
    module.train()
    try:
        for inputs, targets in loader:
            dp_opt.zero_grad(set_to_none=True)
            losses = dp_loss_backward(
                module,
                dp_opt,
                inputs,
                targets,
                cfg.grad_sample_mode,
                label_smoothing=cfg.label_smoothing,
                loss_window=cfg.loss_window,
            )
            dp_opt.step()
            if losses.numel():
                total += float(losses.detach().sum())
                count += losses.numel()
            else:
                empty += 1
    finally:
        module.cleanup()  # detach Opacus hooks and per-sample buffers: the caller gets a plain model back
    return PrivateRunResult(
        steps=plan.steps,
        sample_rate=plan.sample_rate,
        noise_multiplier=noise_multiplier,
        mean_loss=total / max(count, 1),
        seconds=time.perf_counter() - start,
        empty_batches=empty,
    )
