"""Next-item recommenders behind one contract; importing this package registers all three kinds."""

from shared.models import dnn, rnn, transformer  # noqa: F401  (registration side effect)
from shared.models.base import (
    MODEL_REGISTRY,
    PAD,
    ModelConfig,
    SequentialRecommender,
    build_model,
    per_record_loss,
    token_losses,
)

__all__ = [
    "MODEL_REGISTRY",
    "PAD",
    "ModelConfig",
    "SequentialRecommender",
    "build_model",
    "per_record_loss",
    "token_losses",
]
