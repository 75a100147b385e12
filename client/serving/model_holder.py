"""The model being served, swapped atomically, and the watcher that follows ``models/CURRENT``.

Requests read ``holder.current`` once and use that ``ServingModel`` (model + precomputed matrix + version)
to the end, so they never see half a swap: a swap builds the complete new object first and then replaces one
reference. A version that fails to load (corrupt, half-written, other catalog) is refused and logged, the old
one keeps serving, and the refusal is not retried until the version's files change.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from client import model_store
from client.serving.hidden_cache import DEFAULT_CACHE_SIZE
from client.serving.metrics import ServingMetrics
from client.serving.scoring import ServingModel
from shared.errors import FedrecError
from shared.serde import META, WEIGHTS, load_model, read_meta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    version: str
    reason: str
    time: float


def _stamp(directory: Path) -> tuple:
    """Changes whenever the version's files do, so a fixed version is tried again."""
    out = []
    for name in (WEIGHTS, META):
        try:
            st = os.stat(directory / name)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


class ModelHolder:
    def __init__(
        self,
        state_dir: Path,
        catalog_hash: str,
        metrics: ServingMetrics,
        coarse: str = "auto",
        hidden_cache: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.state_dir = state_dir
        self.coarse = coarse
        self.hidden_cache = hidden_cache
        self.catalog_hash = catalog_hash
        self.metrics = metrics
        self.current: ServingModel | None = None  # read without the lock: one reference, replaced whole
        self.last_refusal: Refusal | None = None
        self.swaps = 0
        self._swap_lock = threading.Lock()
        self._refused: dict[str, tuple] = {}
        self._ignored: set[str] = set()

    # ------------------------------------------------------------------------------------------ loading

    def _refuse(self, version: str, reason: str) -> None:
        directory = model_store.models_dir(self.state_dir) / version
        self._refused[version] = _stamp(directory)
        self.last_refusal = Refusal(version, reason, time.time())
        self.metrics.swap_failures.inc()
        log.error("refused model version %s, still serving %s: %s", version, self.version, reason)

    def _load(self, version: str) -> ServingModel | None:
        directory = model_store.models_dir(self.state_dir) / version
        if self._refused.get(version) == _stamp(directory):
            return None  # refused before and unchanged since
        try:
            model, meta = load_model(directory, expected_catalog_hash=self.catalog_hash)
        except (FedrecError, OSError) as err:
            self._refuse(version, str(err))
            return None
        self._refused.pop(version, None)
        return ServingModel.build(version, meta, model, coarse=self.coarse, cache_size=self.hidden_cache)

    def _install(self, serving: ServingModel) -> None:
        with self._swap_lock:
            previous = self.version
            self.current = serving
            self.swaps += 1
        self.metrics.swaps.inc()
        self.metrics.model_changed(serving.version, serving.kind, serving.meta.origin, serving.loaded_at)
        log.info("serving model version %s (was %s)", serving.version, previous)

    @property
    def version(self) -> str | None:
        current = self.current
        return None if current is None else current.version

    # ------------------------------------------------------------------------------------------ polling

    def _promote_new(self) -> None:
        """Make the newest version never mentioned in HISTORY current, if it is newer than what we serve."""
        root = model_store.models_dir(self.state_dir)
        try:
            names = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        except FileNotFoundError:
            return
        fresh = names - model_store.mentioned_versions(self.state_dir) - self._ignored
        if not fresh:
            return
        current = self.current
        candidates = []
        for name in fresh:
            try:
                candidates.append((read_meta(root / name).created, name))
            except FedrecError as err:
                if self._refused.get(name) != _stamp(root / name):
                    self._refuse(name, str(err))
        for created, name in sorted(candidates, reverse=True):
            if current is not None and created <= current.meta.created:
                self._ignored.add(name)  # an older version copied in later: leave it to an operator
                continue
            serving = self._load(name)
            if serving is None:
                continue
            try:
                model_store.activate(self.state_dir, name, expected_catalog_hash=self.catalog_hash)
            except (FedrecError, OSError) as err:
                self._refuse(name, str(err))
                continue
            self._install(serving)
            return

    def check(self) -> None:
        """One poll: promote a brand-new version, then follow CURRENT if it names another version."""
        self._promote_new()
        pointer = model_store.read_current(self.state_dir)
        if pointer is None or pointer == self.version:
            return
        serving = self._load(pointer)
        if serving is not None:
            self._install(serving)

    def initial_load(self) -> None:
        """At start-up: CURRENT, else the newest brand-new version, else the last good one in HISTORY."""
        self.check()
        if self.current is not None:
            return
        for version in reversed(model_store.active_stack(self.state_dir)):
            serving = self._load(version)
            if serving is not None:
                log.warning("CURRENT is unusable; serving the previous good version %s", version)
                self._install(serving)
                return


class ModelWatcher:
    """A daemon thread polling the model dir every ``interval`` seconds."""

    def __init__(self, holder: ModelHolder, interval: float) -> None:
        self.holder = holder
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.holder.check()
            except Exception:  # a bad poll must not kill the watcher; the next one tries again
                log.exception("model watcher poll failed")
