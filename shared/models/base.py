"""One contract for every next-item recommender, and the registry that builds them from config.

Every model reads a left-padded history ``items: LongTensor[B, T]`` (item 0 = padding, most recent last)
and produces a hidden state at every position. Scoring uses an **untied** output layer: tying it to the input
embedding (``h @ item_emb.weight.T``) makes Opacus drop the output-side per-sample gradient (hooks) or
under-estimate per-sample norms (ghost clipping), which silently voids the DP guarantee.

Opacus-safety rules every model follows (each is tested):
- only layers Opacus has per-sample gradient rules for (``nn.Linear``, ``nn.Embedding``, ``nn.LayerNorm``,
  ``opacus.layers.dp_rnn.RNNLinear``); no BatchNorm, nothing that mixes records of a batch;
- padded positions are masked explicitly (Opacus ignores ``padding_idx``);
- position ids are a contiguous ``(B, T)`` tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import ConfigError
from shared.models.item_table import TiedItemTable

PAD = 0


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters shared by the three encoders; unused ones are ignored by a given kind.

    ``dim`` is the embedding / hidden width, ``max_len`` the history window the model sees.
    """

    kind: str = "transformer"
    dim: int = 64
    max_len: int = 50
    dropout: float = 0.3
    emb_dropout: float = 0.3
    n_layers: int = 2
    n_heads: int = 2
    mlp_hidden: int = 256
    tie_output: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_REGISTRY:
            raise ConfigError(f"model.kind={self.kind!r} is unknown; choose one of {sorted(MODEL_REGISTRY)}")
        for key in ("dim", "max_len", "n_layers", "n_heads", "mlp_hidden"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}={getattr(self, key)!r} must be >= 1")
        for key in ("dropout", "emb_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"model.{key}={getattr(self, key)!r} must be in [0, 1)")
        if self.dim % self.n_heads:
            raise ConfigError(f"model.dim={self.dim} must be divisible by model.n_heads={self.n_heads}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**data)


class SequentialRecommender(nn.Module):
    """Base class: item embedding (padding masked), an encoder, and an untied output layer.

    Subclasses implement :meth:`encode`. Scores cover ``n_items + 1`` classes; class 0 (padding) is never a
    target and is masked to ``-inf`` when ranking.
    """

    def __init__(self, n_items: int, config: ModelConfig) -> None:
        super().__init__()
        if n_items < 1:
            raise ConfigError(f"n_items={n_items} must be >= 1")
        self.n_items = n_items
        self.config = config
        if config.tie_output:
            # One table for both roles; DP-exact only through TiedItemTable's own per-sample rules.
            self.item_table = TiedItemTable(n_items + 1, config.dim)
        else:
            self.item_emb = nn.Embedding(n_items + 1, config.dim)
            self.output = nn.Linear(config.dim, n_items + 1)  # untied by default, see module docstring
            nn.init.normal_(self.item_emb.weight, std=0.02)
            nn.init.normal_(self.output.weight, std=0.02)
            nn.init.zeros_(self.output.bias)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def embed_items(self, items: torch.Tensor) -> torch.Tensor:
        """Item embeddings with padded positions zeroed explicitly (Opacus ignores ``padding_idx``)."""
        mask = (items != PAD).unsqueeze(-1).to(self.dtype)  # [B, T, 1]
        table = self.item_table if self.config.tie_output else self.item_emb
        return table(items) * mask  # [B, T, H]

    def project_layer(self) -> nn.Module:
        """The module that scores hidden states against every item (the tied table, or the output layer)."""
        return self.item_table if self.config.tie_output else self.output

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[..., H]`` to scores over every item ``[..., V]``."""
        return self.item_table(hidden) if self.config.tie_output else self.output(hidden)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position: ``[B, T] -> [B, T, H]`` (causal: position t sees items <= t)."""
        raise NotImplementedError

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Logits at every position, ``[B, T, V]``: the shape the DP path clips per record."""
        return self.project(self.encode(items))

    def score(self, items: torch.Tensor) -> torch.Tensor:
        """Scores of every item for the next step after each history: ``[B, T] -> [B, V]``."""
        hidden = self.encode(items)[:, -1, :]  # [B, H]
        logits = self.project(hidden)
        logits[:, PAD] = float("-inf")
        return logits

    def item_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Output weights and bias, so serving can score a hidden state with one matrix product."""
        layer = self.item_table if self.config.tie_output else self.output
        return layer.weight.detach(), layer.bias.detach()


def token_losses(
    model: SequentialRecommender,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-catalog cross-entropy at every real position; logits only where a target exists.

    Returns ``(losses [N], record_index [N])`` for the N positions with a target; padding costs nothing in the
    output layer, which dominates the run time (12k-100k classes).
    """
    hidden = model.encode(inputs)  # [B, T, H]
    mask = targets != PAD  # [B, T]
    logits = model.project(hidden[mask])  # [N, V]
    losses = F.cross_entropy(logits, targets[mask], reduction="none", label_smoothing=label_smoothing)
    record = torch.arange(inputs.shape[0], device=inputs.device).unsqueeze(1).expand_as(targets)[mask]
    return losses, record


def per_record_loss(
    model: SequentialRecommender,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    loss_window: int | None = None,
) -> torch.Tensor:
    """Mean loss over each record's real positions, ``[B]``: one customer = one DP record.

    Runs the output layer on a ``[B, T, H]`` tensor so that every parameterised layer keeps the batch
    dimension first (what per-sample gradient rules need). ``loss_window`` keeps the loss on the most recent
    positions only: the full-catalog output layer dominates DP-SGD's cost, and a Poisson batch is as wide as
    its longest history. Records without any target get loss 0.
    """
    inner = getattr(model, "_module", model)  # an Opacus wrapper's hooks live on the inner layers
    hidden = inner.encode(inputs)  # [B, T, H]
    if loss_window is not None and loss_window < hidden.shape[1]:
        hidden, targets = hidden[:, -loss_window:], targets[:, -loss_window:]
    logits = inner.project(hidden)  # [B, W, V]
    batch, steps, vocab = logits.shape
    # Flattening (a view) keeps log-softmax on contiguous rows; a [B, V, T] transpose would copy all logits.
    losses = F.cross_entropy(
        logits.reshape(batch * steps, vocab),
        targets.reshape(batch * steps),
        reduction="none",
        ignore_index=PAD,
        label_smoothing=label_smoothing,
    ).view(batch, steps)  # [B, W]
    count = (targets != PAD).sum(dim=1).clamp(min=1).to(losses.dtype)
    return losses.sum(dim=1) / count


ModelFactory = Callable[[int, ModelConfig], SequentialRecommender]
MODEL_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Class decorator adding a model kind to the registry under ``name``."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        MODEL_REGISTRY[name] = factory
        return factory

    return wrap


def build_model(config: ModelConfig, n_items: int) -> SequentialRecommender:
    """Build the model named by ``config.kind`` for a catalog of ``n_items`` items."""
    return MODEL_REGISTRY[config.kind](n_items, config)
