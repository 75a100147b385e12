"""In-memory histories and popularity, the durable event log, and the batch worker they rely on."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

from client.serving.batching import BatchWorker
from client.serving.event_log import EventLog
from client.serving.histories import HistoryStore
from shared.data.schema import read_interactions


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item", "timestamp", "event"])


def test_load_orders_by_time_keeps_a_window_and_remembers_everything_seen():
    store = HistoryStore(n_items=10, keep=3)
    store.load(frame([("a", 5, 30, "view"), ("a", 1, 10, "cart"), ("a", 2, 20, "view"), ("a", 3, 40, "view"),
                      ("a", 4, 50, "purchase"), ("b", 7, 5, "view")]))  # fmt: skip
    snap = store.snapshot("a")
    assert snap.recent.tolist() == [5, 3, 4] and snap.events == ["view", "view", "purchase"]
    assert sorted(snap.seen.tolist()) == [1, 2, 3, 4, 5]
    assert store.snapshot("nobody") is None and len(store) == 2
    store.add("b", 9, 60, "cart")
    assert store.snapshot("b").recent.tolist() == [7, 9]


def test_popularity_counts_live_events_and_excludes_what_it_is_told(monkeypatch):
    monkeypatch.setattr("client.serving.histories._POPULARITY_REFRESH_S", 0.0)
    store = HistoryStore(n_items=5, keep=10)
    store.load(frame([("a", 2, 1, "view"), ("b", 2, 1, "view"), ("c", 3, 1, "view")]))
    items, counts = store.popular(3)
    assert items.tolist() == [2, 3, 1] and counts.tolist() == [2, 1, 0]
    for _ in range(3):
        store.add("d", 4, 2, "view")
    assert store.popular(2)[0].tolist() == [4, 2]
    assert store.popular(2, exclude=np.array([4]))[0].tolist() == [2, 3]


def test_event_log_writes_a_readable_csv_and_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / "events.csv"
    log = EventLog(path)
    log.append([("c1", "i1", 100, "view"), ('c,"2', "i2", 101, "cart")])  # quoting survives
    log.close()
    with open(path, "ab") as fh:
        fh.write(b"c3,i3,10")  # a crash mid-line
    log = EventLog(path)
    log.append([("c4", "i4", 103, "purchase")])
    log.close()
    rows, report = read_interactions(path, lenient=True)
    assert rows["user_id"].tolist() == ["c1", 'c,"2', "c3", "c4"]
    assert rows["event"].tolist()[-1] == "purchase" and report.rows_dropped == 0


def test_batch_worker_batches_what_queued_up_and_reports_errors():
    gate = threading.Event()
    sizes = []

    def process(items):
        gate.wait(5)
        sizes.append(len(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [i * 2 for i in items]

    worker = BatchWorker("t", process, max_batch=8)
    worker.start()
    first = worker.submit(1)
    time.sleep(0.05)  # the worker now holds the first item alone and waits on the gate
    rest = [worker.submit(i) for i in range(2, 6)]
    gate.set()
    assert [f.result(5) for f in [first, *rest]] == [2, 4, 6, 8, 10]
    assert sizes == [1, 4]
    with pytest.raises(ValueError, match="bad item"):
        worker.submit("bad").result(5)
    assert worker.submit(7).result(5) == 14  # the worker survived
    worker.close()
