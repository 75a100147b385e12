"""The training loop on a tiny synthetic set: history, best-weight selection, stopping rules, batching."""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
import torch

from shared import training
from shared.data.prepare import PreparedData, prepare
from shared.errors import ConfigError
from shared.evaluation import evaluate_model
from shared.models import MODEL_REGISTRY, ModelConfig, build_model
from shared.training import SELECTION_METRIC, TrainConfig, bucketed_batches, fit
from simulations.synthetic import SyntheticConfig, generate

MAX_LEN = 20


@pytest.fixture(scope="module")
def data() -> PreparedData:
    synth = generate(SyntheticConfig(n_items=200, n_customers=300, n_stores=2))
    frame = pd.concat(list(synth.stores.values()), ignore_index=True)
    return prepare(frame, synth.catalog, max_len=MAX_LEN)


def _model(kind: str, n_items: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        kind=kind, dim=16, max_len=MAX_LEN, dropout=0.1, emb_dropout=0.1, n_layers=1, n_heads=2, mlp_hidden=32
    )
    return build_model(cfg, n_items)


# ------------------------------------------------------------------------------------------------------ fit


@pytest.mark.parametrize("kind", sorted(MODEL_REGISTRY))
def test_fit_records_validation_each_epoch_and_keeps_best(kind, data):
    # Prepare
    model = _model(kind, data.catalog.n_items)
    seen_rows: list[dict] = []

    # Execute
    result = fit(
        model,
        data.train,
        data.valid,
        TrainConfig(epochs=3, batch_size=32, lr=5e-3),
        on_epoch=seen_rows.append,
    )

    # Assert: one row per epoch with the validation metrics, reported to the callback too.
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert seen_rows == result.history
    for row in result.history:
        assert np.isfinite(row["loss"]) and row["loss"] > 0
        assert row["valid_n"] == len(data.valid)
        assert 0.0 <= row[f"valid_{SELECTION_METRIC}"] <= row["valid_hr@10"] <= 1.0
    seconds = [row["seconds"] for row in result.history]
    assert seconds == sorted(seconds)
    assert result.history[-1]["loss"] < result.history[0]["loss"]  # it actually learns
    assert result.stopped_because == "completed 3 epochs"
    # Best epoch = first maximum of validation NDCG@10, and the model holds that epoch's weights.
    ndcgs = [row[f"valid_{SELECTION_METRIC}"] for row in result.history]
    assert result.best_epoch == int(np.argmax(ndcgs)) + 1
    assert result.best_valid[SELECTION_METRIC] == max(ndcgs)
    assert evaluate_model(model, data.valid) == result.best_valid


def test_fit_early_stops_and_restores_the_best_weights(data):
    # Prepare: a learning rate so large that validation NDCG soon stops improving.
    model = _model("dnn", data.catalog.n_items)
    cfg = TrainConfig(epochs=15, batch_size=32, lr=1.0, patience=1)

    # Execute
    result = fit(model, data.train, data.valid, cfg)

    # Assert: stopped on the first epoch without improvement, so the last epoch is not the best one...
    assert result.stopped_because == "no validation improvement for 1 epochs"
    assert len(result.history) == result.best_epoch + 1 < cfg.epochs
    last = result.history[-1][f"valid_{SELECTION_METRIC}"]
    assert last < result.best_valid[SELECTION_METRIC]
    # ...and the returned model is the best epoch's, not the last epoch's.
    assert evaluate_model(model, data.valid) == result.best_valid


def test_fit_tiny_learning_rate_stops_after_patience(data):
    # Prepare: lr so small that no weight moves in float32, so validation never improves after epoch 1.
    model = _model("dnn", data.catalog.n_items)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # Execute
    result = fit(model, data.train, data.valid, TrainConfig(epochs=10, batch_size=64, lr=1e-30, patience=2))

    # Assert
    assert len(result.history) == 3
    assert result.best_epoch == 1
    assert result.stopped_because == "no validation improvement for 2 epochs"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=1e-6, rtol=0)


