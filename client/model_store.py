"""A store's local model versions: ``<state>/models/<version>/``, the ``CURRENT`` pointer and its ``HISTORY``.

Version directories are immutable (``shared.serde.save_model`` writes them by atomic rename). Which one is
served is named by ``models/CURRENT``, replaced by atomic rename, so a reader sees the old or the new name,
never half of one. ``models/HISTORY`` is an append-only JSON-lines log of every switch (activate, rollback)
and of every version ``publish`` wrote (stage), so that a rollback knows where to return to and the server
knows which versions it has already considered: a version never mentioned there (copied in by hand) is *new*
and a running server promotes it; a staged one waits for ``activate``. Writes take an exclusive ``flock`` so
the serving process and the CLI never interleave them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.atomic import atomic_write_text
from shared.errors import CatalogMismatchError, FedrecError, IncompatibleModelError
from shared.models import SequentialRecommender
from shared.serde import WEIGHTS, ModelMeta, read_meta, save_model

__all__ = [
    "CURRENT",
    "HISTORY",
    "MODELS_DIR",
    "HistoryEntry",
    "VersionInfo",
    "activate",
    "active_stack",
    "list_versions",
    "mentioned_versions",
    "models_dir",
    "next_version_name",
    "publish",
    "read_current",
    "read_history",
    "rollback",
    "verify_version",
]

MODELS_DIR = "models"
CURRENT = "CURRENT"
HISTORY = "HISTORY"
_LOCK = ".lock"


@dataclass(frozen=True)
class VersionInfo:
    """One directory under ``models/``: its meta when readable, else the reason it is not."""

    name: str
    path: Path
    meta: ModelMeta | None
    error: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    action: str  # "stage" (published, not current), "activate" or "rollback"
    version: str
    time: float
    previous: str | None = None


def models_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / MODELS_DIR


def _is_version_name(name: str) -> bool:
    # Dot-names are save_model's temp directories (half-written by definition); the rest are files we own.
    return bool(name) and not name.startswith(".") and name not in (CURRENT, HISTORY)


def list_versions(state_dir: str | os.PathLike[str]) -> list[VersionInfo]:
    """Every version directory, oldest first (by the meta's creation time, then name)."""
    root = models_dir(state_dir)
    if not root.is_dir():
        return []
    out: list[VersionInfo] = []
    for path in root.iterdir():
        if not path.is_dir() or not _is_version_name(path.name):
            continue
        try:
            out.append(VersionInfo(path.name, path, read_meta(path)))
        except IncompatibleModelError as err:
            out.append(VersionInfo(path.name, path, None, str(err)))
    return sorted(out, key=lambda v: (v.meta.created if v.meta else float("inf"), v.name))


def verify_version(
    state_dir: str | os.PathLike[str], name: str, expected_catalog_hash: str | None = None
) -> ModelMeta:
    """Check meta, catalog hash and weights checksum without building the model (cheap enough for the CLI)."""
    if not _is_version_name(name) or "/" in name or name in (".", ".."):
        raise IncompatibleModelError(f"{name!r} is not a model version name")
    path = models_dir(state_dir) / name
    if not path.is_dir():
        raise IncompatibleModelError(f"model version {name!r} not found in {models_dir(state_dir)}")
    meta = read_meta(path)
    if expected_catalog_hash is not None and meta.catalog_hash != expected_catalog_hash:
        raise CatalogMismatchError(
            f"{path}: model trained against catalog {meta.catalog_hash[:12]}, "
            f"this store has {expected_catalog_hash[:12]}"
        )
    digest = hashlib.sha256()
    try:
        with open(path / WEIGHTS, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise IncompatibleModelError(f"{path}: cannot read weights ({err})") from err
    if digest.hexdigest() != meta.weights_sha256:
        raise IncompatibleModelError(f"{path}: weights checksum mismatch (corrupt or half-written file)")
    return meta


def read_current(state_dir: str | os.PathLike[str]) -> str | None:
    """The version ``CURRENT`` names, or None when there is no pointer yet."""
    try:
        name = (models_dir(state_dir) / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name or None


def read_history(state_dir: str | os.PathLike[str]) -> list[HistoryEntry]:
    """Every recorded switch, oldest first; a torn last line (crash mid-append) is skipped."""
    path = models_dir(state_dir) / HISTORY
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            data = json.loads(line)
            out.append(HistoryEntry(data["action"], data["version"], data["time"], data.get("previous")))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def active_stack(state_dir: str | os.PathLike[str]) -> list[str]:
    """Versions that were current, the current one last: activations push, rollbacks pop back to one."""
    stack: list[str] = []
    for entry in read_history(state_dir):
        if entry.action == "stage":
            continue
        if entry.action == "rollback" and entry.version in stack:
            while stack[-1] != entry.version:
                stack.pop()
        else:
            stack.append(entry.version)
    current = read_current(state_dir)
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)  # pointer written by hand or by a crash between HISTORY and CURRENT
    return stack


def mentioned_versions(state_dir: str | os.PathLike[str]) -> set[str]:
    """Versions HISTORY or CURRENT already name: the ones automatic promotion must leave alone."""
    history = read_history(state_dir)
    names = {e.version for e in history} | {e.previous for e in history if e.previous}
    current = read_current(state_dir)
    if current:
        names.add(current)
    return names


@contextlib.contextmanager
def _switch_lock(state_dir: str | os.PathLike[str]) -> Iterator[None]:
    root = models_dir(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _append_history(state_dir: str | os.PathLike[str], entry: HistoryEntry) -> None:
    line = json.dumps(
        {"action": entry.action, "version": entry.version, "time": entry.time, "previous": entry.previous}
    )
    with open(models_dir(state_dir) / HISTORY, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _switch(state_dir: str | os.PathLike[str], action: str, name: str) -> None:
    previous = read_current(state_dir)
    # HISTORY first: after a crash between the two writes the log still explains the pointer.
    _append_history(state_dir, HistoryEntry(action, name, time.time(), previous))
    atomic_write_text(models_dir(state_dir) / CURRENT, name + "\n")


def activate(
    state_dir: str | os.PathLike[str], name: str, *, expected_catalog_hash: str | None = None
) -> ModelMeta:
    """Verify version ``name`` and make it current; a corrupt or foreign one raises and changes nothing."""
    meta = verify_version(state_dir, name, expected_catalog_hash)
    with _switch_lock(state_dir):
        _switch(state_dir, "activate", name)
    return meta


def rollback(
    state_dir: str | os.PathLike[str], *, to: str | None = None, expected_catalog_hash: str | None = None
) -> str:
    """Return to the previous valid version (or to ``to``); returns the version now current.

    Versions that no longer verify are skipped, so a rollback never points the server at a broken model.
    """
    with _switch_lock(state_dir):
        stack = active_stack(state_dir)
        current = stack[-1] if stack else None
        candidates = [to] if to is not None else [v for v in reversed(stack[:-1]) if v != current]
        problems = []
        for name in candidates:
            try:
                verify_version(state_dir, name, expected_catalog_hash)
            except FedrecError as err:
                problems.append(f"{name}: {err}")
                continue
            _switch(state_dir, "rollback", name)
            return name
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise FedrecError(f"no previous valid model version to roll back to from {current!r}{detail}")


def next_version_name(state_dir: str | os.PathLike[str]) -> str:
    """``v000001``, ``v000002``...: sortable and obvious in a listing."""
    numbers = [
        int(v.name[1:]) for v in list_versions(state_dir) if v.name.startswith("v") and v.name[1:].isdigit()
    ]
    return f"v{max(numbers, default=0) + 1:06d}"


def publish(
    state_dir: str | os.PathLike[str],
    model: SequentialRecommender,
    *,
    catalog_hash: str,
    origin: str = "personalized",
    round_id: int | None = None,
    extra: dict | None = None,
    make_current: bool = True,
) -> str:
    """Save ``model`` as a new immutable version and, by default, make it current; returns its name.

    A running server picks it up at its next poll; with ``make_current=False`` it stays staged until
    ``activate``.
    """
    for _ in range(100):  # another writer may take the same number between listing and renaming
        name = next_version_name(state_dir)
        # Staged before it exists: a running server must not promote it on its own in between (make_current
        # False means "not yet", e.g. a global model waiting for its personalized copy).
        with _switch_lock(state_dir):
            _append_history(state_dir, HistoryEntry("stage", name, time.time(), read_current(state_dir)))
        try:
            save_model(
                model,
                models_dir(state_dir) / name,
                catalog_hash=catalog_hash,
                origin=origin,
                round_id=round_id,
                extra=extra,
            )
        except OSError as err:
            # FileExistsError from save_model's check, ENOTEMPTY from a rename that lost the race.
            if isinstance(err, FileExistsError) or err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        if make_current:
            activate(state_dir, name, expected_catalog_hash=catalog_hash)
        return name
    raise FedrecError(f"could not allocate a new model version name in {models_dir(state_dir)}")
