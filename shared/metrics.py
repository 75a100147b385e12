"""Ranking metrics for next-item prediction with one held-out item per customer.

Primary protocol: **full ranking** over the whole catalog, the customer's already-seen items excluded.
The sampled protocol (target vs 100 random unseen items) exists only to compare with older papers; its
numbers run 5-15x higher and are never mixed with full-ranking ones.

With exactly one relevant item per customer, precision@K = HR@K / K and recall@K = HR@K; they are still
reported because store managers ask for them by those names.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

PAD = 0


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among its row's scores; ties count against the target.

    Pessimistic ties keep a constant (untrained) model from scoring perfectly, and a target that was
    excluded (score ``-inf``) lands below every item. ``scores [B, V]``, ``targets [B]`` -> ``[B]`` int64.
    """
    target_scores = scores.gather(1, targets.unsqueeze(1))  # [B, 1]
    ranks = (scores >= target_scores).sum(dim=1) - 1
    # A NaN target compares False with everything (rank -1 would read as a perfect hit): rank it last.
    return torch.where(target_scores.squeeze(1).isnan(), scores.shape[1] - 1, ranks)


def exclude_seen(scores: torch.Tensor, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Set already-seen ``(row, item)`` pairs and the padding column to ``-inf`` in place."""
    scores[:, PAD] = float("-inf")
    if len(rows):
        scores[rows, items] = float("-inf")
    return scores


def metrics_from_ranks(ranks: Iterable[int] | np.ndarray | torch.Tensor, ks: tuple[int, ...] = (10,)) -> dict:
    """HR, NDCG, MRR, precision, recall and F1 at each K from 0-based target ranks (one target each)."""
    r = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else list(ranks), dtype=np.float64)
    out: dict[str, float] = {"n": int(r.size)}
    if r.size == 0:
        return out
    for k in ks:
        hit = r < k
        hr = float(hit.mean())
        out[f"hr@{k}"] = hr
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0).mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (r + 1.0), 0.0).mean())
        precision, recall = hr / k, hr
        out[f"precision@{k}"] = precision
        out[f"recall@{k}"] = recall
        out[f"f1@{k}"] = 2 * precision * recall / (precision + recall) if hr > 0 else 0.0
    out["mrr"] = float((1.0 / (r + 1.0)).mean())
    return out


def sample_negatives(
    n_items: int, seen_rows: list[np.ndarray], n_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """For each customer, ``n_negatives`` distinct items drawn uniformly from items they never touched.

    Needs ``n_items - len(seen) >= n_negatives``; the target is part of ``seen`` so it is never drawn.
    """
    out = np.empty((len(seen_rows), n_negatives), dtype=np.int64)
    for i, seen in enumerate(seen_rows):
        forbidden = set(seen.tolist())
        if n_items - len(forbidden) < n_negatives:
            raise ValueError(f"customer {i} has seen too many items to draw {n_negatives} negatives")
        picked: list[int] = []
        while len(picked) < n_negatives:
            for c in rng.integers(1, n_items + 1, size=2 * n_negatives).tolist():
                if c not in forbidden:
                    forbidden.add(c)
                    picked.append(c)
                    if len(picked) == n_negatives:
                        break
        out[i] = picked
    return out


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """0-based rank of the target among itself and its sampled negatives (older papers' protocol).

    Ties go against the target (a constant model must not score perfectly: pmixer/SASRec issue #43).
    """
    target_scores = scores.gather(1, targets.unsqueeze(1))  # [B, 1]
    neg_scores = scores.gather(1, negatives)  # [B, N]
    ranks = (neg_scores >= target_scores).sum(dim=1)
    return torch.where(target_scores.squeeze(1).isnan(), negatives.shape[1], ranks)
