"""DP-SGD's backward pass with the full-catalog output layer done by book-keeping: one pass, not two.

Opacus's ghost clipping runs the whole backward twice (once for per-record norms, once for the clipped sum),
so the output layer -- a ``[rows, n_items]`` matrix product that dominates the step at 12k-100k items -- is
paid twice. Here (book-keeping, Bu et al. 2023, applied to the output layer only) its gradient is written
down instead of back-propagated: for record i with window rows t (weight ``1/n_i``, the per-record mean),

    g_t = (softmax(z_t) - target_t) / n_i                      (the logits' gradient; target maybe smoothed)
    ||dW_i||^2 = sum_{t,s} (g_t . g_s)(h_t . h_s)              ||db_i||^2 = ||sum_t g_t||^2
    dh_t = g_t W                                               (what the encoder receives)

and with a tied table also the cross term with the lookup's gradient ``<dW_i, dE_i> = sum_{t,r} g_t[i_r]
(e_r . h_t)``. The encoder (small) keeps Opacus's ghost clipping: one backward of ``dh`` gives its norms, a
second of ``c_i dh`` its clipped sum. The output layer's clipped sum is one matrix product, ``(c G)^T H``.
The output layer costs forward + ``dh`` + ``dW`` (as without DP) plus the per-record Gram ``G_i G_i^T``
(``window / dim`` of one product). Memory: ``G`` for the real rows is kept, one ``[rows, n_items]`` matrix,
where plain autograd keeps two (the log-softmax and its gradient).

The result is what ``DPOptimizerFastGradientClipping`` expects in ``p.grad``: ``sum_i c_i grad L_i`` with
``c_i = min(1, C / ||grad L_i||)``. Tests compare the norms and the clipped sum with single-record gradients.
"""

from __future__ import annotations

import torch

from shared.models import PAD
from shared.models.item_table import TiedItemTable
from shared.privacy.tied_ghost import TiedGhostClippingModule

CHUNK_ELEMENTS = 2**24  # logits per chunk (64 MB): the padded per-chunk Gram input stays small


