"""The encoder-output cache changes speed, never answers: same lists, fresh state after an event or a swap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.serving.hidden_cache import HiddenCache
from client.serving.scoring import ScoreRequest, ServingModel, naive_recommend, score_batch
from tests.client.serving.test_scoring import N_ITEMS, random_requests, serving_model


@pytest.mark.parametrize("kind", ["dnn", "rnn", "transformer"])
def test_cached_lists_equal_the_models_own_ranking_on_every_repeat(kind):
    serving = serving_model(kind)
    requests = random_requests(N_ITEMS, 6, seed=1)
    first = score_batch(serving, requests)
    assert (serving.hidden_cache.hits, serving.hidden_cache.misses) == (0, 6)
    # The same customers again, alone and mixed with new ones: the repeats are served from the cache.
    again = score_batch(serving, requests[:3] + random_requests(N_ITEMS, 2, seed=2))
    assert serving.hidden_cache.hits == 3
    for request, result in zip(requests[:3], again[:3], strict=True):
        reference = naive_recommend(serving, request)
        assert result.items.tolist() == reference.items.tolist()
        np.testing.assert_allclose(result.scores, reference.scores, rtol=1e-4, atol=1e-5)
    for one, two in zip(first[:3], again[:3], strict=True):
        assert one.items.tolist() == two.items.tolist()


def test_a_new_event_is_a_new_window_and_never_hits_a_stale_entry():
    serving = serving_model("transformer")
    history = np.array([5, 9, 11, 40])
    before = score_batch(serving, [ScoreRequest(history, history, 10)])[0]
    after_event = np.append(history, 77)
    [after] = score_batch(serving, [ScoreRequest(after_event, after_event, 10)])
    assert serving.hidden_cache.hits == 0 and serving.hidden_cache.misses == 2
    reference = naive_recommend(serving, ScoreRequest(after_event, after_event, 10))
    assert after.items.tolist() == reference.items.tolist()
    assert after.items.tolist() != before.items.tolist()


def test_only_the_window_matters_items_older_than_it_share_an_entry():
    serving = serving_model("transformer")  # window 12
    tail = np.arange(1, 13)
    score_batch(serving, [ScoreRequest(np.concatenate([[100, 200], tail]), tail, 10)])
    score_batch(serving, [ScoreRequest(np.concatenate([[300], tail]), tail, 10)])
    assert serving.hidden_cache.hits == 1


def test_a_swapped_in_model_starts_with_an_empty_cache():
    old = serving_model("rnn")
    score_batch(old, random_requests(N_ITEMS, 4))
    new = ServingModel.build("v2", old.meta, old.model)
    assert len(old.hidden_cache) == 4 and len(new.hidden_cache) == 0


def test_capacity_is_a_bound_and_the_least_recently_used_entry_goes_first():
    cache = HiddenCache(capacity=2)
    calls: list[int] = []

    def encode(windows):
        calls.append(len(windows))
        return torch.stack([torch.full((3,), float(w.sum())) for w in windows])

    a, b, c = np.array([1]), np.array([2]), np.array([3])
    cache.lookup([a, b], encode)
    cache.lookup([a], encode)  # a is now the most recent
    cache.lookup([c], encode)  # evicts b
    assert len(cache) == 2
    out = cache.lookup([a, c, b, b], encode)  # b again: computed once for its two rows
    assert calls == [2, 1, 1]
    assert out[:, 0].tolist() == [1.0, 3.0, 2.0, 2.0]


def test_capacity_zero_keeps_nothing():
    cache = HiddenCache(capacity=0)
    encode = lambda ws: torch.zeros(len(ws), 2)  # noqa: E731
    cache.lookup([np.array([1])], encode)
    cache.lookup([np.array([1])], encode)
    assert len(cache) == 0 and cache.hits == 0 and cache.misses == 2
