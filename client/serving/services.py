"""What the routes share: catalog, histories, model holder, event writer, watcher, metrics, ledger view.

Built once per app by ``create_app``; everything is loaded here (catalog, histories, model) so a started
server is ready at once. The threads (event writer, model watcher) start and stop with the app's lifespan.
Scoring runs on the event loop in batches (``LoopBatcher``): measured here, a scoring thread lost more to
GIL hand-overs than it gained.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from client import model_store
from client.serving.batching import BatchWorker, LoopBatcher
from client.serving.config import ServeConfig
from client.serving.event_log import EventLog, Row
from client.serving.histories import HistoryStore
from client.serving.ledger_view import LedgerView
from client.serving.metrics import ServingMetrics
from client.serving.model_holder import ModelHolder, ModelWatcher
from client.serving.schemas import ModelInfo, ModelStatus, RecommendedItem, RefusalInfo
from client.serving.scoring import ScoreRequest, ScoreResult, ServingModel, naive_recommend, score_batch
from client.serving.state import StoreLayout
from shared.data.catalog import Catalog, encode_frame
from shared.data.schema import read_interactions

log = logging.getLogger(__name__)


@dataclass
class EventWrite:
    rows: list[Row]
    known: list[tuple[str, int, int, str]]  # customer, item index, timestamp, event


class Services:
    """Everything the routes share; built once per app."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.layout = StoreLayout.from_config(config)
        self.metrics = ServingMetrics()
        self.catalog = Catalog.load(self.layout.catalog)
        self.index_of = self.catalog.index_of  # item id -> model index (1-based)
        self.histories = HistoryStore(self.catalog.n_items, config.history_keep)
        self._load_histories()
        self.holder = ModelHolder(
            config.state_dir, self.catalog.content_hash, self.metrics, config.coarse, config.hidden_cache
        )
        self.holder.initial_load()
        self.event_log = EventLog(self.layout.events)
        self.scorer: LoopBatcher[ScoreRequest, ScoreResult] = LoopBatcher(self._score, config.max_batch)
        self.writer: BatchWorker[EventWrite, None] = BatchWorker("event-writer", self._write_events, 256)
        self.watcher = ModelWatcher(self.holder, config.poll_seconds)
        self.ledger = LedgerView(self.layout.ledger, config.epsilon_budget)

    def _load_histories(self) -> None:
        for path in (self.layout.interactions, self.layout.events):
            if path is None or not path.exists() or _header_only(path):
                continue
            frame, report = read_interactions(path, lenient=True)
            encoded, unknown = encode_frame(frame, self.catalog)
            self.histories.load(encoded)
            # Counts only: customer ids are personal data and stay out of logs.
            log.info(
                "%s: %d rows kept, %d malformed dropped, %d with unknown items dropped",
                path.name,
                len(encoded),
                report.rows_dropped,
                unknown,
            )
        self.metrics.customers.set(len(self.histories))

    def start(self) -> None:
        self.writer.start()
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.writer.close()
        self.event_log.close()

    # -------------------------------------------------------------------------------- worker bodies

    def _score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        serving = self.holder.current  # one snapshot for the whole batch
        if serving is None:
            raise RuntimeError("no model loaded")
        self.metrics.batch_size.observe(len(requests))
        cache = serving.hidden_cache
        hits, misses = cache.hits, cache.misses
        results = score_batch(serving, requests)
        self.metrics.encoder_cache.labels("hit").inc(cache.hits - hits)
        self.metrics.encoder_cache.labels("miss").inc(cache.misses - misses)
        fallbacks = sum(r.exact_fallback for r in results)
        if fallbacks:
            self.metrics.exact_fallbacks.inc(fallbacks)
        return results

    def _write_events(self, writes: Sequence[EventWrite]) -> list[None]:
        self.event_log.append([row for w in writes for row in w.rows])  # one fsync for the whole batch
        for write in writes:  # only after the fsync: what a recommendation reflects is durable
            for customer, item, timestamp, event in write.known:
                self.histories.add(customer, item, timestamp, event)
            self.metrics.events.inc(len(write.rows))
        self.metrics.customers.set(len(self.histories))
        return [None] * len(writes)

    # ------------------------------------------------------------------------------------ helpers

    def encode(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Known model indexes (order kept) and the unknown ids, each reported once."""
        # A dict lookup per id: for a handful of ids far cheaper than the catalog's vectorized encoder.
        index_of = self.index_of
        codes = np.fromiter((index_of.get(i, 0) for i in item_ids), dtype=np.int64, count=len(item_ids))
        unknown = list(dict.fromkeys(i for i, c in zip(item_ids, codes.tolist(), strict=True) if c == 0))
        if unknown:
            self.metrics.unknown_items.inc(len(unknown))
        return codes[codes != 0], unknown

    def item(self, index: int, score: float) -> RecommendedItem:
        return RecommendedItem(
            item_id=self.catalog.item_ids[index - 1], score=float(score), title=self.catalog.title(index)
        )

    async def recommend(
        self, history: np.ndarray, exclude: np.ndarray, n: int
    ) -> tuple[str, str | None, list[RecommendedItem]]:
        """(strategy, model version, items): the model given a history and a model, else popularity."""
        serving = self.holder.current
        if len(history) and serving is not None:
            request = ScoreRequest(history, exclude, n)
            if self.config.scorer == "naive":
                result = await anyio.to_thread.run_sync(naive_recommend, serving, request)
            else:
                result = await self.scorer.submit(request)
            items = [
                self.item(i, s) for i, s in zip(result.items.tolist(), result.scores.tolist(), strict=True)
            ]
            self.metrics.recommendations.labels("model").inc()
            return "model", result.version, items
        indexes, counts = self.histories.popular(n, exclude)
        self.metrics.recommendations.labels("popularity").inc()
        version = None if serving is None else serving.version
        return (
            "popularity",
            version,
            [self.item(i, c) for i, c in zip(indexes.tolist(), counts.tolist(), strict=True)],
        )

    def model_status(self) -> ModelStatus:
        serving = self.holder.current
        refusal = self.holder.last_refusal
        return ModelStatus(
            serving=None if serving is None else _model_info(serving, self.config.state_dir),
            pointer=model_store.read_current(self.config.state_dir),
            last_refusal=None if refusal is None else RefusalInfo(**refusal.__dict__),
            swaps=self.holder.swaps,
        )


def _header_only(path: Path) -> bool:
    """A CSV log with no rows yet (a fresh event log): nothing to load, and not an error."""
    if path.suffix != ".csv":
        return False
    with open(path, "rb") as fh:
        fh.readline()
        return not fh.readline().strip()


def _model_info(serving: ServingModel, state_dir: Path) -> ModelInfo:
    try:
        arrived: float | None = os.stat(model_store.models_dir(state_dir) / serving.version).st_mtime
    except OSError:
        arrived = None
    meta = serving.meta
    return ModelInfo(
        version=serving.version,
        kind=serving.kind,
        origin=meta.origin,
        round=meta.round,
        created=meta.created,
        arrived=arrived,
        loaded_at=serving.loaded_at,
        catalog_hash=meta.catalog_hash,
        n_items=meta.n_items,
        scoring="bf16 coarse + exact float32 rescoring" if serving.coarse_weight is not None else "float32",
    )
