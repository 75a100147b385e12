"""Per-customer chronological sequences, the leave-one-out split, and the torch datasets built on them.

One dataset record is one customer's whole (truncated) history: this is the privacy unit DP-SGD clips and
the unit Poisson sampling draws. Sequence building is plain numpy so it can be tested without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

PAD = 0


@dataclass(frozen=True)
class CustomerSequences:
    """Chronological model item ids (1..n_items) per customer, in a stable customer order."""

    user_ids: tuple[str, ...]
    items: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.user_ids)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.items), dtype=np.int64, count=len(self.items))


def sequences_from_frame(frame: pd.DataFrame) -> CustomerSequences:
    """Group an encoded interaction frame (columns ``user_id``, ``timestamp``, ``item``) by customer.

    Order inside a customer is by timestamp, ties broken by file order (a stable sort), which matters for
    day-granularity timestamps such as the Amazon sets. Customers come out sorted by id for determinism.
    """
    if frame.empty:
        return CustomerSequences((), ())
    ordered = frame.reset_index(drop=True)
    order = np.lexsort(
        (np.arange(len(ordered)), ordered["timestamp"].to_numpy(), ordered["user_id"].to_numpy())
    )
    users = ordered["user_id"].to_numpy()[order]
    items = ordered["item"].to_numpy(dtype=np.int64)[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    bounds = np.r_[starts, len(users)]
    return CustomerSequences(
        user_ids=tuple(str(users[s]) for s in starts),
        items=tuple(items[bounds[i] : bounds[i + 1]] for i in range(len(starts))),
    )


@dataclass(frozen=True)
class EvalCase:
    """What one customer is evaluated on: the history the model sees and the held-out next item."""

    history: np.ndarray
    target: int


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Last item = test, second-to-last = validation, the rest = training.

    Customers with fewer than 3 items are training-only (nothing left to hold out). ``eval_users`` indexes
    into the customer list for both validation and test cases.
    """

    train: tuple[np.ndarray, ...]
    valid: tuple[EvalCase, ...]
    test: tuple[EvalCase, ...]
    eval_users: tuple[int, ...]


def leave_one_out(sequences: CustomerSequences) -> LeaveOneOutSplit:
    train, valid, test, users = [], [], [], []
    for index, seq in enumerate(sequences.items):
        if len(seq) >= 3:
            train.append(seq[:-2])
            valid.append(EvalCase(history=seq[:-2], target=int(seq[-2])))
            test.append(EvalCase(history=seq[:-1], target=int(seq[-1])))
            users.append(index)
        else:
            train.append(seq)
    return LeaveOneOutSplit(tuple(train), tuple(valid), tuple(test), tuple(users))


def left_pad(seq: np.ndarray, length: int) -> np.ndarray:
    """The most recent ``length`` items, left-padded with 0."""
    out = np.zeros(length, dtype=np.int64)
    tail = seq[-length:] if length else seq[:0]
    if len(tail):
        out[length - len(tail) :] = tail
    return out


class TrainSequenceDataset(Dataset):
    """One record per customer: inputs ``x[:-1]`` and next-item targets ``x[1:]``, left-padded to ``max_len``.

    Customers whose training part has fewer than 2 items have no target and are left out (they would add no
    gradient). ``lengths`` (targets per record) lets a non-private loader bucket by length.
    """

    def __init__(self, train: tuple[np.ndarray, ...] | list[np.ndarray], max_len: int) -> None:
        kept = [s for s in train if len(s) >= 2]
        self.max_len = max_len
        self.inputs = (
            torch.from_numpy(np.stack([left_pad(s[:-1], max_len) for s in kept]))
            if kept
            else (torch.zeros(0, max_len, dtype=torch.long))
        )
        self.targets = (
            torch.from_numpy(np.stack([left_pad(s[1:], max_len) for s in kept]))
            if kept
            else (torch.zeros(0, max_len, dtype=torch.long))
        )
        self.lengths = (self.targets != PAD).sum(dim=1)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]


def trim_padding(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop leading columns that are padding in every row of the first tensor (left padding).

    Cheap and exact for all three models: padded steps are masked, so a narrower window changes nothing.
    """
    first = tensors[0]
    if first.numel() == 0:
        return tensors
    real_cols = (first != PAD).any(dim=0).nonzero()
    start = int(real_cols[0]) if len(real_cols) else first.shape[1] - 1
    # Contiguous copies: Opacus's ghost embedding-norm sampler calls .view() on the ids.
    return tuple(t[:, start:].contiguous() for t in tensors)


def collate_trimmed(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.stack([b[0] for b in batch])
    targets = torch.stack([b[1] for b in batch])
    return trim_padding(inputs, targets)  # type: ignore[return-value]


class EvalSequenceDataset:
    """Evaluation cases as padded histories, targets, and the full set of items each customer has seen.

    ``seen`` is stored CSR-style (``seen_offsets``, ``seen_items``) because histories are ragged; ranking
    excludes every seen item (the full history, not only the ``max_len`` window).
    """

    def __init__(self, cases: tuple[EvalCase, ...] | list[EvalCase], max_len: int) -> None:
        self.histories = torch.from_numpy(
            np.stack([left_pad(c.history, max_len) for c in cases])
            if cases
            else np.zeros((0, max_len), np.int64)
        )
        self.targets = torch.tensor([c.target for c in cases], dtype=torch.long)
        seen = [np.unique(c.history) for c in cases]
        self.seen_offsets = np.r_[0, np.cumsum([len(s) for s in seen])].astype(np.int64)
        self.seen_items = np.concatenate(seen).astype(np.int64) if seen else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def seen_for(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(row, item)`` index pairs of seen items for cases ``start:stop`` (rows relative to start)."""
        lo, hi = self.seen_offsets[start], self.seen_offsets[stop]
        counts = np.diff(self.seen_offsets[start : stop + 1])
        rows = np.repeat(np.arange(stop - start), counts)
        return torch.from_numpy(rows), torch.from_numpy(self.seen_items[lo:hi])