def test_plateau_decay_lowers_the_learning_rate_after_each_epoch_without_improvement(data, monkeypatch):
    # Prepare: record the learning rate each epoch starts with; lr 1e-30 never improves after epoch 1.
    seen: list[float] = []
    real_train_epoch = training.train_epoch

    def spy(model, data_, optimizer, cfg, rng):
        seen.append(optimizer.param_groups[0]["lr"])
        return real_train_epoch(model, data_, optimizer, cfg, rng)

    monkeypatch.setattr(training, "train_epoch", spy)
    model = _model("dnn", data.catalog.n_items)

    # Execute
    fit(
        model,
        data.train,
        data.valid,
        TrainConfig(epochs=4, batch_size=64, lr=1e-30, patience=3, plateau_decay=0.5),
    )

    # Assert: epoch 1 sets the best, epochs 2 and 3 do not improve, each halving the rate for the next one.
    assert seen == pytest.approx([1e-30, 1e-30, 0.5e-30, 0.25e-30][: len(seen)])
    assert len(seen) == 4


def test_fit_stops_at_the_time_budget(data):
    model = _model("dnn", data.catalog.n_items)

    result = fit(model, data.train, data.valid, TrainConfig(epochs=50, batch_size=64, max_seconds=1e-6))

    assert len(result.history) == 1
    assert result.stopped_because.startswith("time budget")
    assert result.best_epoch == 1
    assert result.seconds >= result.history[0]["seconds"]


def test_fit_is_seeded(data):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=5e-3, seed=7)

    a = fit(_model("dnn", data.catalog.n_items), data.train, data.valid, cfg)
    b = fit(_model("dnn", data.catalog.n_items), data.train, data.valid, cfg)

    assert [r["loss"] for r in a.history] == pytest.approx([r["loss"] for r in b.history], abs=1e-6)
    assert a.best_valid == b.best_valid


# ------------------------------------------------------------------------------------------ bucketed_batches


@pytest.mark.parametrize(("n", "batch_size"), [(1000, 7), (350, 7), (5, 8), (1, 1)])
def test_bucketed_batches_cover_every_record_once(n, batch_size):
    rng = np.random.default_rng(0)
    lengths = torch.from_numpy(rng.integers(1, 30, size=n))

    for _epoch in range(2):
        batches = list(bucketed_batches(lengths, batch_size, rng))

        assert all(1 <= len(b) <= batch_size for b in batches)
        assert sorted(np.concatenate(batches).tolist()) == list(range(n))


def test_bucketed_batches_group_similar_lengths_and_reshuffle():
    # Prepare: one pool (n <= 50 * batch_size), so batches are consecutive slices of a length-sorted list.
    rng = np.random.default_rng(1)
    lengths = torch.from_numpy(rng.integers(1, 50, size=200))

    # Execute
    first = list(bucketed_batches(lengths, 10, rng))
    second = list(bucketed_batches(lengths, 10, rng))

    # Assert: length ranges of the batches do not interleave; a new epoch draws a new grouping.
    ranges = sorted((int(lengths[b].min()), int(lengths[b].max())) for b in first)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in pairwise(ranges))
    assert [b.tolist() for b in first] != [b.tolist() for b in second]


def test_bucketed_batches_empty():
    assert list(bucketed_batches(torch.zeros(0, dtype=torch.long), 4, np.random.default_rng(0))) == []


# ------------------------------------------------------------------------------------------------ TrainConfig


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("patience", 0),
        ("lr", 0.0),
        ("lr", -1e-3),
        ("label_smoothing", 1.0),
        ("label_smoothing", -0.1),
        ("weight_decay", -0.1),
        ("max_seconds", 0.0),
        ("plateau_decay", 0.0),
        ("plateau_decay", 1.5),
    ],
)
def test_train_config_rejects_bad_values_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"train\.{key}="):
        TrainConfig(**{key: value})


def test_train_config_round_trips_to_dict():
    cfg = TrainConfig(epochs=3, lr=2e-3, max_seconds=10.0)

    assert TrainConfig(**cfg.to_dict()) == cfg
    assert set(cfg.to_dict()) == {f.name for f in dataclasses.fields(TrainConfig)}
