"""GRU4Rec-style recurrent recommender built from Opacus's DP-ready GRU cell pieces.

``nn.GRU`` is rejected by Opacus; ``opacus.layers.DPGRU`` works but runs its own step loop with no notion of
padding. We keep its building block (``RNNLinear`` for the recurrent weights, whose per-sample gradients
Opacus accumulates over time steps) and write the step loop here so that:
- the input projection runs once over all positions (one large matmul instead of T small ones);
- the hidden state stays exactly zero through left padding, so trimming padding never changes a result.
"""

from __future__ import annotations

import torch
from opacus.layers.dp_rnn import RNNLinear
from torch import nn

from shared.models.base import PAD, ModelConfig, SequentialRecommender, register_model


class MaskedGRULayer(nn.Module):
    """One GRU layer over ``[B, T, D]`` that skips padded steps (hidden state carried unchanged)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 3 * hidden_size)
        self.hh = RNNLinear(hidden_size, 3 * hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = x.shape
        gates_x = self.ih(x)  # [B, T, 3H]
        h = x.new_zeros(batch, self.hidden_size)  # [B, H]
        outputs = []
        for t in range(steps):
            r_x, z_x, n_x = gates_x[:, t].chunk(3, dim=-1)
            r_h, z_h, n_h = self.hh(h).chunk(3, dim=-1)
            r = torch.sigmoid(r_x + r_h)
            z = torch.sigmoid(z_x + z_h)
            n = torch.tanh(n_x + r * n_h)
            h_new = (1 - z) * n + z * h
            keep = mask[:, t : t + 1]  # [B, 1]
            h = keep * h_new + (1 - keep) * h
            outputs.append(h)
        return torch.stack(outputs, dim=1)  # [B, T, H]


@register_model("rnn")
class GRURecommender(SequentialRecommender):
    def __init__(self, n_items: int, config: ModelConfig) -> None:
        super().__init__(n_items, config)
        d = config.dim
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.layers = nn.ModuleList(MaskedGRULayer(d, d) for _ in range(config.n_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(d, d)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        mask = (items != PAD).to(self.dtype)  # [B, T]
        x = self.emb_dropout(self.embed_items(items))  # [B, T, H]
        for layer in self.layers:
            x = self.dropout(layer(x, mask))
        return self.proj(x) * mask.unsqueeze(-1)  # [B, T, H]
