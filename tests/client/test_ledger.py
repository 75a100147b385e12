"""The privacy ledger: survives reopening and crashes, refuses damage, never under-counts, one writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from client.ledger import LedgerCorruptError, PrivacyLedger, RoundOrderError
from shared.errors import BudgetExhaustedError, ConfigError
from shared.privacy.accounting import PrivacyBudget, PrivacyEvent, epsilon_after, epsilon_from_events

REPO = Path(__file__).resolve().parents[2]
BUDGET = PrivacyBudget(epsilon_max=8.0, delta=1e-5, accountant="rdp")
STORE = "store-042"


def event(round_id: int, sigma: float = 0.7, q: float = 0.01, steps: int = 400) -> PrivacyEvent:
    # Six such rounds spend 7.64 of an 8.0 budget, a seventh would reach 8.18; a small q keeps RDP cheap.
    return PrivacyEvent(
        round_id=round_id,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        accountant="rdp",
        time=1_700_000_000.0 + round_id,
    )


def ledger_with(path: Path, n: int) -> PrivacyLedger:
    ledger = PrivacyLedger.open(path, STORE, BUDGET)
    for round_id in range(1, n + 1):
        # Budget checks are covered below; skipping them keeps these fixtures free of accountant calls.
        ledger.append(event(round_id, sigma=2.0), enforce_budget=False)
    return ledger


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ------------------------------------------------------------------------------------------- round trip


def test_create_append_reopen_keeps_events_and_epsilon(tmp_path: Path) -> None:
    path = tmp_path / "state" / "privacy.jsonl"
    ledger = PrivacyLedger.open(path, STORE, BUDGET)
    assert ledger.events() == ()
    assert ledger.epsilon() == 0.0
    for round_id in (1, 2, 5):  # ids must increase, not be contiguous (a store can skip rounds)
        ledger.append(event(round_id))

    reopened = PrivacyLedger.open(path, STORE, BUDGET)
    assert reopened.events() == (event(1), event(2), event(5))
    assert reopened.epsilon() == epsilon_from_events([event(1), event(2), event(5)], 1e-5, "rdp")
    report = reopened.spent_report()
    assert report["epsilon"] == reopened.epsilon()
    assert report["rounds"] == 3 and report["steps"] == 1200
    assert (report["delta"], report["accountant"], report["unit"], report["budget"]) == (
        1e-5,
        "rdp",
        "customer",
        8.0,
    )
    assert report["remaining"] == pytest.approx(8.0 - report["epsilon"])
    assert "k partner stores" in report["scope"]

    header = json.loads(path.read_text().splitlines()[0])
    assert header["format"] == "fedrec-privacy-ledger" and header["version"] == 1
    assert (header["store_id"], header["unit"], header["delta"], header["accountant"]) == (
        STORE,
        "customer",
        1e-5,
        "rdp",
    )


def test_rounds_stop_exactly_at_the_budget(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path / "ledger.jsonl", STORE, BUDGET)
    round_id = 1
    while True:
        planned = event(round_id)
        try:
            ledger.check(planned)
        except BudgetExhaustedError as refused:
            message = str(refused)
            break
        ledger.append(planned)  # after "training", before "sending"
        round_id += 1
    assert len(ledger.events()) == 6
    assert ledger.epsilon() <= BUDGET.epsilon_max < epsilon_after(ledger.events(), planned, BUDGET)
    assert message.startswith("round 7 would raise epsilon from 7.64 to 8.18 > budget 8.0")
    # The ledger is the last gate: an over-budget round cannot be recorded, so its update must not leave.
    with pytest.raises(BudgetExhaustedError):
        ledger.append(planned)
    assert len(ledger.events()) == 6


def test_repeated_or_earlier_round_id_is_refused(tmp_path: Path) -> None:
    ledger = ledger_with(tmp_path / "ledger.jsonl", 3)
    before = ledger.path.read_bytes()
    for stale in (3, 2):
        with pytest.raises(RoundOrderError, match="never counted twice"):
            ledger.append(event(stale), enforce_budget=False)
        with pytest.raises(RoundOrderError):
            ledger.check(event(stale))
    assert ledger.path.read_bytes() == before


def test_events_for_another_unit_or_accountant_are_refused(tmp_path: Path) -> None:
    ledger = ledger_with(tmp_path / "ledger.jsonl", 1)
    store_level = PrivacyEvent(
        round_id=2, noise_multiplier=1.0, sample_rate=0.1, steps=1, accountant="rdp", unit="store", time=0.0
    )
    with pytest.raises(ValueError, match="unit"):
        ledger.append(store_level)
    prv = PrivacyEvent(round_id=2, noise_multiplier=1.0, sample_rate=0.1, steps=1, accountant="prv", time=0.0)
    with pytest.raises(ValueError, match="accountant"):
        ledger.append(prv)


@pytest.mark.parametrize(
    ("store_id", "budget", "key"),
    [
        (STORE, PrivacyBudget(8.0, 1e-6, "rdp"), "delta"),
        (STORE, PrivacyBudget(8.0, 1e-5, "prv"), "accountant"),
        ("store-043", BUDGET, "store_id"),
    ],
)
def test_header_mismatch_is_refused(tmp_path: Path, store_id: str, budget: PrivacyBudget, key: str) -> None:
    ledger_with(tmp_path / "ledger.jsonl", 2)
    with pytest.raises(ConfigError, match=f"{key}="):
        PrivacyLedger.open(tmp_path / "ledger.jsonl", store_id, budget)


def test_a_changed_epsilon_max_is_policy_and_keeps_the_events(tmp_path: Path) -> None:
    ledger_with(tmp_path / "ledger.jsonl", 2)
    stricter = PrivacyLedger.open(tmp_path / "ledger.jsonl", STORE, PrivacyBudget(1.0, 1e-5))
    assert len(stricter.events()) == 2
    assert stricter.spent_report()["remaining"] == pytest.approx(max(0.0, 1.0 - stricter.epsilon()))


# ----------------------------------------------------------------------------------------------- crashes


def test_crash_after_append_before_sending_still_counts_the_round(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger_with(path, 2)
    crashed = run_python(
        """
        import os, sys
        from client.ledger import PrivacyLedger
        from shared.privacy.accounting import PrivacyBudget, PrivacyEvent
        ledger = PrivacyLedger.open(sys.argv[1], "store-042", PrivacyBudget(8.0, 1e-5, "rdp"))
        planned = PrivacyEvent(
            round_id=3, noise_multiplier=2.0, sample_rate=0.1, steps=10, accountant="rdp", time=0.0
        )
        ledger.append(planned, enforce_budget=False)
        os._exit(1)  # dies before "sending" the update: no flush, no cleanup, no atexit
        """,
        str(path),
    )
    assert crashed.returncode == 1, crashed.stderr
    reopened = PrivacyLedger.open(path, STORE, BUDGET)
    assert [e.round_id for e in reopened.events()] == [1, 2, 3]  # over-count at worst, never under-count


def test_crash_during_append_leaves_the_previous_ledger_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = ledger_with(path, 2)
    before = path.read_bytes()

    def power_cut(*_args: object) -> None:
        raise OSError("simulated power cut before the rename")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="power cut"):
        ledger.append(event(3), enforce_budget=False)  # append never returned: the update was never sent
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    assert len(PrivacyLedger.open(path, STORE, BUDGET).events()) == 2


# --------------------------------------------------------------------------------------------- corruption


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_every_single_byte_change_in_a_middle_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger_with(path, 4)
    lines = lines_of(path)
    start = len(lines[0]) + len(lines[1])  # line 3 = round 2
    original = path.read_bytes()
    for offset in range(start, start + len(lines[2]) - 1):  # every byte but the newline
        damaged = bytearray(original)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(LedgerCorruptError) as caught:
            PrivacyLedger.open(path, STORE, BUDGET)
        assert caught.value.line == 3, (offset, str(caught.value))
    path.write_bytes(original)
    assert len(PrivacyLedger.open(path, STORE, BUDGET).events()) == 4


def test_a_deleted_middle_line_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger_with(path, 4)
    lines = lines_of(path)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    with pytest.raises(LedgerCorruptError, match="line 3: hash chain broken") as caught:
        PrivacyLedger.open(path, STORE, BUDGET)
    assert caught.value.line == 3 and not caught.value.torn


def test_reordered_lines_break_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger_with(path, 4)
    lines = lines_of(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    with pytest.raises(LedgerCorruptError, match="chain broken"):
        PrivacyLedger.open(path, STORE, BUDGET)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"")
    with pytest.raises(LedgerCorruptError, match="empty"):
        PrivacyLedger.open(path, STORE, BUDGET)


# ------------------------------------------------------------------------------------------- torn tails


def test_torn_last_line_is_refused_then_repaired_by_the_operator(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger_with(path, 3)
    original = path.read_bytes()
    torn = original[: len(original) - len(lines_of(path)[-1]) // 2]  # half of line 4 (round 3)
    path.write_bytes(torn)
    with pytest.raises(LedgerCorruptError, match="line 4: incomplete last line") as caught:
        PrivacyLedger.open(path, STORE, BUDGET)
    assert caught.value.line == 4 and caught.value.torn
    assert "repair_torn_tail" in str(caught.value)

    repair = PrivacyLedger.repair_torn_tail(path)
    assert repair is not None and repair.line == 4 and not repair.kept
    assert repair.backup.read_bytes() == torn  # the operator can always look at what was removed
    assert repair.removed_bytes == len(torn) - len(b"".join(lines_of(path)))
    ledger = PrivacyLedger.open(path, STORE, BUDGET)
    assert [e.round_id for e in ledger.events()] == [1, 2]
    ledger.append(event(3), enforce_budget=False)  # the torn round never returned, so it was never sent
    assert len(PrivacyLedger.open(path, STORE, BUDGET).events()) == 3


def test_a_complete_last_event_missing_only_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger_with(path, 3)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(LedgerCorruptError, match="line 4"):
        PrivacyLedger.open(path, STORE, BUDGET)
    repair = PrivacyLedger.repair_torn_tail(path)
    assert repair is not None and repair.kept and repair.removed_bytes == 0
    assert len(PrivacyLedger.open(path, STORE, BUDGET).events()) == 3  # over-count, never under-count


def test_repair_does_nothing_to_a_healthy_ledger_and_refuses_real_damage(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger_with(path, 3)
    healthy = path.read_bytes()
    assert PrivacyLedger.repair_torn_tail(path) is None
    assert path.read_bytes() == healthy
    damaged = healthy.replace(b'"steps":400', b'"steps":401', 1)[:-5]  # an edit AND a torn tail
    path.write_bytes(damaged)
    with pytest.raises(LedgerCorruptError, match="line 2: checksum mismatch"):
        PrivacyLedger.repair_torn_tail(path)
    assert path.read_bytes() == damaged


# -------------------------------------------------------------------------------------------- concurrency

WRITER = """
import sys, time
from pathlib import Path
from client.ledger import PrivacyLedger, RoundOrderError
from shared.privacy.accounting import PrivacyBudget, PrivacyEvent

