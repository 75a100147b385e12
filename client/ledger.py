"""The store's durable privacy ledger: the only memory of how much privacy its customers have spent.

The accountant is rebuilt from this file before every round (each Flower message may run in a fresh process),
so losing or under-reading it would silently reset epsilon. Hence:

* **Append-only JSON lines**, one event per line, after a header line (format version, store id, unit,
  delta, accountant). Epsilon is never stored, only recomputed from the events.
* **Hash chain**: every line carries ``sha256`` of its canonical JSON body, and the body carries the previous
  line's ``sha256`` as ``prev``. Any edited byte, removed middle line, reordering or torn last line is
  detected, reported with its line number, and refused with ``LedgerCorruptError``: training never restarts
  from zero on its own.
* **Durable before the update leaves the store**: ``append`` returns only after the new file is on disk.
* **One writer at a time**: an ``fcntl.flock`` on a sidecar ``<ledger>.lock`` file serializes processes.

What a self-contained chain cannot detect: losing whole lines at the end, or an old copy restored over a
newer one (both are valid shorter chains). Callers that need that can anchor ``head()`` elsewhere, e.g. on
the server, and compare it on the next open.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_bytes
from shared.errors import ConfigError, FedrecError
from shared.privacy.accounting import (
    DEFAULT_UNIT,
    MECHANISM,
    PrivacyBudget,
    PrivacyEvent,
    check_budget,
    epsilon_after,
    epsilon_from_events,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LedgerCorruptError",
    "PrivacyLedger",
    "RoundOrderError",
    "TornTailRepair",
]

FORMAT = "fedrec-privacy-ledger"
FORMAT_VERSION = 1
_GENESIS = ""  # ``prev`` of the header line
_SCOPE = (
    "per customer of this store; a person who shops at k partner stores is k customers, "
    "and their total loss composes across those stores"
)


class LedgerCorruptError(FedrecError):
    """The privacy ledger is unreadable, edited, reordered or torn; training must stop until a person acts.

    ``line`` is the 1-based number of the first bad line, where known; ``torn`` says the last line is
    incomplete, the one case ``PrivacyLedger.repair_torn_tail`` handles.
    """

    def __init__(self, message: str, *, path: Path, line: int | None = None, torn: bool = False) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        action = (
            "If a crash interrupted a write, the store operator may call PrivacyLedger.repair_torn_tail()"
            if torn
            else "Restore it from a backup"
        )
        super().__init__(
            f"privacy ledger {where}: {message}. Refusing to train: the ledger is the only record of the "
            f"privacy already spent and is never reset. {action}."
        )
        self.path = path
        self.line = line
        self.torn = torn


class RoundOrderError(FedrecError):
    """A round id is not greater than the last recorded one: a round is never counted twice or reordered."""


@dataclass(frozen=True)
class TornTailRepair:
    """What ``repair_torn_tail`` did: the torn line, how it was resolved, and where the original was kept."""

    line: int
    kept: bool  # True: the tail was a complete, chained event missing only its newline, so it still counts
    removed_bytes: int
    backup: Path


@dataclass(frozen=True)
class _Parsed:
    header: dict[str, Any]
    events: tuple[PrivacyEvent, ...]
    digest: str  # sha256 of the last line: the ``prev`` of the next one


def _canonical(obj: dict[str, Any]) -> bytes:
    # Sorted keys, no spaces, ASCII, no NaN: one byte string per value, so checksums are reproducible.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _seal(body: dict[str, Any]) -> tuple[bytes, str]:
    """The line (with newline) for ``body`` and its checksum."""
    digest = hashlib.sha256(_canonical(body)).hexdigest()
    return _canonical({**body, "sha256": digest}) + b"\n", digest


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _parse(data: bytes, path: Path) -> _Parsed:
    """Verify the whole file: every line parses, re-encodes to the same bytes, and chains to the previous."""
    if not data:
        raise LedgerCorruptError("the file is empty (a ledger always has a header line)", path=path, line=1)
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    header: dict[str, Any] = {}
    events: list[PrivacyEvent] = []
    prev = _GENESIS
    for number, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
            if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
                raise ValueError("not a checksummed record")
        except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
            raise LedgerCorruptError(f"unreadable line ({exc})", path=path, line=number) from exc
        body = {key: value for key, value in record.items() if key != "sha256"}
        line, digest = _seal(body)
        if digest != record["sha256"] or line != raw + b"\n":
            raise LedgerCorruptError(
                "checksum mismatch (the line was edited or damaged)", path=path, line=number
            )
        if body.get("prev") != prev:
            raise LedgerCorruptError(
                "hash chain broken (a line before it was removed, inserted or reordered)",
                path=path,
                line=number,
            )
        prev = digest
        if number == 1:
            header = _check_header_record(body, path)
            continue
        if body.get("kind") != "event" or set(body) != {"kind", "event", "prev"}:
            raise LedgerCorruptError("not an event record", path=path, line=number)
        try:
            event = PrivacyEvent.from_dict(body["event"])
        except (TypeError, ValueError) as exc:
            raise LedgerCorruptError(f"invalid event ({exc})", path=path, line=number) from exc
        if event.unit != header["unit"] or event.accountant != header["accountant"]:
            raise LedgerCorruptError(
                f"event for unit {event.unit!r} / {event.accountant!r} in a ledger for "
                f"{header['unit']!r} / {header['accountant']!r}",
                path=path,
                line=number,
            )
        if events and event.round_id <= events[-1].round_id:
            raise LedgerCorruptError(
                f"round {event.round_id} follows round {events[-1].round_id}", path=path, line=number
            )
        events.append(event)
    if torn:
        raise LedgerCorruptError(
            f"incomplete last line ({len(torn)} bytes without a newline: a write was interrupted)",
            path=path,
            line=len(lines) + 1,
            torn=True,
        )
    if not lines:
        raise LedgerCorruptError("no header line", path=path, line=1)
    return _Parsed(header=header, events=tuple(events), digest=prev)


def _check_header_record(body: dict[str, Any], path: Path) -> dict[str, Any]:
    expected = {
        "kind",
        "format",
        "version",
        "store_id",
        "unit",
        "delta",
        "accountant",
        "mechanism",
        "created",
    }
    if body.get("kind") != "header" or body.get("format") != FORMAT or set(body) - {"prev"} != expected:
        raise LedgerCorruptError("first line is not a fedrec privacy ledger header", path=path, line=1)
    if body["version"] != FORMAT_VERSION:
        raise LedgerCorruptError(
            f"format version {body['version']!r}; this fedrec reads version {FORMAT_VERSION}",
            path=path,
            line=1,
        )
    return body


@contextlib.contextmanager
def _locked(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``flock`` on ``<ledger>.lock`` (exclusive to write, shared to read)."""
    # A sidecar file, because appends replace the ledger's inode. The kernel releases flock when the process
    # dies, so a crash never locks the store out. Never deleted: unlinking a lock file lets two processes
    # lock two different files.
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class PrivacyLedger:
    """A store's append-only privacy ledger (use ``PrivacyLedger.open``).

    Every read goes back to the file and re-verifies the whole chain (a ledger has one line per round, so
    this is cheap), which keeps several processes for one store consistent without shared memory.
    """

    def __init__(self, path: Path, store_id: str, budget: PrivacyBudget) -> None:
        self.path = path
        self.store_id = store_id
        self.budget = budget
        # One DP-SGD record is one customer's history; store-level DP is reported separately, never here.
        self.unit = DEFAULT_UNIT

    # ----------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | os.PathLike[str], store_id: str, budget: PrivacyBudget) -> PrivacyLedger:
        """Create the ledger (atomically, header only) or verify an existing one against this store's config.

        Raises
        ------
        LedgerCorruptError
            Any line fails to parse or verify, or the last line is torn.
        ConfigError
            The ledger belongs to another store, or ``budget`` changed its delta or accountant (epsilons
            under different deltas or accountants cannot be continued). ``epsilon_max`` may change: the
            budget is policy, the events are facts.
        """
        if not isinstance(store_id, str) or not store_id:
            raise ConfigError(f"store_id must be a non-empty string, got {store_id!r}")
        ledger = cls(Path(path), store_id, budget)
        ledger.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(ledger.path, exclusive=True):
            if ledger.path.exists():
                ledger._load()
            else:
                header = {
                    "kind": "header",
                    "format": FORMAT,
                    "version": FORMAT_VERSION,
                    "store_id": store_id,
                    "unit": ledger.unit,
                    "delta": budget.delta,
                    "accountant": budget.accountant,
                    "mechanism": MECHANISM,
                    "created": time.time(),
                    "prev": _GENESIS,
                }
                line, _ = _seal(header)
                # atomic_write_bytes fsyncs the file and the directory: the new name itself is durable.
                atomic_write_bytes(ledger.path, line)
        return ledger

    def _load(self) -> tuple[bytes, _Parsed]:
        data = _read(self.path)
        parsed = _parse(data, self.path)
        header = parsed.header
        for key, mine in (
            ("store_id", self.store_id),
            ("unit", self.unit),
            ("delta", self.budget.delta),
            ("accountant", self.budget.accountant),
        ):
            if header[key] != mine:
                raise ConfigError(
                    f"{key}={mine!r} but the privacy ledger {self.path} was written with {key}="
                    f"{header[key]!r}; epsilon can only be continued under the ledger's settings"
                )
        return data, parsed

    # --------------------------------------------------------------------------------------- recording
    def append(self, event: PrivacyEvent, *, enforce_budget: bool = True) -> None:
        """Record a round durably; call it after training and BEFORE the update leaves the store.

        Durability: the whole file is rewritten through ``shared.atomic`` (temp file, fsync, rename, fsync of
        the directory), chosen over ``O_APPEND`` + fsync because a crash then leaves either the old or the new
        complete ledger, never a torn line that needs a person to repair it. A ledger holds one line per
        round, so the rewrite is one small write. A crash after this returns can lose the update, never the
        entry; a crash before it returns loses both, and an update that never left the store cost no privacy.

        Parameters
        ----------
        event : PrivacyEvent
            Must have this ledger's unit and accountant, and a round id above every recorded one.
        enforce_budget : bool, default True
            Refuse (``BudgetExhaustedError``, nothing written) an event that would exceed the budget; the
            caller must then discard the update. Off only for tooling that records an already released round.

        Raises
        ------
        RoundOrderError
            The round id is not greater than the last recorded one (checked under the lock, against the file).
        BudgetExhaustedError
            With ``enforce_budget``, if the event would exceed the budget.
        LedgerCorruptError, ConfigError
            As for ``open``: the file changed under us.
        """
        if event.unit != self.unit or event.accountant != self.budget.accountant:
            raise ValueError(
                f"event has unit {event.unit!r} / accountant {event.accountant!r}; this ledger records "
                f"{self.unit!r} / {self.budget.accountant!r}"
            )
        with _locked(self.path, exclusive=True):
            data, parsed = self._load()
            _check_round_order(parsed.events, event)
            if enforce_budget:
                check_budget(parsed.events, event, self.budget)
            line, _ = _seal({"kind": "event", "event": event.to_dict(), "prev": parsed.digest})
            atomic_write_bytes(self.path, data + line)

    # ----------------------------------------------------------------------------------------- reading
    def _snapshot(self) -> _Parsed:
        with _locked(self.path, exclusive=False):
            return self._load()[1]

    def events(self) -> tuple[PrivacyEvent, ...]:
        """All recorded rounds, oldest first, read and verified from disk now."""
        return self._snapshot().events

    def last_round(self) -> int | None:
        """The highest recorded round id, or None for a new ledger."""
        events = self.events()
        return events[-1].round_id if events else None

    def head(self) -> tuple[int, str]:
        """``(number of events, sha256 of the last line)``: anchor it elsewhere to detect a lost tail."""
        parsed = self._snapshot()
        return len(parsed.events), parsed.digest

    def epsilon(self) -> float:
        """Epsilon spent so far at the budget's delta, recomputed from the events by its accountant."""
        return epsilon_from_events(self.events(), self.budget.delta, self.budget.accountant, unit=self.unit)

    def check(self, planned_event: PrivacyEvent) -> float:
        """Epsilon after ``planned_event``; raises if its round id is stale or it would exceed the budget.

        Call before training a round; ``append`` checks again before the update may leave.
        """
        events = self.events()
        _check_round_order(events, planned_event)
        after = epsilon_after(events, planned_event, self.budget)
        if after > self.budget.epsilon_max:
            check_budget(events, planned_event, self.budget)  # raises, with the standard message
        return after

    def spent_report(self) -> dict[str, Any]:
        """What every report must show: epsilon with its delta, accountant and unit, and the budget left.

        ``remaining`` is headroom in epsilon, not a number of rounds: epsilon does not grow linearly.
        """
        events = self.events()
        epsilon = epsilon_from_events(events, self.budget.delta, self.budget.accountant, unit=self.unit)
        return {
            "store_id": self.store_id,
            "epsilon": epsilon,
            "delta": self.budget.delta,
            "accountant": self.budget.accountant,
            "unit": self.unit,
            "scope": _SCOPE,
            "rounds": len(events),
            "steps": sum(event.steps for event in events),
            "budget": self.budget.epsilon_max,
            "remaining": max(0.0, self.budget.epsilon_max - epsilon) if math.isfinite(epsilon) else 0.0,
        }

    # ------------------------------------------------------------------------------------------ repair
    @classmethod
    def repair_torn_tail(cls, path: str | os.PathLike[str]) -> TornTailRepair | None:
        """Operator action after a crash: resolve an incomplete last line (no newline); None if there is none.

        Never called automatically. Everything before the torn line must verify, otherwise this refuses
        (``LedgerCorruptError``): it repairs a torn tail, not damage. The original file is first copied to
        ``<ledger>.torn-<time>-<random>.bak``. A tail that is a complete, correctly chained event missing only
        its newline is kept (completed), since over-counting is safe and under-counting is not; any other
        tail is removed.
        """
        target = Path(path)
        with _locked(target, exclusive=True):
            data = _read(target)
            if not data or data.endswith(b"\n"):
                return None
            cut = data.rfind(b"\n") + 1
            line_number = data.count(b"\n") + 1
            if cut == 0:
                raise LedgerCorruptError(
                    "the header line itself is incomplete; nothing can be recovered", path=target, line=1
                )
            _parse(data[:cut], target)  # raises if anything before the tail is damaged
            try:
                _parse(data + b"\n", target)
                kept, repaired = True, data + b"\n"
            except LedgerCorruptError:
                kept, repaired = False, data[:cut]
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            backup = target.with_name(f"{target.name}.torn-{stamp}-{secrets.token_hex(3)}.bak")
            atomic_write_bytes(backup, data)
            atomic_write_bytes(target, repaired)
        return TornTailRepair(
            line=line_number, kept=kept, removed_bytes=0 if kept else len(data) - cut, backup=backup
        )


def _check_round_order(events: tuple[PrivacyEvent, ...], event: PrivacyEvent) -> None:
    if events and event.round_id <= events[-1].round_id:
        raise RoundOrderError(
            f"round {event.round_id} is not after the last recorded round {events[-1].round_id}: "
            "a round is never counted twice"
        )
