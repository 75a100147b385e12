"""The synthetic default must carry sequential signal: a trained model clearly beats popularity on it.

If a generator change made the data unlearnable (or learnable only as popularity), every benchmark and
demo on it would silently stop measuring anything; this guards that. The default suite trains the cheapest
model on a reduced-size config of the same generator; the full-size, preset-config run is marked slow.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from shared.data.prepare import prepare
from shared.evaluation import evaluate_model, evaluate_popularity, popularity_scores
from shared.models import ModelConfig, build_model
from shared.training import TrainConfig, fit
from simulations.presets import presets_for
from simulations.synthetic import SyntheticConfig, generate

MIN_RATIO = 2.0


def _model_vs_popularity(synth_cfg: SyntheticConfig, model_cfg: ModelConfig, train_cfg: TrainConfig):
    synth = generate(synth_cfg)
    frame = pd.concat(list(synth.stores.values()), ignore_index=True)
    data = prepare(frame, synth.catalog, max_len=model_cfg.max_len)
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg, synth.catalog.n_items)
    fit(model, data.train, data.valid, train_cfg)
    test = evaluate_model(model, data.test)
    popularity = evaluate_popularity(popularity_scores(data.split.train, synth.catalog.n_items), data.test)
    return test, popularity


def test_dnn_beats_popularity_on_reduced_synthetic_default():
    # Prepare: the default generator settings, fewer customers and items.
    synth_cfg = SyntheticConfig(n_customers=1200, n_items=500)
    model_cfg = ModelConfig(kind="dnn", dim=32, max_len=50, dropout=0.3, emb_dropout=0.3, mlp_hidden=64)
    train_cfg = TrainConfig(epochs=4, batch_size=64, lr=5e-3, patience=4)

    # Execute
    test, popularity = _model_vs_popularity(synth_cfg, model_cfg, train_cfg)

    # Assert
    assert popularity["ndcg@10"] > 0
    assert test["ndcg@10"] >= MIN_RATIO * popularity["ndcg@10"], (test, popularity)
    assert test["hr@10"] > popularity["hr@10"]


@pytest.mark.slow
def test_dnn_preset_beats_popularity_on_full_synthetic_default():
    model_cfg, train_cfg = presets_for("dnn")
    train_cfg = TrainConfig(**{**train_cfg.to_dict(), "epochs": 8})

    test, popularity = _model_vs_popularity(SyntheticConfig(), model_cfg, train_cfg)

    assert test["ndcg@10"] >= MIN_RATIO * popularity["ndcg@10"], (test, popularity)
