"""The DP-SGD backward pass for one batch of per-customer losses, in any Opacus grad-sample mode.

``ghost`` (ghost clipping, Li et al. 2022; Bu et al. 2023) is the default: it computes per-record gradient
norms without materialising ``[B, n_items, dim]`` per-sample gradients for the embedding and output layers,
which is what makes DP-SGD affordable on big catalogs. ``hooks`` materialises them and serves as reference.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

GRAD_SAMPLE_MODES = ("ghost", "hooks")


def dp_backward(
    module: torch.nn.Module, optimizer: DPOptimizer, losses: torch.Tensor, grad_sample_mode: str
) -> None:
    """Back-propagate per-record ``losses [B]`` (mean-reduced) so that ``optimizer.step()`` does DP-SGD.

    An empty batch (Poisson sampling draws them) still takes a step of pure noise, which keeps the batch size
    private; Opacus's ghost embedding norm sampler cannot reshape an empty tensor, so that case sets zero
    gradients instead of running backward.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode={grad_sample_mode!r}; choose one of {GRAD_SAMPLE_MODES}")
    if losses.numel() == 0 and grad_sample_mode == "ghost":
        for p in module.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        return
    if grad_sample_mode == "ghost":
        DPTensorFastGradientClipping(module, optimizer, losses, "mean").backward()
    else:
        losses.mean().backward() if losses.numel() else losses.sum().backward()
