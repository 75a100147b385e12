"""After the last round: save the global model at the store and fine-tune a local copy for serving.

Both go into the store's model store (``client.model_store``: ``<state>/models/<version>/`` + ``CURRENT``).
The fine-tuned copy never leaves the store: the operator's final message asks only for test metrics, which the
store computes locally (aggregates over its test customers). Fine-tuning uses the store's training customers
with early stopping on its validation customers (``shared.training.fit``); if no epoch beats the global model
on validation, the global weights are kept as the personalized version.

The fine-tuning is not differentially private: the copy stays inside the store's trust boundary, like the raw
data. Recommendations it serves can still reflect other customers of the same store (as any model trained on
them would).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from client import model_store
from client.store import Store
from shared.config import PersonalizationConfig
from shared.evaluation import evaluate_model
from shared.models import SequentialRecommender
from shared.training import SELECTION_METRIC, TrainConfig, fit

__all__ = ["PersonalizationResult", "personalize"]


@dataclass(frozen=True)
class PersonalizationResult:
    global_version: str
    personalized_version: str
    global_test: dict[str, float]
    personalized_test: dict[str, float]
    improved_on_validation: bool
    epochs_run: int


def personalize(
    store: Store,
    global_model: SequentialRecommender,
    cfg: PersonalizationConfig,
    round_id: int,
    seed: int = 0,
) -> PersonalizationResult:
    """Publish the global model, fine-tune and publish the local copy (made current), evaluate both on
    test."""
    data = store.data
    catalog_hash = store.catalog.content_hash
    global_version = model_store.publish(
        store.state_dir,
        global_model,
        catalog_hash=catalog_hash,
        origin="global",
        round_id=round_id,
        extra={"store_id": store.store_id},
        make_current=False,
    )
    global_valid = evaluate_model(global_model, data.valid)[SELECTION_METRIC] if len(data.valid) else 0.0
    local = copy.deepcopy(global_model)
    result = fit(
        local,
        data.train,
        data.valid,
        TrainConfig(epochs=cfg.epochs, lr=cfg.lr, patience=cfg.patience, batch_size=128, seed=seed),
    )
    improved = result.best_valid.get(SELECTION_METRIC, -1.0) > global_valid
    if not improved:
        local.load_state_dict(global_model.state_dict())
    personalized_version = model_store.publish(
        store.state_dir,
        local,
        catalog_hash=catalog_hash,
        origin="personalized",
        round_id=round_id,
        extra={
            "store_id": store.store_id,
            "base_version": global_version,
            "finetune_epochs": len(result.history),
            "improved_on_validation": improved,
        },
        make_current=True,
    )
    return PersonalizationResult(
        global_version=global_version,
        personalized_version=personalized_version,
        global_test=evaluate_model(global_model, data.test) if len(data.test) else {},
        personalized_test=evaluate_model(local, data.test) if len(data.test) else {},
        improved_on_validation=improved,
        epochs_run=len(result.history),
    )
