"""``fedrec-sim run`` on Flower's Simulation Engine (Ray): the README's command, tiny and quick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def test_run_on_the_ray_simulation_engine_prints_the_final_table(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "simulations.cli", "run", "--engine", "ray", "--quick", "--stores", "3",
        "--rounds", "1", "--model", "dnn", "--run-dir", str(run_dir),
        "--set", "model-dim=8", "--set", "synthetic-items=60", "--set", "synthetic-customers=200",
        "--set", "batch-size=16", "--set", "local-epochs=0.5", "--set", "finetune-epochs=1",
    ]  # fmt: skip
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(tmp_path / ".flwr"), "FEDREC_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "round 1/1" in out and "global" in out and "personalized" in out and "secagg+" in out
    rows = [json.loads(line) for line in (run_dir / "operator" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["trained"] == 3 and rows[0]["aggregation"] == "secagg+"
    final = json.loads((run_dir / "operator" / "final.json").read_text())
    assert final["stores_evaluated"] == 3 and final["epsilon_max"] <= 8.0 + 1e-9
    for store in json.loads((run_dir / "data" / "stores.json").read_text())["store_ids"]:
        assert (run_dir / "stores" / store / "ledger.jsonl").exists()
        assert (run_dir / "stores" / store / "models" / "CURRENT").exists()
