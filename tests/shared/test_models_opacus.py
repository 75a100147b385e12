"""Every model is Opacus-safe by construction, proven per kind.

- the validator finds no error;
- per-sample gradients (hooks mode) equal the gradients of one-record batches;
- per-sample gradient norms in ghost-clipping mode (the DP default) equal the reference norms;
- a private step with zero noise and a huge clip equals the plain step;
- an empty batch (which Poisson sampling produces) runs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from shared.models import MODEL_REGISTRY, ModelConfig, build_model, per_record_loss
from shared.privacy.dp_sgd import dp_loss_backward, wrap_private
from shared.privacy.tied_ghost import make_ghost_module

# Every kind untied (the default) and with the tied item table.
KINDS = [*sorted(MODEL_REGISTRY), *(f"{k}-tied" for k in sorted(MODEL_REGISTRY))]
N_ITEMS = 37


def make_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    base, tied = kind.removesuffix("-tied"), kind.endswith("-tied")
    cfg = ModelConfig(
        kind=base, dim=16, max_len=8, dropout=0.0, emb_dropout=0.0, n_heads=2, mlp_hidden=24, tie_output=tied
    )
    return build_model(cfg, N_ITEMS)


def make_batch(seed: int = 1, batch: int = 5, steps: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded histories of different lengths, including one with a single target."""
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(1, N_ITEMS + 1, (batch, steps + 1), generator=g)
    lengths = [steps + 1, 5, 2, 7, 3][:batch]
    inputs = torch.zeros(batch, steps, dtype=torch.long)
    targets = torch.zeros(batch, steps, dtype=torch.long)
    for i, n in enumerate(lengths):
        inputs[i, steps - (n - 1) :] = seqs[i, : n - 1]
        targets[i, steps - (n - 1) :] = seqs[i, 1:n]
    return inputs, targets


def reference_grads(model, inputs, targets) -> list[torch.Tensor]:
    """Gradient of each record's loss computed alone: the ground truth for per-sample gradients."""
    out = []
    for i in range(len(inputs)):
        model.zero_grad(set_to_none=False)
        per_record_loss(model, inputs[i : i + 1], targets[i : i + 1]).sum().backward()
        out.append(torch.cat([p.grad.flatten().clone() for p in model.parameters()]))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_validator_finds_no_error(kind):
    assert ModuleValidator.validate(make_model(kind), strict=False) == []


@pytest.mark.parametrize("kind", KINDS)
def test_per_sample_gradients_equal_single_record_gradients(kind):
    model = make_model(kind)
    inputs, targets = make_batch()
    expected = reference_grads(copy.deepcopy(model), inputs, targets)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    per_record_loss(gsm, inputs, targets).sum().backward()
    got = torch.cat([p.grad_sample.flatten(start_dim=1) for p in model.parameters()], dim=1)
    for i, ref in enumerate(expected):
        torch.testing.assert_close(got[i], ref, rtol=1e-4, atol=1e-6, msg=f"{kind}: record {i}")


@pytest.mark.parametrize("kind", KINDS)
def test_ghost_clipping_norms_equal_reference_norms(kind):
    model = make_model(kind)
    inputs, targets = make_batch()
    expected = torch.stack([g.norm() for g in reference_grads(copy.deepcopy(model), inputs, targets)])
    gsm = make_ghost_module(model, max_grad_norm=1.0)  # the module our DP training uses
    per_record_loss(gsm, inputs, targets).mean().backward()  # mean-reduced, as in training
    torch.testing.assert_close(gsm.get_norm_sample(), expected, rtol=1e-4, atol=1e-6)


def private_step(model, inputs, targets, mode: str):
    """One DP-SGD step through Opacus's grad-sample module and DP optimizer, as our training wires them."""
    module, dp_optimizer = wrap_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        grad_sample_mode=mode,
        noise_multiplier=0.0,
        max_grad_norm=1e6,
        expected_batch_size=len(inputs),
    )
    for x, y in DataLoader(TensorDataset(inputs, targets), batch_size=len(inputs)):
        dp_optimizer.zero_grad()
        dp_loss_backward(module, dp_optimizer, x, y, mode)
        dp_optimizer.step()
    return module


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bk"])
@pytest.mark.parametrize("kind", KINDS)
def test_private_step_without_noise_or_clipping_equals_plain_step(kind, mode):
    inputs, targets = make_batch()
    plain = make_model(kind)
    private = private_step(copy.deepcopy(plain), inputs, targets, mode)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.5)
    per_record_loss(plain, inputs, targets).mean().backward()
    optimizer.step()
    after = dict(private.named_parameters())
    for name, p in plain.named_parameters():
        q = after.get(name, after.get(f"_module.{name}"))
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=f"{kind}/{mode}: {name}")


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bk"])
@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_runs(kind, mode):
    model = make_model(kind)
    inputs, targets = make_batch()
    module, dp_optimizer = wrap_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        grad_sample_mode=mode,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=2,
    )
    before = [p.detach().clone() for p in module.parameters()]
    dp_optimizer.zero_grad()
    losses = dp_loss_backward(module, dp_optimizer, inputs[:0], targets[:0], mode)
    assert losses.shape == (0,)
    dp_optimizer.step()
    # An empty Poisson batch still takes a noisy step: the noise is what keeps the batch size private.
    changed = any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))
    assert changed


@pytest.mark.parametrize("kind", ["transformer", "rnn-tied"])
def test_ghost_norms_with_a_loss_window_equal_reference_norms(kind):
    """DP training keeps the loss on the most recent positions only; norms must stay exact."""
    model = make_model(kind)
    inputs, targets = make_batch()
    expected = []
    reference = copy.deepcopy(model)
    for i in range(len(inputs)):
        reference.zero_grad(set_to_none=False)
        per_record_loss(reference, inputs[i : i + 1], targets[i : i + 1], loss_window=3).sum().backward()
        expected.append(torch.cat([p.grad.flatten() for p in reference.parameters()]).norm())
    gsm = make_ghost_module(model, max_grad_norm=1.0)
    per_record_loss(gsm, inputs, targets, loss_window=3).mean().backward()
    torch.testing.assert_close(gsm.get_norm_sample(), torch.stack(expected), rtol=1e-4, atol=1e-6)
