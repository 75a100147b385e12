"""Sequence building, the leave-one-out split, padding, and the datasets training and evaluation read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from shared.data.sequences import (
    PAD,
    CustomerSequences,
    EvalCase,
    EvalSequenceDataset,
    TrainSequenceDataset,
    collate_trimmed,
    leave_one_out,
    left_pad,
    sequences_from_frame,
    trim_padding,
)
from shared.models import MODEL_REGISTRY, ModelConfig, build_model, per_record_loss, token_losses

N_ITEMS = 23


def _frame(rows: list[tuple[str, int, int]], index: list[int] | None = None) -> pd.DataFrame:
    users, stamps, items = zip(*rows, strict=True) if rows else ((), (), ())
    return pd.DataFrame(
        {
            "user_id": pd.array(list(users), dtype="str"),
            "timestamp": np.asarray(stamps, dtype=np.int64),
            "item": np.asarray(items, dtype=np.int64),
        },
        index=index,
    )


def _as_lists(seqs: CustomerSequences) -> dict[str, list[int]]:
    return {u: s.tolist() for u, s in zip(seqs.user_ids, seqs.items, strict=True)}


# ------------------------------------------------------------------------------------ sequences_from_frame


def test_sequences_from_frame_orders_by_time_and_keeps_file_order_on_ties():
    # Prepare: interleaved customers, out-of-order timestamps, equal timestamps (day granularity).
    rows = [("b", 5, 10), ("a", 3, 20), ("b", 1, 11), ("b", 5, 12), ("a", 3, 21), ("a", 2, 22), ("b", 5, 13)]

    # Execute
    seqs = sequences_from_frame(_frame(rows))

    # Assert: customers sorted by id; ties (a@3, b@5) keep the order they appear in the file.
    assert seqs.user_ids == ("a", "b")
    assert _as_lists(seqs) == {"a": [22, 20, 21], "b": [11, 10, 12, 13]}
    assert seqs.lengths().tolist() == [3, 4]


def test_sequences_from_frame_file_order_is_row_position_not_index_label():
    # Prepare: the same tie as above but with a reversed index, as after a filter/sort upstream.
    rows = [("a", 7, 1), ("a", 7, 2), ("a", 7, 3)]

    seqs = sequences_from_frame(_frame(rows, index=[2, 1, 0]))

    assert _as_lists(seqs) == {"a": [1, 2, 3]}


def test_sequences_from_frame_empty():
    seqs = sequences_from_frame(_frame([]))

    assert len(seqs) == 0
    assert seqs.lengths().tolist() == []


# ------------------------------------------------------------------------------------------ leave_one_out


def test_leave_one_out_split():
    # Prepare: a long customer, a too-short one, and one with exactly 3 items.
    seqs = CustomerSequences(
        ("u0", "u1", "u2"), (np.array([1, 2, 3, 4, 5]), np.array([6, 7]), np.array([8, 9, 10]))
    )

    # Execute
    split = leave_one_out(seqs)

    # Assert
    assert [t.tolist() for t in split.train] == [[1, 2, 3], [6, 7], [8]]
    assert split.eval_users == (0, 2)  # u1 has < 3 items: train-only, never evaluated
    assert [(c.history.tolist(), c.target) for c in split.valid] == [([1, 2, 3], 4), ([8], 9)]
    assert [(c.history.tolist(), c.target) for c in split.test] == [([1, 2, 3, 4], 5), ([8, 9], 10)]


# ------------------------------------------------------------------------------------------------ left_pad


@pytest.mark.parametrize(
    ("seq", "length", "expected"),
    [
        ([1, 2, 3, 4, 5], 3, [3, 4, 5]),  # truncates to the most recent items
        ([1, 2], 4, [0, 0, 1, 2]),
        ([1, 2, 3], 3, [1, 2, 3]),
        ([], 2, [0, 0]),
        ([1, 2], 0, []),
    ],
)
def test_left_pad(seq, length, expected):
    out = left_pad(np.asarray(seq, dtype=np.int64), length)

    assert out.tolist() == expected
    assert out.dtype == np.int64


# ------------------------------------------------------------------------------------ TrainSequenceDataset


def test_train_dataset_shifts_pads_and_drops_short_records():
    # Prepare: [5] has no target (dropped); [1..4] is longer than the window.
    train = [np.array([1, 2, 3, 4]), np.array([5]), np.array([6, 7])]

    # Execute
    ds = TrainSequenceDataset(train, max_len=3)

    # Assert
    assert len(ds) == 2
    assert ds.inputs.tolist() == [[1, 2, 3], [0, 0, 6]]
    assert ds.targets.tolist() == [[2, 3, 4], [0, 0, 7]]
    assert ds.lengths.tolist() == [3, 1]
    x, y = ds[1]
    assert x.tolist() == [0, 0, 6] and y.tolist() == [0, 0, 7]


def test_train_dataset_truncates_to_most_recent_window():
    ds = TrainSequenceDataset([np.arange(1, 11)], max_len=4)

    assert ds.inputs.tolist() == [[6, 7, 8, 9]]
    assert ds.targets.tolist() == [[7, 8, 9, 10]]


@pytest.mark.parametrize("train", [[], [np.array([3]), np.array([], dtype=np.int64)]])
def test_train_dataset_empty(train):
    ds = TrainSequenceDataset(train, max_len=5)

    assert len(ds) == 0
    assert ds.inputs.shape == (0, 5) and ds.targets.shape == (0, 5)
    assert ds.lengths.tolist() == []


# -------------------------------------------------------------------------------------------- trim_padding


def test_trim_padding_removes_only_all_padding_leading_columns():
    inputs = torch.tensor([[0, 0, 1, 2], [0, 3, 4, 5], [0, 0, 0, 6]])
    targets = torch.tensor([[0, 0, 2, 9], [0, 4, 5, 9], [0, 0, 0, 9]])

    x, y = trim_padding(inputs, targets)

    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [0, 0, 6]]
    assert y.tolist() == [[0, 2, 9], [4, 5, 9], [0, 0, 9]]


def test_trim_padding_full_width_batch_is_unchanged():
    inputs = torch.tensor([[1, 2], [0, 3]])

    (x,) = trim_padding(inputs)

    assert torch.equal(x, inputs)


def test_trim_padding_all_padding_keeps_one_column_and_empty_is_untouched():
    (x,) = trim_padding(torch.zeros(2, 5, dtype=torch.long))
    empty = torch.zeros(0, 5, dtype=torch.long)
    (e,) = trim_padding(empty)

    assert x.shape == (2, 1)
    assert e is empty


def test_collate_trimmed_stacks_and_trims():
    ds = TrainSequenceDataset([np.array([1, 2, 3]), np.array([4, 5])], max_len=6)

    x, y = collate_trimmed([ds[0], ds[1]])

    assert x.tolist() == [[1, 2], [0, 4]]
    assert y.tolist() == [[2, 3], [0, 5]]


def _padded_batch(seed: int, max_len: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (inputs, targets) with at least 4 all-padding leading columns."""
    rng = np.random.default_rng(seed)
    train = [rng.integers(1, N_ITEMS + 1, size=n) for n in (2, 4, 7, 3, 5)]
    ds = TrainSequenceDataset(train, max_len=max_len)
    return ds.inputs, ds.targets


