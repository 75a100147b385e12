"""SASRec-style causal self-attention recommender (Kang & McAuley, ICDM 2018), Opacus-safe.

Attention is built from ``nn.Linear`` + ``F.scaled_dot_product_attention``: Opacus 1.6's
``DPMultiheadAttention(batch_first=True)`` rejects causal masks and, with more than one head, mixes heads and
positions. Pre-LayerNorm blocks, learned positions (a contiguous ``(B, T)`` index tensor, which ghost
clipping needs), padded keys masked, padded positions zeroed after every block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.models.base import PAD, ModelConfig, SequentialRecommender, register_model


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        batch, steps, dim = x.shape
        q, k, v = self.qkv(x).view(batch, steps, 3, self.n_heads, dim // self.n_heads).unbind(dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, T, hd]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # [B, heads, T, hd]
        return self.proj(out.transpose(1, 2).reshape(batch, steps, dim))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), attn_mask))
        x = x + self.dropout(self.ff(self.norm2(x)))
        return x * keep  # padded positions stay exactly zero


@register_model("transformer")
class SASRecRecommender(SequentialRecommender):
    def __init__(self, n_items: int, config: ModelConfig) -> None:
        super().__init__(n_items, config)
        d = config.dim
        self.pos_emb = nn.Embedding(config.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.n_heads, config.dropout) for _ in range(config.n_layers)
        )
        self.final_norm = nn.LayerNorm(d)
        # Embedding style: SASRec scales item embeddings by sqrt(d); RecBole adds a LayerNorm instead.
        style = config.extra.get("embedding_style", "sasrec")
        self.emb_scale = d**0.5 if style == "sasrec" else 1.0
        self.emb_norm = nn.LayerNorm(d) if style == "layernorm" else None

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        batch, steps = items.shape
        items = items[:, -self.config.max_len :]  # the window the positions cover
        steps = items.shape[1]
        real = items != PAD  # [B, T]
        keep = real.unsqueeze(-1).to(self.dtype)  # [B, T, 1]
        # Positions count back from the most recent item, so a left-padded window of any width lines up.
        positions = torch.arange(self.config.max_len - steps, self.config.max_len, device=items.device)
        positions = positions.unsqueeze(0).repeat(batch, 1).contiguous()  # [B, T]
        x = self.embed_items(items) * self.emb_scale + self.pos_emb(positions) * keep
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.emb_dropout(x) * keep
        causal = torch.ones(steps, steps, dtype=torch.bool, device=items.device).tril()  # [T, T]
        # A query may attend to real keys at or before it, and always to itself (no empty softmax rows).
        attn_mask = (causal & real.unsqueeze(1)) | torch.eye(steps, dtype=torch.bool, device=items.device)
        attn_mask = attn_mask.unsqueeze(1)  # [B, 1, T, T]
        for block in self.blocks:
            x = block(x, attn_mask, keep)
        return self.final_norm(x) * keep
