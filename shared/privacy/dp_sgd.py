"""The DP-SGD backward pass for one batch of customers, in one of three per-sample gradient modes.

- ``bk`` (default): the full-catalog output layer by book-keeping (one pass: its per-record norms and clipped
  sum are written down, :mod:`shared.privacy.book_keeping`), the encoder by Opacus's ghost clipping;
- ``ghost`` (Li et al. 2022; Bu et al. 2023): Opacus's ghost clipping for every layer: no ``[B, n_items,
  dim]`` per-sample gradients, but the whole backward, output layer included, runs twice;
- ``hooks``: Opacus materialises every per-sample gradient; the reference, affordable on small catalogs only.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

from shared.models import per_record_loss
from shared.privacy.book_keeping import book_keeping_backward
from shared.privacy.tied_ghost import make_ghost_module

GRAD_SAMPLE_MODES = ("bk", "ghost", "hooks")


def dp_loss_backward(
    module: torch.nn.Module,
    optimizer: DPOptimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    grad_sample_mode: str,
    *,
    label_smoothing: float = 0.0,
    loss_window: int | None = None,
) -> torch.Tensor:
    """Forward and DP backward of one batch (``optimizer.step()`` follows); the per-record losses ``[B]``."""
    if grad_sample_mode == "bk":
        return book_keeping_backward(
            module, inputs, targets, label_smoothing=label_smoothing, loss_window=loss_window
        )
    losses = per_record_loss(module, inputs, targets, label_smoothing, loss_window)
    dp_backward(module, optimizer, losses, grad_sample_mode)
    return losses.detach()


def dp_backward(
    module: torch.nn.Module, optimizer: DPOptimizer, losses: torch.Tensor, grad_sample_mode: str
) -> None:
    """Back-propagate per-record ``losses [B]`` (mean-reduced) so that ``optimizer.step()`` does DP-SGD.

    An empty batch (Poisson sampling draws them) still takes a step of pure noise, which keeps the batch size
    private; Opacus's ghost embedding norm sampler cannot reshape an empty tensor, so that case sets zero
    gradients instead of running backward.
    """
    if grad_sample_mode not in ("ghost", "hooks"):
        raise ValueError(f"grad_sample_mode={grad_sample_mode!r}; choose ghost or hooks")
    if losses.numel() == 0 and grad_sample_mode == "ghost":
        for p in module.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        return
    if grad_sample_mode == "ghost":
        DPTensorFastGradientClipping(module, optimizer, losses, "mean").backward()
    else:
        losses.mean().backward() if losses.numel() else losses.sum().backward()


def wrap_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    grad_sample_mode: str,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    noise_generator: torch.Generator | None = None,
) -> tuple[torch.nn.Module, DPOptimizer]:
    """The grad-sample module and DP optimizer for ``grad_sample_mode`` (mean-reduced per-record losses).

    ``bk`` and ``ghost`` use a subclass of Opacus's ghost module that also handles a tied item table exactly.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode={grad_sample_mode!r}; choose one of {GRAD_SAMPLE_MODES}")
    common = {
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": max_grad_norm,
        "expected_batch_size": expected_batch_size,
        "loss_reduction": "mean",
        "generator": noise_generator,
    }
    if grad_sample_mode in ("bk", "ghost"):
        return make_ghost_module(model, max_grad_norm), DPOptimizerFastGradientClipping(optimizer, **common)
    return GradSampleModule(model, batch_first=True, loss_reduction="mean"), DPOptimizer(optimizer, **common)
