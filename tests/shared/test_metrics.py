"""Ranking metrics on hand-computed tiny cases, plus the invariants every metric set must satisfy."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.metrics import (
    PAD,
    exclude_seen,
    metrics_from_ranks,
    sample_negatives,
    sampled_ranks,
    target_ranks,
)

# ------------------------------------------------------------------------------------------ target_ranks


def test_target_ranks_counts_higher_scores_and_ties_against_the_target():
    # Prepare: item 1 and item 3 tie at 0.5; item 2 scores 0.3.
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5], [0.1, 0.5, 0.3, 0.5], [0.9, 0.2, 0.8, 0.7]])
    targets = torch.tensor([2, 1, 1])

    # Execute
    ranks = target_ranks(scores, targets)

    # Assert: 0.3 is beaten by two 0.5s; a 0.5 target ties with the other 0.5 and the tie counts against it.
    assert ranks.tolist() == [2, 1, 3]
    assert ranks.dtype == torch.int64


def test_target_ranks_constant_scores_put_every_target_last():
    # Prepare: an untrained model that scores everything equally (V = 6 columns).
    scores = torch.zeros(3, 6)
    targets = torch.tensor([1, 3, 5])

    # Execute
    ranks = target_ranks(scores, targets)

    # Assert: pessimistic ties -> rank V-1, never a perfect 0.
    assert ranks.tolist() == [5, 5, 5]


def test_target_ranks_excluded_target_lands_last():
    # Prepare: the target was seen (excluded to -inf) although it has the best raw score.
    scores = torch.tensor([[0.0, 9.0, 1.0, 2.0, 3.0]])
    exclude_seen(scores, torch.tensor([0]), torch.tensor([1]))

    # Execute
    rank = target_ranks(scores, torch.tensor([1]))

    # Assert: below every item, padding column included (which is -inf too, and ties count against).
    assert rank.tolist() == [4]


def test_target_ranks_nan_target_counts_as_a_miss():
    scores = torch.full((2, 5), float("nan"))

    ranks = target_ranks(scores, torch.tensor([1, 2]))

    assert ranks.tolist() == [4, 4]


def test_sampled_ranks_nan_target_counts_as_a_miss():
    scores = torch.full((1, 5), float("nan"))

    ranks = sampled_ranks(scores, torch.tensor([1]), torch.tensor([[2, 3, 4]]))

    assert ranks.tolist() == [3]


# ------------------------------------------------------------------------------------------ exclude_seen


def test_exclude_seen_masks_padding_and_seen_pairs_in_place():
    # Prepare
    scores = torch.arange(10, dtype=torch.float32).reshape(2, 5)
    rows, items = torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4])

    # Execute
    out = exclude_seen(scores, rows, items)

    # Assert
    inf = float("-inf")
    expected = torch.tensor([[inf, 1.0, inf, 3.0, 4.0], [inf, 6.0, 7.0, inf, inf]])
    assert out is scores
    assert torch.equal(scores, expected)


def test_exclude_seen_with_nothing_seen_masks_only_padding():
    scores = torch.ones(2, 4)

    exclude_seen(scores, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))

    assert torch.isneginf(scores[:, PAD]).all()
    assert torch.equal(scores[:, 1:], torch.ones(2, 3))


# ------------------------------------------------------------------------------------- metrics_from_ranks

RANKS = [0, 1, 9, 10, 50]


@pytest.mark.parametrize("as_type", [list, np.array, torch.tensor])
def test_metrics_from_ranks_hand_computed(as_type):
    # Execute
    m = metrics_from_ranks(as_type(RANKS), ks=(10,))

    # Assert: 3 of 5 targets (ranks 0, 1, 9) are inside the top 10.
    hr = 3 / 5
    precision, recall = hr / 10, hr
    assert m["n"] == 5
    assert m["hr@10"] == pytest.approx(hr)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 5)
    assert m["precision@10"] == pytest.approx(precision)
    assert m["recall@10"] == pytest.approx(recall)
    assert m["f1@10"] == pytest.approx(2 * precision * recall / (precision + recall))
    # Untruncated MRR counts the misses too.
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 51) / 5)


def test_metrics_from_ranks_several_cutoffs():
    m = metrics_from_ranks(RANKS, ks=(1, 2, 11))

    assert m["hr@1"] == pytest.approx(1 / 5)
    assert m["hr@2"] == pytest.approx(2 / 5)
    assert m["hr@11"] == pytest.approx(4 / 5)
    assert m["ndcg@1"] == pytest.approx(1 / 5)
    assert m["mrr@2"] == pytest.approx((1 + 1 / 2) / 5)


def test_metrics_from_ranks_all_misses_give_zero_not_nan():
    m = metrics_from_ranks([10, 20], ks=(10,))

    assert m["hr@10"] == 0.0
    assert m["ndcg@10"] == 0.0
    assert m["f1@10"] == 0.0


def test_metrics_from_ranks_empty_input_reports_only_the_count():
    assert metrics_from_ranks([], ks=(10,)) == {"n": 0}
    assert metrics_from_ranks(torch.zeros(0, dtype=torch.long)) == {"n": 0}


@settings(max_examples=200, deadline=None)
@given(
    ranks=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=40),
    ks=st.lists(st.integers(min_value=1, max_value=320), min_size=1, max_size=5, unique=True),
)
def test_metrics_from_ranks_invariants(ranks, ks):
    ks = tuple(sorted(ks))

    m = metrics_from_ranks(ranks, ks=ks)

    eps = 1e-12
    for k in ks:
        assert m[f"ndcg@{k}"] <= m[f"hr@{k}"] + eps
        assert m[f"mrr@{k}"] <= m[f"ndcg@{k}"] + eps
        assert m[f"mrr@{k}"] <= m["mrr"] + eps
        for name in ("hr", "ndcg", "mrr", "precision", "recall", "f1"):
            assert 0.0 <= m[f"{name}@{k}"] <= 1.0
    for small, large in pairwise(ks):
        assert m[f"hr@{small}"] <= m[f"hr@{large}"]
        assert m[f"ndcg@{small}"] <= m[f"ndcg@{large}"] + eps
    assert m["hr@" + str(ks[-1])] == pytest.approx(sum(r < ks[-1] for r in ranks) / len(ranks))


# ------------------------------------------------------------------------------------- sample_negatives


def test_sample_negatives_avoids_seen_items_and_is_distinct():
    # Prepare: the target is part of ``seen`` (evaluate_sampled appends it).
    seen = [np.array([1, 2, 3, 7]), np.array([5]), np.array([], dtype=np.int64)]

    # Execute
    neg = sample_negatives(30, seen, n_negatives=20, rng=np.random.default_rng(0))

    # Assert
    assert neg.shape == (3, 20)
    assert neg.dtype == np.int64
    for row, s in zip(neg, seen, strict=True):
        assert len(set(row.tolist())) == 20
        assert not set(row.tolist()) & set(s.tolist())
        assert row.min() >= 1 and row.max() <= 30  # never padding, never past the catalog


def test_sample_negatives_exactly_enough_candidates_returns_the_complement():
    neg = sample_negatives(10, [np.array([2, 4, 6])], n_negatives=7, rng=np.random.default_rng(1))

    assert sorted(neg[0].tolist()) == [1, 3, 5, 7, 8, 9, 10]


def test_sample_negatives_is_seeded():
    seen = [np.array([1, 2]), np.array([3])]

    a = sample_negatives(100, seen, 10, np.random.default_rng(42))
    b = sample_negatives(100, seen, 10, np.random.default_rng(42))
    c = sample_negatives(100, seen, 10, np.random.default_rng(43))

    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_negatives_raises_when_too_few_candidates():
    with pytest.raises(ValueError, match="customer 1"):
        sample_negatives(
            10, [np.array([1]), np.array([1, 2, 3])], n_negatives=8, rng=np.random.default_rng(0)
        )


# ---------------------------------------------------------------------------------------- sampled_ranks


def test_sampled_ranks_hand_computed_with_ties_against_target():
    # Prepare: columns 0..5; target 3 scores 0.5.
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.5, 0.7], [0.0, 0.9, 0.1, 0.5, 0.5, 0.7]])
    targets = torch.tensor([3, 1])
    negatives = torch.tensor([[1, 2, 4], [2, 3, 5]])

    # Execute
    ranks = sampled_ranks(scores, targets, negatives)

    # Assert: row 0: 0.9 beats it, 0.5 ties (against), 0.1 does not -> 2; row 1: target 0.9 beats all -> 0.
    assert ranks.tolist() == [2, 0]


def test_sampled_ranks_constant_model_ranks_last():
    scores = torch.full((4, 50), 0.25)
    targets = torch.tensor([1, 2, 3, 4])
    negatives = torch.arange(10, 30).repeat(4, 1)

    ranks = sampled_ranks(scores, targets, negatives)

    assert ranks.tolist() == [20, 20, 20, 20]
    assert metrics_from_ranks(ranks)["hr@10"] == 0.0