@pytest.mark.parametrize("kind", sorted(MODEL_REGISTRY))
def test_trim_padding_never_changes_loss_or_score(kind):
    # Prepare: a real model in eval mode without dropout; a batch whose first 4 columns are padding.
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, dim=16, max_len=10, dropout=0.0, emb_dropout=0.0, n_heads=2, mlp_hidden=24)
    model = build_model(cfg, N_ITEMS).eval()
    inputs, targets = _padded_batch(seed=3)
    trimmed_inputs, trimmed_targets = trim_padding(inputs, targets)
    assert trimmed_inputs.shape[1] == 6 < inputs.shape[1]  # the test must really trim something

    # Execute
    with torch.no_grad():
        full_record = per_record_loss(model, inputs, targets)
        trim_record = per_record_loss(model, trimmed_inputs, trimmed_targets)
        full_tokens, full_index = token_losses(model, inputs, targets)
        trim_tokens, trim_index = token_losses(model, trimmed_inputs, trimmed_targets)
        full_score = model.score(inputs)
        trim_score = model.score(trimmed_inputs)

    # Assert
    torch.testing.assert_close(trim_record, full_record, atol=1e-5, rtol=0)
    torch.testing.assert_close(trim_tokens, full_tokens, atol=1e-5, rtol=0)
    assert torch.equal(trim_index, full_index)
    torch.testing.assert_close(trim_score, full_score, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------- EvalSequenceDataset


def test_eval_dataset_pads_histories_and_seen_for_covers_the_full_history():
    # Prepare: case 0's history is longer than the window; case 1 repeats item 2.
    cases = [
        EvalCase(history=np.array([1, 2, 3, 4, 5, 6]), target=7),
        EvalCase(history=np.array([2, 2, 8]), target=9),
        EvalCase(history=np.array([5]), target=1),
    ]

    # Execute
    ds = EvalSequenceDataset(cases, max_len=3)

    # Assert
    assert len(ds) == 3
    assert ds.histories.tolist() == [[4, 5, 6], [2, 2, 8], [0, 0, 5]]
    assert ds.targets.tolist() == [7, 9, 1]
    rows, items = ds.seen_for(0, 3)
    assert sorted(zip(rows.tolist(), items.tolist(), strict=True)) == [
        (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (1, 2), (1, 8), (2, 5),
    ]  # fmt: skip
    rows, items = ds.seen_for(1, 3)  # rows are relative to the slice start
    assert sorted(zip(rows.tolist(), items.tolist(), strict=True)) == [(0, 2), (0, 8), (1, 5)]
    rows, items = ds.seen_for(2, 2)
    assert len(rows) == 0 and len(items) == 0


def test_eval_dataset_empty():
    ds = EvalSequenceDataset([], max_len=4)

    assert len(ds) == 0
    assert ds.histories.shape == (0, 4)
    rows, items = ds.seen_for(0, 0)
    assert len(rows) == 0 and len(items) == 0


def test_pad_constant_is_zero():
    # Every module above assumes item 0 is padding; the catalog reserves it.
    assert PAD == 0
