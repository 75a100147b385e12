"""Evaluate a recommender (or the popularity floor) on held-out next items, full ranking by default."""

from __future__ import annotations

import numpy as np
import torch

from shared.data.sequences import EvalSequenceDataset
from shared.metrics import exclude_seen, metrics_from_ranks, sample_negatives, sampled_ranks, target_ranks
from shared.models.base import SequentialRecommender


@torch.no_grad()
def model_ranks(
    model: SequentialRecommender, data: EvalSequenceDataset, batch_size: int = 512
) -> torch.Tensor:
    """Full-ranking 0-based rank of every case's target, seen items excluded."""
    was_training = model.training
    model.eval()
    ranks = []
    for start in range(0, len(data), batch_size):
        stop = min(start + batch_size, len(data))
        scores = model.score(data.histories[start:stop])  # [b, V]
        rows, items = data.seen_for(start, stop)
        exclude_seen(scores, rows, items)
        ranks.append(target_ranks(scores, data.targets[start:stop]))
    model.train(was_training)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def evaluate_model(
    model: SequentialRecommender, data: EvalSequenceDataset, ks: tuple[int, ...] = (10,)
) -> dict[str, float]:
    return metrics_from_ranks(model_ranks(model, data), ks)


def popularity_scores(train: tuple[np.ndarray, ...] | list[np.ndarray], n_items: int) -> torch.Tensor:
    """Training-interaction counts per item (padding included as column 0), the non-personalised floor."""
    counts = np.bincount(
        np.concatenate(train) if len(train) else np.zeros(0, np.int64), minlength=n_items + 1
    )
    return torch.from_numpy(counts[: n_items + 1].astype(np.float32))


def evaluate_popularity(
    counts: torch.Tensor, data: EvalSequenceDataset, ks: tuple[int, ...] = (10,), batch_size: int = 2048
) -> dict[str, float]:
    """Most popular unseen items for everyone, ranked exactly like a model's scores."""
    ranks = []
    for start in range(0, len(data), batch_size):
        stop = min(start + batch_size, len(data))
        scores = counts.unsqueeze(0).repeat(stop - start, 1)
        rows, items = data.seen_for(start, stop)
        exclude_seen(scores, rows, items)
        ranks.append(target_ranks(scores, data.targets[start:stop]))
    return metrics_from_ranks(torch.cat(ranks) if ranks else torch.zeros(0), ks)


@torch.no_grad()
def evaluate_sampled(
    model: SequentialRecommender,
    data: EvalSequenceDataset,
    n_negatives: int = 100,
    seed: int = 0,
    ks: tuple[int, ...] = (10,),
) -> dict[str, float]:
    """The older sampled protocol: the target against ``n_negatives`` uniformly drawn unseen items."""
    rng = np.random.default_rng(seed)
    seen = [
        np.append(data.seen_items[data.seen_offsets[i] : data.seen_offsets[i + 1]], int(data.targets[i]))
        for i in range(len(data))
    ]
    negatives = torch.from_numpy(sample_negatives(model.n_items, seen, n_negatives, rng))
    was_training = model.training
    model.eval()
    scores = torch.cat([model.score(data.histories[s : s + 512]) for s in range(0, len(data), 512)])
    model.train(was_training)
    return metrics_from_ranks(sampled_ranks(scores, data.targets, negatives), ks)
