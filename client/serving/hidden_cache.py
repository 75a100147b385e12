"""A bounded LRU of encoder outputs, keyed by the exact window a customer's next list is computed from.

A shopper pages through a store: the same history is scored again and again until an event changes it. The
encoder (two attention blocks for the transformer) is the only per-request work that depends on the history
alone, so its output ``h`` is kept per window. The key is the window's bytes, so a new event (a new window)
can never hit a stale entry; one cache belongs to one ``ServingModel``, so a model swap starts empty.
Only the event loop touches it (scoring runs there), so no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

DEFAULT_CACHE_SIZE = 50_000  # windows whose encoder output is kept: 50k x 64 floats = 13 MB


class HiddenCache:
    """``lookup(windows, encode)``: cached rows where present, one ``encode`` call for the rest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, windows: Sequence[np.ndarray], encode: Callable[[Sequence[np.ndarray]], torch.Tensor]
    ) -> torch.Tensor:
        """``[B, H]`` hidden states, row i for ``windows[i]``; ``encode`` gets only the windows not cached."""
        keys = [np.ascontiguousarray(w, dtype=np.int64).tobytes() for w in windows]
        rows: list[torch.Tensor | None] = [None] * len(keys)
        missing: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            cached = self._entries.get(key) if self.capacity else None
            if cached is not None:
                self._entries.move_to_end(key)
                rows[i] = cached
            else:
                missing.setdefault(key, []).append(i)
        self.hits += len(keys) - sum(len(v) for v in missing.values())
        self.misses += len(missing)
        if missing:
            fresh = encode([windows[positions[0]] for positions in missing.values()])
            for row, (key, positions) in zip(fresh, missing.items(), strict=True):
                for i in positions:
                    rows[i] = row
                if self.capacity:
                    self._entries[key] = row.clone()  # not a view: the batch tensor can be freed
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return torch.stack(rows)  # type: ignore[arg-type]
