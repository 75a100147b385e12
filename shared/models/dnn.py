"""History-pooling MLP (YouTube-DNN style): the cheapest model, order-insensitive except for the last item.

At every position t the customer is represented by the masked mean of the embeddings of items <= t,
concatenated with the embedding of item t (recency matters a lot for next-item prediction), fed to an MLP.
The running mean is a cumulative sum, so all positions cost one pass.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.models.base import PAD, ModelConfig, SequentialRecommender, register_model


@register_model("dnn")
class DNNRecommender(SequentialRecommender):
    def __init__(self, n_items: int, config: ModelConfig) -> None:
        super().__init__(n_items, config)
        d = config.dim
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.mlp = nn.Sequential(
            nn.Linear(2 * d, config.mlp_hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.mlp_hidden, d),
        )
        self.norm = nn.LayerNorm(d)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        mask = (items != PAD).unsqueeze(-1).to(self.dtype)  # [B, T, 1]
        emb = self.emb_dropout(self.embed_items(items)) * mask  # [B, T, H]
        pooled = emb.cumsum(dim=1) / mask.cumsum(dim=1).clamp(min=1.0)  # [B, T, H] running mean
        hidden = self.mlp(torch.cat([pooled, emb], dim=-1))  # [B, T, H]
        return self.norm(hidden + pooled) * mask
