"""The privacy summary the staff page shows, read from the store's ledger (never an error reply)."""

from __future__ import annotations

import time

from client.ledger import PrivacyLedger
from client.serving.ledger_view import NO_LEDGER, LedgerView
from shared.privacy.accounting import PrivacyBudget, PrivacyEvent


def append_round(ledger: PrivacyLedger, round_id: int) -> None:
    event = PrivacyEvent(
        round_id=round_id, noise_multiplier=1.0, sample_rate=0.1, steps=20, accountant="rdp", time=time.time()
    )
    ledger.append(event)


def test_summary_follows_the_ledger_and_names_unit_delta_and_accountant(tmp_path):
    path = tmp_path / "ledger.jsonl"
    view = LedgerView(path, epsilon_budget=10.0)
    assert view.summary().message == NO_LEDGER and not view.summary().available
    ledger = PrivacyLedger.open(path, "store-7", PrivacyBudget(epsilon_max=10.0, delta=1e-5))
    append_round(ledger, 0)
    first = view.summary()
    assert first.available and first.rounds == 1 and first.epsilon == ledger.epsilon()
    assert (first.unit, first.delta, first.accountant, first.epsilon_budget) == (
        "customer",
        1e-5,
        "rdp",
        10.0,
    )
    append_round(ledger, 1)
    second = view.summary()  # the file changed: recomputed
    assert second.rounds == 2 and second.epsilon > first.epsilon


def test_a_corrupt_ledger_becomes_a_message_and_a_missing_budget_is_said(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger.open(path, "store-7", PrivacyBudget(epsilon_max=10.0, delta=1e-5))
    append_round(ledger, 0)
    assert "budget not configured" in LedgerView(path, epsilon_budget=None).summary().message
    path.write_bytes(path.read_bytes().replace(b'"steps":20', b'"steps":2'))
    summary = LedgerView(path, epsilon_budget=10.0).summary()
    assert not summary.available and "unreadable" in summary.message
