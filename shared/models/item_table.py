"""A tied item table (input embedding = output layer) whose per-record gradients Opacus gets exactly right.

Tying ``logits = h @ item_emb.weight.T`` is what most SASRec implementations do, and it is silently wrong
under Opacus: hooks keep only one of the two gradient contributions and ghost clipping misses the cross terms
between them, so per-record norms are under-estimated and clipping no longer bounds sensitivity.

``TiedItemTable`` is one module called twice per forward: with item ids (lookup) and with hidden states
(projection to all items). Because both uses go through the same module, Opacus's per-call accumulation of
per-sample gradients applies (hooks mode: the grad sampler below dispatches on the input's dtype), and the
ghost-clipping norm is computed by :mod:`shared.privacy.tied_ghost` from both calls together, cross terms
included. Tests compare both against single-record gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample.utils import register_grad_sampler
from torch import nn


class TiedItemTable(nn.Module):
    """``weight [V, H]`` and ``bias [V]``: ``forward(ids)`` embeds, ``forward(hidden)`` scores all items."""

    def __init__(self, n_classes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.int64, torch.int32):
            return F.embedding(x, self.weight)  # [B, T] -> [B, T, H]
        return F.linear(x, self.weight, self.bias)  # [B, T, H] -> [B, T, V]


@register_grad_sampler(TiedItemTable)
def tied_item_table_grad_sample(
    layer: TiedItemTable, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of one call; Opacus sums the two calls' results per record."""
    x = activations[0]
    batch = backprops.shape[0]
    if x.dtype in (torch.int64, torch.int32):  # lookup: scatter each record's backprops into its rows
        grad = torch.zeros(batch, *layer.weight.shape, dtype=backprops.dtype, device=backprops.device)
        if batch:
            index = x.reshape(batch, -1, 1).expand(-1, -1, layer.weight.shape[1])
            grad.scatter_add_(1, index, backprops.reshape(batch, -1, layer.weight.shape[1]))
        return {layer.weight: grad}
    x = x.to(backprops.dtype)
    return {
        layer.weight: torch.einsum("n...i,n...j->nij", backprops, x),
        layer.bias: torch.einsum("n...k->nk", backprops),
    }
