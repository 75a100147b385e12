"""Tuned default hyper-parameters per model kind (chosen on amazon-beauty validation NDCG@10).

Kept in one place so the centralized command, the benchmark and the federation start from the same values;
every run writes the values it actually used into its results JSON.
"""

from __future__ import annotations

from dataclasses import replace

from shared.models import ModelConfig
from shared.training import TrainConfig

MODEL_PRESETS: dict[str, ModelConfig] = {
    "dnn": ModelConfig(kind="dnn", dim=64, max_len=50, dropout=0.3, emb_dropout=0.3, mlp_hidden=256),
    "rnn": ModelConfig(kind="rnn", dim=64, max_len=50, dropout=0.3, emb_dropout=0.3, n_layers=1),
    "transformer": ModelConfig(
        kind="transformer", dim=64, max_len=50, dropout=0.3, emb_dropout=0.3, n_layers=2, n_heads=2
    ),
}

TRAIN_PRESETS: dict[str, TrainConfig] = {
    "dnn": TrainConfig(batch_size=128, lr=2e-3, weight_decay=0.0, patience=5),
    "rnn": TrainConfig(batch_size=128, lr=2e-3, weight_decay=0.0, patience=5),
    "transformer": TrainConfig(batch_size=128, lr=2e-3, weight_decay=0.0, patience=5),
}

QUICK_EPOCHS = 3


def presets_for(kind: str, quick: bool = False) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs for ``kind``; ``quick`` caps epochs for smoke runs."""
    model_cfg, train_cfg = MODEL_PRESETS[kind], TRAIN_PRESETS[kind]
    if quick:
        train_cfg = replace(train_cfg, epochs=QUICK_EPOCHS, patience=QUICK_EPOCHS)
    return model_cfg, train_cfg
