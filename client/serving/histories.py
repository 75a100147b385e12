"""Customers' recent items and the store's item popularity, in memory, fed by the logs and live events.

A recommendation needs the customer's latest items (the model's window) and everything they have seen (to
exclude it), both in microseconds; rebuilding them from the log per request would cost milliseconds. Item
ids are stored as model indexes (catalog position + 1). One lock guards both structures: writers are the
event writer thread, readers are request handlers, and every critical section is a few dict operations.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.data.schema import EVENTS

EVENT_CODE = {name: code for code, name in enumerate(EVENTS)}
# How stale the cached popularity order may get under a stream of events (re-sorting 100k counts ~5 ms).
_POPULARITY_REFRESH_S = 1.0


@dataclass(frozen=True)
class HistorySnapshot:
    """A copy taken under the lock: ``recent`` oldest first, ``seen`` every item ever interacted with."""

    recent: np.ndarray  # int64 [<= keep]
    seen: np.ndarray  # int64, unique
    timestamps: np.ndarray  # int64, aligned with recent
    events: list[str]


class _Customer:
    __slots__ = ("recent", "seen")

    def __init__(self, keep: int) -> None:
        self.recent: deque[tuple[int, int, int]] = deque(maxlen=keep)  # (item, timestamp, event code)
        self.seen: set[int] = set()


class HistoryStore:
    def __init__(self, n_items: int, keep: int) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._customers: dict[str, _Customer] = {}
        self._counts = np.zeros(n_items + 1, dtype=np.int64)  # index 0 = padding, never recommended
        self._order: np.ndarray | None = None
        self._order_counts = self._counts.copy()
        self._order_time = 0.0
        self._dirty = True

    def __len__(self) -> int:
        return len(self._customers)

    def load(self, frame: pd.DataFrame) -> None:
        """Add an encoded interaction frame (``user_id``, ``item`` index, ``timestamp``, ``event``).

        Rows are ordered by timestamp within each customer (stable, so file order breaks ties).
        """
        if frame.empty:
            return
        frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
        users = frame["user_id"].to_numpy(dtype=object)
        items = frame["item"].to_numpy(dtype=np.int64)
        stamps = frame["timestamp"].to_numpy(dtype=np.int64)
        codes = frame["event"].map(EVENT_CODE).fillna(0).to_numpy(dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], len(users)]
        with self._lock:
            np.add.at(self._counts, items, 1)
            self._dirty = True
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                customer = self._customers.get(users[start])
                if customer is None:
                    customer = self._customers[users[start]] = _Customer(self.keep)
                tail = max(start, end - self.keep)
                customer.recent.extend(
                    zip(
                        items[tail:end].tolist(),
                        stamps[tail:end].tolist(),
                        codes[tail:end].tolist(),
                        strict=True,
                    )
                )
                customer.seen.update(items[start:end].tolist())

    def add(self, customer_id: str, item: int, timestamp: int, event: str) -> None:
        """Record one live event (``item`` already a known model index)."""
        with self._lock:
            customer = self._customers.get(customer_id)
            if customer is None:
                customer = self._customers[customer_id] = _Customer(self.keep)
            customer.recent.append((item, timestamp, EVENT_CODE.get(event, 0)))
            customer.seen.add(item)
            self._counts[item] += 1
            self._dirty = True

    def snapshot(self, customer_id: str) -> HistorySnapshot | None:
        with self._lock:
            customer = self._customers.get(customer_id)
            if customer is None:
                return None
            recent = list(customer.recent)
            seen = np.fromiter(customer.seen, dtype=np.int64, count=len(customer.seen))
        items, stamps, codes = zip(*recent, strict=True) if recent else ((), (), ())
        return HistorySnapshot(
            recent=np.asarray(items, dtype=np.int64),
            seen=seen,
            timestamps=np.asarray(stamps, dtype=np.int64),
            events=[EVENTS[c] for c in codes],
        )

    def popular(self, n: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most frequent items of this store not in ``exclude``: ``(indexes, counts)``."""
        order, counts = self._popularity_order()
        if exclude is not None and len(exclude):
            # Only the first n + |exclude| candidates can survive the filter.
            head = order[: n + len(exclude)]
            head = head[~np.isin(head, exclude)]
        else:
            head = order
        top = head[:n]
        return top, counts[top]

    def _popularity_order(self) -> tuple[np.ndarray, np.ndarray]:
        now = time.monotonic()
        with self._lock:
            order = self._order
            if order is None or (self._dirty and now - self._order_time >= _POPULARITY_REFRESH_S):
                counts = self._counts.copy()
                # Stable sort: ties keep catalog order, so the fallback list is deterministic.
                order = np.argsort(-counts[1:], kind="stable") + 1
                self._order, self._order_counts = order, counts
                self._order_time, self._dirty = now, False
            return order, self._order_counts
