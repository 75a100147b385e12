"""Non-private training with early stopping on validation NDCG@10 (centralized runs and local fine-tuning).

Speed comes from three choices that change no result: one record per customer with a loss at every real
position (not one example per prefix), batches bucketed by length and trimmed to their longest history, and
output logits computed only at positions that have a target.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from shared.data.sequences import EvalSequenceDataset, TrainSequenceDataset, trim_padding
from shared.errors import ConfigError
from shared.evaluation import evaluate_model
from shared.models.base import SequentialRecommender, token_losses

SELECTION_METRIC = "ndcg@10"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``patience`` counts evaluations without a validation improvement.

    ``plateau_decay`` multiplies the learning rate after every epoch without improvement (1.0 = constant):
    a cheap schedule that needs no planned epoch count, which early stopping makes unknowable.
    """

    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    patience: int = 10
    max_seconds: float | None = None
    plateau_decay: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "patience"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)!r} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr!r} must be > 0")
        if not 0.0 < self.plateau_decay <= 1.0:
            raise ConfigError(f"train.plateau_decay={self.plateau_decay!r} must be in (0, 1]")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay={self.weight_decay!r} must be >= 0")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"train.max_seconds={self.max_seconds!r} must be > 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing={self.label_smoothing!r} must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_because: str = ""


def bucketed_batches(
    lengths: torch.Tensor, batch_size: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Shuffled batches of records with similar lengths, so trimming removes most padding.

    Records are shuffled, sorted by length within pools of 50 batches, cut into batches, and the batches
    shuffled again: every epoch sees a different random grouping.
    """
    order = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk].numpy(), kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    for index in rng.permutation(len(batches)):
        yield batches[index]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with decay on weight matrices and embeddings only (not biases or LayerNorm gains)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )


def train_epoch(
    model: SequentialRecommender,
    data: TrainSequenceDataset,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> float:
    """One pass over every customer; returns the mean token loss."""
    model.train()
    total, count = 0.0, 0
    for batch in bucketed_batches(data.lengths, cfg.batch_size, rng):
        inputs, targets = trim_padding(data.inputs[batch], data.targets[batch])
        losses, _ = token_losses(model, inputs, targets, cfg.label_smoothing)
        loss = losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(losses)
        count += len(losses)
    return total / max(count, 1)


def fit(
    model: SequentialRecommender,
    train: TrainSequenceDataset,
    valid: EvalSequenceDataset,
    cfg: TrainConfig,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train until validation NDCG@10 stops improving; the model ends holding its best-validation weights."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    best_state = copy.deepcopy(model.state_dict())
    result = FitResult(best_epoch=0, best_valid={SELECTION_METRIC: -1.0})
    start = time.perf_counter()
    stale = 0
    for epoch in range(1, cfg.epochs + 1):
        loss = train_epoch(model, train, optimizer, cfg, rng)
        valid_metrics = evaluate_model(model, valid)
        elapsed = time.perf_counter() - start
        row = {
            "epoch": epoch,
            "loss": loss,
            "seconds": elapsed,
            **{f"valid_{k}": v for k, v in valid_metrics.items()},
        }
        result.history.append(row)
        if valid_metrics[SELECTION_METRIC] > result.best_valid[SELECTION_METRIC]:
            result.best_epoch, result.best_valid, stale = epoch, valid_metrics, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            for group in optimizer.param_groups:
                group["lr"] *= cfg.plateau_decay
        if on_epoch:
            on_epoch(row)
        if stale >= cfg.patience:
            result.stopped_because = f"no validation improvement for {cfg.patience} epochs"
            break
        if cfg.max_seconds is not None and elapsed >= cfg.max_seconds:
            result.stopped_because = f"time budget of {cfg.max_seconds:.0f} s reached"
            break
    else:
        result.stopped_because = f"completed {cfg.epochs} epochs"
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result