def book_keeping_backward(
    module: TiedGhostClippingModule,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    loss_window: int | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Leave ``sum_i c_i grad L_i`` in every ``p.grad``; return the per-record losses ``[B]`` (detached).

    ``L_i`` is :func:`shared.models.per_record_loss` (mean cross-entropy over the record's real positions in
    the last ``loss_window`` steps). ``module`` is the ghost-clipping wrapper of the model; its
    ``max_grad_norm`` is the clip ``C``.
    """
    inner = module._module
    params = [p for p in module.parameters() if p.requires_grad]
    batch = inputs.shape[0]
    if batch == 0:  # a Poisson draw can be empty: a step of pure noise, as in dp_backward
        for p in params:
            p.grad = torch.zeros_like(p)
        return torch.zeros(0)
    hidden = inner.encode(inputs)  # [B, T, H]; Opacus's hooks record the encoder's activations
    if loss_window is not None and loss_window < hidden.shape[1]:
        hidden, targets = hidden[:, -loss_window:], targets[:, -loss_window:]
    layer = inner.project_layer()
    tied = isinstance(layer, TiedItemTable)
    out = _output_layer_pass(
        hidden.detach(),
        targets,
        layer.weight.detach(),
        layer.bias.detach(),
        layer.activations[-1][0] if tied else None,  # the ids the table looked up (the model's window)
        label_smoothing,
        chunk_elements,
    )

    # Encoder norms (Opacus's hooks; the mean-reduced backprop is what its "mean" rescaling expects).
    torch.autograd.backward(hidden, out.dh / batch, retain_graph=True)
    weight_sq = out.weight_sq
    if tied:
        ids, e = layer.__dict__.pop("_tied_lookup")  # [B, T], [B, T, H]: the lookup's per-record backprops
        e = e.reshape(batch, ids.shape[-1], -1)
        cross = torch.einsum("btr,brh,bth->b", out.cross_gather, e, out.hidden)
        weight_sq = weight_sq + layer.weight._norm_sample.pow(2) + 2.0 * cross
    layer.weight._norm_sample = weight_sq.clamp(min=0).sqrt()
    layer.bias._norm_sample = out.bias_sq.clamp(min=0).sqrt()
    coef = module.get_clipping_coef()  # [B]

    for p in params:
        p.grad = None
    module.disable_hooks()
    try:
        torch.autograd.backward(hidden, out.dh * coef.view(-1, 1, 1))
    finally:
        module.enable_hooks()
    weight_grad, bias_grad = out.clipped_sums(coef)
    _accumulate(layer.weight, weight_grad)
    _accumulate(layer.bias, bias_grad)
    return out.losses


def _accumulate(param: torch.nn.Parameter, grad: torch.Tensor) -> None:
    param.grad = grad if param.grad is None else param.grad + grad


class _OutputPass:
    """What one pass over the output layer leaves behind: losses, ``dh``, norms, and G for the final sum."""

    def __init__(self, hidden: torch.Tensor, weight_shape: torch.Size, lookup_width: int) -> None:
        batch, width, _ = hidden.shape
        self.hidden = hidden  # [B, W, H]
        self.weight_shape = weight_shape
        self.dh = torch.zeros_like(hidden)
        self.losses = torch.zeros(batch, dtype=hidden.dtype)
        self.weight_sq = torch.zeros(batch, dtype=hidden.dtype)
        self.bias_sq = torch.zeros(batch, dtype=hidden.dtype)
        self.cross_gather = (
            torch.zeros(batch, width, lookup_width, dtype=hidden.dtype) if lookup_width else None
        )
        self.chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (G, record, h rows)

    def clipped_sums(self, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sum_i c_i dW_i`` and ``sum_i c_i db_i``: one product per chunk over the rows."""
        weight = torch.zeros(self.weight_shape, dtype=self.hidden.dtype)  # stays zero if no row has a target
        bias = torch.zeros(self.weight_shape[0], dtype=self.hidden.dtype)
        for g, record, h_rows in self.chunks:
            scaled = g.mul_(coef[record].unsqueeze(1))  # G is not needed after this
            weight.addmm_(scaled.T, h_rows)
            bias.add_(scaled.sum(dim=0))
        self.chunks.clear()
        return weight, bias


def _output_layer_pass(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    lookup_ids: torch.Tensor | None,
    label_smoothing: float,
    chunk_elements: int,
) -> _OutputPass:
    batch, width, _ = hidden.shape
    n_classes = weight.shape[0]
    real = targets != PAD
    count = real.sum(dim=1).clamp(min=1).to(hidden.dtype)
    record, position = real.nonzero(as_tuple=True)  # record-major: each record's rows are contiguous
    starts = torch.searchsorted(record, torch.arange(batch + 1))
    result = _OutputPass(hidden, weight.shape, 0 if lookup_ids is None else lookup_ids.shape[1])
    per_chunk = max(1, chunk_elements // max(1, width * n_classes))
    for r0 in range(0, batch, per_chunk):
        r1 = min(batch, r0 + per_chunk)
        lo, hi = int(starts[r0]), int(starts[r1])
        if lo == hi:
            continue
        rec, pos = record[lo:hi], position[lo:hi]
        h_rows = hidden[rec, pos]  # [n, H]
        y = targets[rec, pos]
        logits = torch.addmm(bias, h_rows, weight.T)  # [n, V]
        lse = torch.logsumexp(logits, dim=1)
        row_loss = lse - logits.gather(1, y.unsqueeze(1)).squeeze(1)
        if label_smoothing:
            row_loss = (1 - label_smoothing) * row_loss + label_smoothing * (lse - logits.mean(dim=1))
        g = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place: [n, V]
        g[torch.arange(len(y)), y] -= 1.0 - label_smoothing
        if label_smoothing:
            g -= label_smoothing / n_classes
        g.mul_((1.0 / count[rec]).unsqueeze(1))  # d(per-record mean)/d logits
        result.losses.index_add_(0, rec, row_loss / count[rec])
        result.dh[rec, pos] = g @ weight

        padded = torch.zeros(r1 - r0, width, n_classes, dtype=g.dtype)
        padded[rec - r0, pos] = g
        gram = torch.bmm(padded, padded.transpose(1, 2))  # [b, W, W]: g_t . g_s within each record
        del padded
        h_chunk = hidden[r0:r1]
        result.weight_sq[r0:r1] = (gram * torch.bmm(h_chunk, h_chunk.transpose(1, 2))).sum(dim=(1, 2))
        result.bias_sq[r0:r1] = gram.sum(dim=(1, 2))
        if lookup_ids is not None and result.cross_gather is not None:
            result.cross_gather[rec, pos] = g.gather(1, lookup_ids[rec])  # g_t[i_r] for every looked-up id
        result.chunks.append((g, rec, h_rows))
    return result


__all__ = ["book_keeping_backward"]
