"""The store's private round: the plan fits the budget, rounds stop exactly at it, the ledger never lags."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from client.dp_training import DPTrainConfig
from client.ledger import PrivacyLedger
from client.private_round import PrivacyPlan, run_private_round
from shared.data.prepare import prepare
from shared.models import ModelConfig, build_model
from shared.privacy.accounting import PrivacyBudget
from simulations.synthetic import SyntheticConfig, generate

BUDGET = PrivacyBudget(epsilon_max=3.0, delta=1e-5)
DP = DPTrainConfig(epochs=0.5, expected_batch_size=32, lr=1e-2)


@pytest.fixture(scope="module")
def data():
    synth = generate(SyntheticConfig(n_stores=2, n_items=80, n_customers=160, seed=3))
    return prepare(pd.concat(list(synth.stores.values()), ignore_index=True), synth.catalog, max_len=12)


def small_model(n_items: int):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="dnn", dim=8, max_len=12, mlp_hidden=16), n_items)


def test_rounds_stop_exactly_at_the_budget(tmp_path, data):
    torch.set_num_threads(1)
    plan = PrivacyPlan(budget=BUDGET, rounds=3, dp=DP)
    ledger = PrivacyLedger.open(tmp_path / "ledger.jsonl", "store-0", BUDGET)
    model = small_model(data.catalog.n_items)
    outcomes = [run_private_round(model, data.train, ledger, plan, round_id=r, seed=r) for r in range(5)]
    assert [o.status for o in outcomes] == ["trained"] * 3 + ["declined"] * 2
    assert "budget exhausted" in outcomes[3].reason
    spent = ledger.epsilon()
    assert spent <= BUDGET.epsilon_max
    assert spent > 0.9 * BUDGET.epsilon_max, "calibration should spend the plan, not waste it"
    events = ledger.events()
    assert len(events) == 3 and len({e.noise_multiplier for e in events}) == 1  # noise fixed for the plan
    assert outcomes[2].epsilon == pytest.approx(spent)


def test_training_changes_the_model_and_declining_does_not(tmp_path, data):
    plan = PrivacyPlan(budget=BUDGET, rounds=1, dp=DP)
    ledger = PrivacyLedger.open(tmp_path / "ledger.jsonl", "store-0", BUDGET)
    model = small_model(data.catalog.n_items)
    before = [p.detach().clone() for p in model.parameters()]
    assert run_private_round(model, data.train, ledger, plan, round_id=0, seed=0).status == "trained"
    after = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert run_private_round(model, data.train, ledger, plan, round_id=1, seed=1).status == "declined"
    assert all(torch.equal(a, p) for a, p in zip(after, model.parameters(), strict=True))
    assert len(ledger.events()) == 1


def test_a_crash_after_the_ledger_write_never_under_counts(tmp_path):
    """A store process dies right after its round is recorded, before it could send: the event stays."""
    script = textwrap.dedent(
        f"""
        import os, pandas as pd, torch
        from client.dp_training import DPTrainConfig
        from client.ledger import PrivacyLedger
        from client.private_round import PrivacyPlan, run_private_round
        from shared.data.prepare import prepare
        from shared.models import ModelConfig, build_model
        from shared.privacy.accounting import PrivacyBudget
        from simulations.synthetic import SyntheticConfig, generate
        torch.set_num_threads(1)
        synth = generate(SyntheticConfig(n_stores=2, n_items=80, n_customers=160, seed=3))
        data = prepare(pd.concat(list(synth.stores.values())), synth.catalog, max_len=12)
        budget = PrivacyBudget(epsilon_max=3.0, delta=1e-5)
        ledger = PrivacyLedger.open({str(tmp_path / "ledger.jsonl")!r}, "store-0", budget)
        model = build_model(ModelConfig(kind="dnn", dim=8, max_len=12, mlp_hidden=16), data.catalog.n_items)
        plan = PrivacyPlan(budget=budget, rounds=3, dp=DPTrainConfig(epochs=0.5, expected_batch_size=32))
        outcome = run_private_round(model, data.train, ledger, plan, round_id=0, seed=0)
        assert outcome.status == "trained"
        os._exit(17)  # killed before the update could be sent
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr[-2000:]
    ledger = PrivacyLedger.open(tmp_path / "ledger.jsonl", "store-0", BUDGET)
    assert [e.round_id for e in ledger.events()] == [0]
    assert ledger.epsilon() > 0
