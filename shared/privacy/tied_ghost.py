"""Ghost clipping that stays exact for a tied item table (one weight used to embed and to score).

Opacus's ghost clipping computes each layer call's per-record gradient norm on its own and refuses a module
called twice. For the tied table the per-record gradient is the sum of two parts, so its squared norm is

    ||G_out||^2 + ||G_emb||^2 + 2 <G_out, G_emb>

where, for one record with hidden states ``h_t``, output backprops ``g_t`` (over all items), looked-up ids
``i_r`` and their backprops ``e_r``:

    ||G_out||^2      = sum_{t,s} (g_t . g_s)(h_t . h_s)          (Opacus's linear ghost norm)
    ||G_emb||^2      = sum_{r,r'} [i_r = i_r'] (e_r . e_r')      (the embedding ghost norm)
    <G_out, G_emb>   = sum_{r,t} g_t[i_r] (e_r . h_t)            (the cross term Opacus would miss)

Nothing of size ``[B, n_items, H]`` is materialised. Tests compare these norms with single-record gradients.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.utils.module_utils import requires_grad

from shared.models.item_table import TiedItemTable


def tied_norms(
    lookup: tuple[torch.Tensor, torch.Tensor] | None, project: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-record gradient norms ``(weight [B], bias [B] or None)`` from both calls' activations/backprops."""
    sq = None
    bias = None
    if project is not None:
        h, g = project  # [B, T, H], [B, T, V]
        if h.dim() == 2:
            h, g = h.unsqueeze(1), g.unsqueeze(1)
        h = h.to(g.dtype)
        sq = torch.einsum("bts,bts->b", g @ g.transpose(1, 2), h @ h.transpose(1, 2))
        bias = g.sum(dim=1).norm(dim=1)
    if lookup is not None:
        ids, e = lookup  # [B, R], [B, R, H]
        ids = ids.reshape(ids.shape[0], -1)
        e = e.reshape(ids.shape[0], ids.shape[1], -1)
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(e.dtype)  # [B, R, R]
        emb_sq = torch.einsum("brs,brs->b", same, e @ e.transpose(1, 2))
        sq = emb_sq if sq is None else sq + emb_sq
        if project is not None:
            gathered = g.gather(2, ids.unsqueeze(1).expand(-1, g.shape[1], -1))  # [B, T, R]: g_t[i_r]
            cross = torch.einsum("btr,brt->b", gathered, e @ h.transpose(1, 2))
            sq = sq + 2.0 * cross
    assert sq is not None
    return sq.clamp(min=0).sqrt(), bias


class TiedGhostClippingModule(GradSampleModuleFastGradientClipping):
    """Opacus's ghost-clipping module, plus exact joint norms for :class:`TiedItemTable`.

    Every other layer is handled by Opacus unchanged.
    """

    def capture_activations_hook(self, module, forward_input, _forward_output):  # type: ignore[override]
        if not isinstance(module, TiedItemTable):
            return super().capture_activations_hook(module, forward_input, _forward_output)
        if (
            not requires_grad(module)
            or not module.training
            or not torch.is_grad_enabled()
            or not self.hooks_enabled
        ):
            return None
        if not hasattr(module, "activations"):
            module.activations = []
        module.activations.append([t.detach() for t in forward_input])
        return None

    def capture_backprops_hook(self, module, _forward_input, forward_output, loss_reduction, batch_first):  # type: ignore[override]
        if not isinstance(module, TiedItemTable):
            return super().capture_backprops_hook(
                module, _forward_input, forward_output, loss_reduction, batch_first
            )
        if not self.hooks_enabled:
            return None
        activations, backprops = self.rearrange_grad_samples(
            module=module,
            backprops=forward_output[0].detach(),
            loss_reduction=loss_reduction,
            batch_first=batch_first,
        )
        parts = module.__dict__.setdefault("_tied_parts", {})
        kind = "lookup" if activations[0].dtype in (torch.int64, torch.int32) else "project"
        parts[kind] = (activations[0], backprops)
        if not module.activations:  # both calls of this forward have been back-propagated
            weight_norm, bias_norm = tied_norms(parts.get("lookup"), parts.get("project"))
            if "project" not in parts:  # the projection is done outside autograd (book-keeping) and
                module.__dict__["_tied_lookup"] = parts["lookup"]  # needs the lookup's backprops
            module.weight._norm_sample = weight_norm
            module.bias._norm_sample = bias_norm if bias_norm is not None else torch.zeros_like(weight_norm)
            parts.clear()
            if hasattr(module, "max_batch_len"):
                del module.max_batch_len
        return None


def make_ghost_module(model: torch.nn.Module, max_grad_norm: float) -> TiedGhostClippingModule:
    return TiedGhostClippingModule(
        model, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm, use_ghost_clipping=True
    )


__all__ = ["TiedGhostClippingModule", "make_ghost_module", "tied_norms"]
