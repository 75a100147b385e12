"""From an interaction log and a catalog to the tensors training and evaluation read.

Both a store (its own log) and a simulation (a whole data set) go through here, so the split and the
truncation are the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from shared.data.catalog import Catalog, encode_frame
from shared.data.sequences import (
    CustomerSequences,
    EvalSequenceDataset,
    LeaveOneOutSplit,
    TrainSequenceDataset,
    leave_one_out,
    sequences_from_frame,
)


@dataclass(frozen=True)
class PreparedData:
    catalog: Catalog
    sequences: CustomerSequences
    split: LeaveOneOutSplit
    train: TrainSequenceDataset
    valid: EvalSequenceDataset
    test: EvalSequenceDataset
    unknown_items_dropped: int

    def summary(self) -> dict[str, int | float]:
        lengths = self.sequences.lengths()
        return {
            "customers": len(self.sequences),
            "items": self.catalog.n_items,
            "interactions": int(lengths.sum()),
            "mean_history": float(lengths.mean()) if len(lengths) else 0.0,
            "train_records": len(self.train),
            "eval_customers": len(self.test),
            "unknown_items_dropped": self.unknown_items_dropped,
        }


def prepare(interactions: pd.DataFrame, catalog: Catalog, max_len: int) -> PreparedData:
    """Encode items against the catalog (unknown ones counted and dropped), build sequences and the split."""
    encoded, unknown = encode_frame(interactions, catalog)
    sequences = sequences_from_frame(encoded)
    split = leave_one_out(sequences)
    return PreparedData(
        catalog=catalog,
        sequences=sequences,
        split=split,
        train=TrainSequenceDataset(split.train, max_len),
        valid=EvalSequenceDataset(split.valid, max_len),
        test=EvalSequenceDataset(split.test, max_len),
        unknown_items_dropped=unknown,
    )
