"""Evaluation with real models whose scores are made known by setting the output layer by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from shared.data.prepare import prepare
from shared.data.sequences import EvalCase, EvalSequenceDataset
from shared.evaluation import (
    evaluate_model,
    evaluate_popularity,
    evaluate_sampled,
    model_ranks,
    popularity_scores,
)
from shared.models import ModelConfig, build_model
from shared.training import TrainConfig, fit
from simulations.synthetic import SyntheticConfig, generate

N_ITEMS = 20
FAVOURITE = 5


def _fixed_score_model(kind: str = "dnn"):
    """A real model whose scores ignore the history: zero output weights, bias favouring item 5.

    Bias order: 5 first, then 1, 2, 3, 4, 6, 7, ... (item i scores -i).
    """
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, dim=8, max_len=4, dropout=0.0, emb_dropout=0.0, n_heads=2, mlp_hidden=8)
    model = build_model(cfg, N_ITEMS)
    bias = -torch.arange(N_ITEMS + 1, dtype=torch.float32)
    bias[FAVOURITE] = 10.0
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.copy_(bias)
    return model


CASES = [
    EvalCase(history=np.array([1, 2]), target=FAVOURITE),  # has not seen 5, target 5 -> rank 0
    EvalCase(history=np.array([5, 3]), target=FAVOURITE),  # has seen 5: excluded, no credit -> last
    EvalCase(history=np.array([5]), target=1),  # 5 excluded, 1 is next best -> rank 0
    EvalCase(history=np.array([2]), target=4),  # 5, 1, (2 seen), 3, then 4 -> rank 3
    # 5 was seen before the max_len=4 window: still excluded (full history), no credit.
    EvalCase(history=np.array([5, 9, 8, 7, 6]), target=FAVOURITE),
]
EXPECTED_RANKS = [0, N_ITEMS, 0, 3, N_ITEMS]  # seen target: -inf, below every column of V = N_ITEMS + 1


@pytest.mark.parametrize("kind", ["dnn", "transformer"])
def test_model_ranks_with_known_scores(kind):
    # Prepare
    model = _fixed_score_model(kind)
    data = EvalSequenceDataset(CASES, max_len=4)

    # Execute
    ranks = model_ranks(model, data)

    # Assert
    assert ranks.tolist() == EXPECTED_RANKS


def test_model_ranks_do_not_depend_on_batch_boundaries():
    # seen_for rows are relative to each batch; a wrong offset would mis-exclude across batches.
    model = _fixed_score_model()
    data = EvalSequenceDataset(CASES, max_len=4)

    for batch_size in (1, 2, 3):
        assert model_ranks(model, data, batch_size=batch_size).tolist() == EXPECTED_RANKS


def test_evaluate_model_metrics_and_training_mode_restored():
    model = _fixed_score_model()
    model.train()
    data = EvalSequenceDataset(CASES, max_len=4)

    m = evaluate_model(model, data, ks=(1, 10))

    assert m["n"] == 5
    assert m["hr@1"] == pytest.approx(2 / 5)
    assert m["hr@10"] == pytest.approx(3 / 5)  # the customers who had seen 5 get nothing
    assert m["ndcg@10"] == pytest.approx((2 + 1 / math.log2(5)) / 5)
    assert model.training


def test_popularity_scores_counts_training_interactions():
    counts = popularity_scores([np.array([1, 2, 3]), np.array([1, 2]), np.array([1, 4]), np.array([6])], 6)

    assert counts.tolist() == [0, 3, 2, 1, 1, 0, 1]
    assert counts.dtype == torch.float32


def test_popularity_scores_empty_training():
    assert popularity_scores([], 3).tolist() == [0, 0, 0, 0]


def test_evaluate_popularity_hand_computed():
    # Prepare: counts 1:3, 2:2, 3:1, 4:1, 5:0, 6:1.
    counts = popularity_scores([np.array([1, 2, 3]), np.array([1, 2]), np.array([1, 4]), np.array([6])], 6)
    cases = [
        EvalCase(history=np.array([1]), target=2),  # 1 excluded -> 2 is top: rank 0
        EvalCase(history=np.array([2]), target=3),  # 1 (3) above; 4 and 6 tie with 3 (against) -> rank 3
        EvalCase(history=np.array([4]), target=1),  # 1 is top: rank 0
    ]
    data = EvalSequenceDataset(cases, max_len=3)

    # Execute (batch_size 2 crosses a batch boundary)
    m = evaluate_popularity(counts, data, ks=(1, 3, 4), batch_size=2)

    # Assert: ranks [0, 3, 0]
    assert m["n"] == 3
    assert m["hr@1"] == pytest.approx(2 / 3)
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["hr@4"] == pytest.approx(1.0)
    assert m["ndcg@4"] == pytest.approx((2 + 1 / math.log2(5)) / 3)
    assert m["mrr"] == pytest.approx((2 + 1 / 4) / 3)
    assert counts.tolist() == [0, 3, 2, 1, 1, 0, 1]  # the caller's counts are not masked in place


def test_evaluate_sampled_constant_model_gets_nothing():
    # Prepare: zero weights and zero bias -> every item scores the same.
    model = _fixed_score_model()
    with torch.no_grad():
        model.output.bias.zero_()
    data = EvalSequenceDataset(CASES, max_len=4)

    m = evaluate_sampled(model, data, n_negatives=10, seed=0)

    assert m["hr@10"] == 0.0
    assert m["mrr"] == pytest.approx(1 / 11)  # rank = number of negatives for everyone


def test_evaluate_sampled_restores_training_mode():
    model = _fixed_score_model()
    model.train()

    evaluate_sampled(model, EvalSequenceDataset(CASES, max_len=4), n_negatives=10)

    assert model.training


@pytest.fixture(scope="module")
def trained():
    """A dnn trained briefly on a tiny synthetic set, with its test data."""
    synth = generate(SyntheticConfig(n_items=200, n_customers=300, n_stores=2))
    frame = pd.concat(list(synth.stores.values()), ignore_index=True)
    data = prepare(frame, synth.catalog, max_len=20)
    torch.manual_seed(0)
    cfg = ModelConfig(kind="dnn", dim=16, max_len=20, dropout=0.1, emb_dropout=0.1, mlp_hidden=32)
    model = build_model(cfg, synth.catalog.n_items)
    fit(model, data.train, data.valid, TrainConfig(epochs=3, batch_size=32, lr=5e-3, patience=3))
    return model, data


def test_evaluate_sampled_is_easier_than_full_ranking(trained):
    model, data = trained

    full = evaluate_model(model, data.test)
    sampled = evaluate_sampled(model, data.test, n_negatives=100, seed=0)
    again = evaluate_sampled(model, data.test, n_negatives=100, seed=0)

    assert sampled["n"] == full["n"] == len(data.test)
    # A sampled rank can only be lower than the full rank: the negatives are a subset of the unseen items.
    assert sampled["hr@10"] > full["hr@10"]
    assert sampled["ndcg@10"] > full["ndcg@10"]
    assert sampled["mrr"] >= full["mrr"]
    assert again == sampled  # seeded
