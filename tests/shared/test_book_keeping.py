"""The book-keeping DP backward equals the definition: per-record norms and the clipped sum, exactly.

Ground truth is each record's gradient computed alone (plain autograd on a one-record batch); the check runs
for every model kind, tied and untied, with a loss window, label smoothing, padding, and a clip that binds
for some records and not others.
"""

from __future__ import annotations

import pytest
import torch

from shared.models import per_record_loss
from shared.privacy.book_keeping import book_keeping_backward
from shared.privacy.tied_ghost import make_ghost_module
from tests.shared.test_models_opacus import KINDS, make_batch, make_model


def single_record_grads(model, inputs, targets, smoothing, window) -> torch.Tensor:
    rows = []
    for i in range(len(inputs)):
        model.zero_grad(set_to_none=False)
        per_record_loss(model, inputs[i : i + 1], targets[i : i + 1], smoothing, window).sum().backward()
        rows.append(torch.cat([p.grad.flatten().clone() for p in model.parameters()]))
    return torch.stack(rows)  # [B, P]


@pytest.mark.parametrize("smoothing,window", [(0.0, None), (0.1, 3)])
@pytest.mark.parametrize("kind", KINDS)
def test_norms_and_clipped_sum_equal_single_record_reference(kind, smoothing, window):
    model = make_model(kind)
    inputs, targets = make_batch()
    reference = single_record_grads(model, inputs, targets, smoothing, window).double()
    norms = reference.norm(dim=1)
    clip = float(norms.median())  # binds for about half the records
    module = make_ghost_module(model, clip)
    losses = book_keeping_backward(
        module, inputs, targets, label_smoothing=smoothing, loss_window=window, chunk_elements=200
    )
    torch.testing.assert_close(module.per_sample_gradient_norms.double(), norms, rtol=1e-4, atol=1e-6)
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    expected = (coef.unsqueeze(1) * reference).sum(dim=0)
    got = torch.cat([p.grad.flatten() for p in module.parameters()]).double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        plain = per_record_loss(model, inputs, targets, smoothing, window)
    torch.testing.assert_close(losses, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["transformer-tied", "dnn"])
def test_chunking_does_not_change_the_result(kind):
    inputs, targets = make_batch(seed=4)
    grads = []
    for chunk in (10**9, 37 * 9, 1):  # one chunk; about one record per chunk; the minimum
        model = make_model(kind)
        module = make_ghost_module(model, 0.5)
        book_keeping_backward(module, inputs, targets, chunk_elements=chunk)
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-5, atol=1e-7)


def test_cross_term_matters_for_a_tied_table(monkeypatch):
    """The same check fails when the tied table's cross term <dW_i, dE_i> is left out."""
    inputs, targets = make_batch()
    reference = single_record_grads(make_model("transformer-tied"), inputs, targets, 0.0, None).norm(dim=1)
    real_einsum = torch.einsum

    def without_cross(equation, *operands):
        out = real_einsum(equation, *operands)
        return torch.zeros_like(out) if equation == "btr,brh,bth->b" else out

    monkeypatch.setattr("shared.privacy.book_keeping.torch.einsum", without_cross)
    module = make_ghost_module(make_model("transformer-tied"), 1e6)
    book_keeping_backward(module, inputs, targets)
    wrong = module.per_sample_gradient_norms
    assert not torch.allclose(wrong, reference, rtol=1e-3)
    assert (wrong - reference).abs().max() > 1e-3 * reference.max()


@pytest.mark.parametrize("kind", ["rnn", "transformer-tied"])
def test_empty_batch_leaves_zero_gradients(kind):
    model = make_model(kind)
    module = make_ghost_module(model, 1.0)
    inputs, targets = make_batch()
    losses = book_keeping_backward(module, inputs[:0], targets[:0])
    assert losses.numel() == 0
    assert all(p.grad is not None and not p.grad.any() for p in module.parameters())


def test_a_batch_without_any_target_clips_nothing_and_leaves_zero_gradients():
    model = make_model("dnn-tied")
    module = make_ghost_module(model, 1.0)
    inputs, targets = make_batch()
    losses = book_keeping_backward(module, inputs, torch.zeros_like(targets))
    assert not losses.any()
    assert all(p.grad is not None and not p.grad.any() for p in module.parameters())
