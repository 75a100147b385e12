"""Batching, the shape both scoring and durable writes need; neither waits for a batch to fill.

Scoring (``LoopBatcher``, on the event loop): B pending requests cost one pass over the item matrix instead of
B (the matrix is the memory traffic). Event writes (``BatchWorker``, one thread, because ``fsync`` blocks): B
queued events cost one ``fsync`` instead of B (group commit). A batch is whatever queued up while the previous
one ran, so an idle server answers a lone request at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)
_STOP = object()


class BatchWorker(Generic[T, R]):
    """``submit(item)`` returns a Future; ``process(items)`` runs on the worker, one result per item."""

    def __init__(self, name: str, process: Callable[[Sequence[T]], Sequence[R]], max_batch: int) -> None:
        self._process = process
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()

    def submit(self, item: T) -> Future[R]:
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(_STOP)
        if self._started:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is _STOP:
                    stop = True
                    break
                batch.append(entry)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[tuple[T, Future[R]]]) -> None:
        try:
            results = self._process([item for item, _ in batch])
        except Exception as err:  # the callers turn it into an error reply; the worker must survive
            log.exception("batch of %d failed", len(batch))
            for _, future in batch:
                future.set_exception(err)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)


class LoopBatcher(Generic[T, R]):
    """Batching on the event loop itself: requests that arrive in one loop iteration are scored together.

    No thread hop and no GIL hand-over per request; the loop is busy for the ~1 ms a batch takes, and whatever
    arrives meanwhile waits in the socket buffers and forms the next batch.
    """

    def __init__(self, process: Callable[[Sequence[T]], Sequence[R]], max_batch: int) -> None:
        self._process = process
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._run)  # after the callbacks already ready: their requests join this batch
        return await future

    def _run(self) -> None:
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._scheduled = bool(self._pending)
        if self._pending:
            asyncio.get_running_loop().call_soon(self._run)
        try:
            results = self._process([item for item, _ in batch])
        except Exception as err:  # the callers turn it into an error reply
            log.exception("batch of %d failed", len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # the client may have gone away
                future.set_result(result)