path, go, ready, n = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
ledger = PrivacyLedger.open(path, "store-042", PrivacyBudget(8.0, 1e-5, "rdp"))
ready.touch()
while not go.exists():
    time.sleep(0.001)
done = retries = 0
while done < n:
    # Read-then-append races the other writer on purpose: the round-id check under the lock must catch it.
    round_id = (ledger.last_round() or 0) + 1
    event = PrivacyEvent(
        round_id=round_id, noise_multiplier=2.0, sample_rate=0.1, steps=1, accountant="rdp", time=time.time()
    )
    try:
        ledger.append(event, enforce_budget=False)
        done += 1
    except RoundOrderError:
        retries += 1
print(done, retries)
"""


def test_concurrent_appends_from_two_processes_form_one_valid_chain(tmp_path: Path) -> None:
    path, go, n = tmp_path / "ledger.jsonl", tmp_path / "go", 12
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(go), str(tmp_path / f"ready{i}"), str(n)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers), (
            "writer failed to start"
        )
        time.sleep(0.01)
    go.touch()  # both created-or-verified the ledger at the same time; now both append at once
    outputs = [w.communicate(timeout=60) for w in writers]
    for writer, (out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
        assert int(out.split()[0]) == n

    events = PrivacyLedger.open(path, STORE, BUDGET).events()
    assert [e.round_id for e in events] == list(range(1, 2 * n + 1))
