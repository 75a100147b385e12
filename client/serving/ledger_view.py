"""The store's privacy spend vs budget for the staff page, read from its privacy ledger.

The ledger (``client.ledger.PrivacyLedger``) records facts (rounds, noise, sampling) and the store id, delta
and accountant in its header; the budget ``epsilon_max`` is policy that lives outside it, so the service takes
it as an option (``--epsilon-budget``). Epsilon is recomputed by the ledger's accountant only when the file
changes. Any failure becomes a message on the page, never an error reply.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path

from client.serving.schemas import PrivacySummary

log = logging.getLogger(__name__)
NO_LEDGER = "no ledger yet"


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


class LedgerView:
    """Caches the summary by the ledger file's (mtime, size): the accountant is not free to run."""

    def __init__(self, path: Path, epsilon_budget: float | None) -> None:
        self.path = path
        self.epsilon_budget = epsilon_budget
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._summary = PrivacySummary(available=False, message=NO_LEDGER)

    def summary(self) -> PrivacySummary:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return PrivacySummary(available=False, message=NO_LEDGER)
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if key != self._key:
                self._summary, self._key = self._read(), key
            return self._summary

    def _read(self) -> PrivacySummary:
        try:
            from client.ledger import PrivacyLedger
            from shared.privacy.accounting import PrivacyBudget

            with open(self.path, encoding="utf-8") as fh:
                header = json.loads(fh.readline())
            # Open under the ledger's own settings: serving reads it, it never decides them.
            budget = PrivacyBudget(
                epsilon_max=self.epsilon_budget or 1.0, delta=header["delta"], accountant=header["accountant"]
            )
            report = PrivacyLedger.open(self.path, header["store_id"], budget).spent_report()
        except Exception as err:  # corrupt, torn, another format: say so, keep the page working
            log.warning("privacy ledger %s not summarised: %s", self.path, err)
            return PrivacySummary(available=False, message=f"ledger unreadable: {type(err).__name__}")
        epsilon = _finite(report["epsilon"])
        budget_text = "" if self.epsilon_budget else "; budget not configured (serve --epsilon-budget)"
        return PrivacySummary(
            available=True,
            message=("epsilon is infinite (a round without noise)" if epsilon is None else report["scope"])
            + budget_text,
            epsilon=epsilon,
            epsilon_budget=self.epsilon_budget,
            delta=report["delta"],
            rounds=report["rounds"],
            unit=report["unit"],
            accountant=report["accountant"],
        )
