"""Kill ``fedrec-sim run`` in the middle of a round, resume it, and check nothing was lost or counted twice.

The run is killed (SIGKILL, no clean-up) once round 2 is checkpointed and at least one store has already
recorded round 3 in its ledger, i.e. while round 3 is being trained. ``--resume`` must repeat round 3 from the
round-2 checkpoint: stores that already spent round 3 re-send the same update instead of training again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.ledger import PrivacyLedger
from shared.privacy.accounting import PrivacyBudget
from simulations.partition import load_run_data

ROOT = Path(__file__).resolve().parents[3]
ROUNDS = 4
ARGS = [
    "run", "--engine", "inprocess", "--stores", "3", "--rounds", str(ROUNDS), "--model", "dnn",
    "--epsilon", "4",
    "--set", "model-dim=8", "--set", "model-max-len=12", "--set", "model-mlp-hidden=16",
    "--set", "synthetic-items=60", "--set", "synthetic-customers=300", "--set", "batch-size=8",
    "--set", "local-epochs=0.5", "--set", "personalize=false", "--set", "stage-timeout=60",
]  # fmt: skip


def command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "simulations.cli", *ARGS, "--run-dir", str(run_dir), *extra]


def env() -> dict[str, str]:
    return {**os.environ, "FEDREC_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def ledger_rounds(run_dir: Path) -> dict[str, list[int]]:
    data = load_run_data(run_dir)
    out = {}
    for store in data.store_ids:
        path = data.store_dir(store) / "ledger.jsonl"
        if path.exists():
            ledger = PrivacyLedger.open(path, store, PrivacyBudget(4.0, 1e-5))
            out[store] = [e.round_id for e in ledger.events()]
    return out


def test_killed_run_resumes_without_losing_or_repeating_a_round(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        command(run_dir), cwd=ROOT, env=env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            done = (run_dir / "operator" / "checkpoints" / "round-000002").is_dir()
            if done and any(3 in rounds for rounds in ledger_rounds(run_dir).values()):
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed in round 3")
            time.sleep(0.02)
        else:
            pytest.fail("round 3 never started")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "operator" / "checkpoints" / "round-000003").exists(), "killed too late"
    assert not (run_dir / "operator" / "final.json").exists()

    # Without --resume the run refuses to start over on top of the checkpoints.
    again = subprocess.run(command(run_dir), capture_output=True, text=True, env=env(), cwd=ROOT, timeout=240)
    assert again.returncode == 2 and "resume" in again.stderr

    resumed = subprocess.run(
        command(run_dir, "--resume"), capture_output=True, text=True, env=env(), cwd=ROOT, timeout=400
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "global" in resumed.stdout  # the final table

    metrics = [json.loads(line) for line in (run_dir / "operator" / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in metrics] == list(range(1, ROUNDS + 1))
    final = json.loads((run_dir / "operator" / "final.json").read_text())
    assert final["rounds_logged"] == list(range(1, ROUNDS + 1))
    # Round 3 was repeated from the round-2 checkpoint; stores that had spent it re-sent their update.
    assert metrics[2]["resent"] >= 1 and metrics[2]["trained"] == 3 and metrics[2]["declined"] == 0
    privacy = [json.loads(line) for line in (run_dir / "operator" / "privacy.jsonl").read_text().splitlines()]
    pairs = [(p["store_id"], p["round"]) for p in privacy]
    assert len(pairs) == len(set(pairs)) == 3 * ROUNDS
    for store, rounds in ledger_rounds(run_dir).items():
        assert rounds == list(range(1, ROUNDS + 1)), store  # each round spent exactly once
        reported = [p for p in privacy if p["store_id"] == store][-1]["epsilon"]
        ledger = PrivacyLedger.open(load_run_data(run_dir).store_dir(store) / "ledger.jsonl", store,
                                    PrivacyBudget(4.0, 1e-5))  # fmt: skip
        assert reported == pytest.approx(ledger.epsilon())
