"""Batched scoring against the precomputed item matrix gives exactly the model's own ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.serving.scoring import ScoreRequest, ServingModel, left_padded, naive_recommend, score_batch
from shared.models import ModelConfig, build_model
from shared.serde import ModelMeta

N_ITEMS = 500


def serving_model(kind: str, n_items: int = N_ITEMS, coarse: str = "off") -> ServingModel:
    torch.manual_seed(3)
    config = ModelConfig(kind=kind, dim=16, max_len=12, n_layers=1, n_heads=2, mlp_hidden=32)
    model = build_model(config, n_items)
    with torch.no_grad():
        # Uneven item norms and biases, like a trained model's popular items, so the bound is exercised.
        model.output.weight.normal_(std=1.0).mul_(torch.rand(n_items + 1, 1) * 2)
        model.output.bias.normal_(std=2.0)
    meta = ModelMeta(model=model.config.to_dict(), n_items=n_items, catalog_hash="h")
    return ServingModel.build("v1", meta, model.eval(), coarse=coarse)


def random_requests(n_items: int, count: int, k: int = 10, seed: int = 0) -> list[ScoreRequest]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        history = rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(1, 30)), replace=False)
        out.append(ScoreRequest(history, np.unique(history), k=k))
    return out


def test_left_padding_trims_to_the_longest_history_in_the_window():
    batch = left_padded([np.array([1, 2, 3]), np.array([7]), np.arange(1, 30)], max_len=5)
    assert batch.tolist() == [[0, 0, 1, 2, 3], [0, 0, 0, 0, 7], [25, 26, 27, 28, 29]]
    assert left_padded([np.array([4])], max_len=5).tolist() == [[4]]


@pytest.mark.parametrize("kind", ["dnn", "rnn", "transformer"])
def test_batched_top_k_equals_the_models_own_full_ranking(kind):
    serving = serving_model(kind)
    rng = np.random.default_rng(0)
    requests = []
    for length in (1, 3, 12, 40):  # mixed lengths in one batch, one longer than the window
        history = rng.choice(np.arange(1, N_ITEMS + 1), size=length, replace=False)
        requests.append(ScoreRequest(history, np.unique(history), k=10))
    batched = score_batch(serving, requests)
    for request, result in zip(requests, batched, strict=True):
        reference = naive_recommend(serving, request)
        assert result.items.tolist() == reference.items.tolist()
        np.testing.assert_allclose(result.scores, reference.scores, rtol=1e-4, atol=1e-5)
        assert not set(result.items.tolist()) & set(request.exclude.tolist())
        assert 0 not in result.items


def test_k_beyond_the_candidates_left_returns_only_real_items():
    serving = serving_model("dnn")
    exclude = np.arange(1, N_ITEMS - 2)  # only 3 items left
    [result] = score_batch(serving, [ScoreRequest(np.array([1]), exclude, k=50)])
    assert sorted(result.items.tolist()) == [N_ITEMS - 2, N_ITEMS - 1, N_ITEMS]
    assert np.isfinite(result.scores).all()


def test_each_request_gets_its_own_k():
    serving = serving_model("transformer")
    results = score_batch(
        serving,
        [ScoreRequest(np.array([5]), np.array([5]), 3), ScoreRequest(np.array([9]), np.array([9]), 7)],
    )
    assert [len(r.items) for r in results] == [3, 7]


def test_two_stage_bf16_scoring_returns_the_exact_float32_top_k():
    n_items = 6000
    serving = serving_model("dnn", n_items, coarse="bf16")
    assert serving.coarse_weight is not None and serving.coarse_weight.dtype == torch.bfloat16
    requests = random_requests(n_items, 32, k=10) + random_requests(n_items, 4, k=200, seed=1)
    results = score_batch(serving, requests)
    for request, result in zip(requests, results, strict=True):
        reference = naive_recommend(serving, request)
        assert result.items.tolist() == reference.items.tolist()
        np.testing.assert_allclose(result.scores, reference.scores, rtol=1e-4, atol=1e-4)
    assert sum(r.exact_fallback for r in results) < len(results) // 4  # the certificate usually holds


def test_without_a_certificate_the_full_float32_pass_decides(monkeypatch):
    n_items = 6000
    base = serving_model("dnn", n_items, coarse="bf16")
    output = base.model.output
    with torch.no_grad():  # many items scoring within bf16 error of each other: no certificate possible
        output.weight[1:3001] = output.weight[1] + 1e-4 * torch.randn(3000, output.weight.shape[1])
        output.bias[1:3001] = 5.0
        output.bias[3001:] = -50.0  # the top-k is certainly among the clones
    serving = ServingModel.build("v1", base.meta, base.model, coarse="bf16")
    monkeypatch.setattr("client.serving.scoring.MARGIN", 0)
    requests = random_requests(n_items, 6, k=10)
    results = score_batch(serving, requests)
    assert all(r.exact_fallback for r in results)
    for request, result in zip(requests, results, strict=True):
        assert result.items.tolist() == naive_recommend(serving, request).items.tolist()


def test_auto_keeps_float32_for_small_catalogs():
    assert serving_model("dnn", 500, coarse="auto").coarse_weight is None
