"""The serving benchmark end to end on its smallest setting (slow: it trains nothing but starts servers)."""

from __future__ import annotations

import argparse
import json

import pytest
from rich.console import Console

from simulations.bench import serving


@pytest.mark.slow
def test_quick_serving_bench_runs_and_writes_its_json(tmp_path):
    args = argparse.Namespace(quick=True, models=["dnn"], datasets=["synthetic-100k"], out=tmp_path)
    assert serving.main(args, Console(width=140)) == 0
    document = json.loads((tmp_path / "serving-quick.json").read_text())
    phases = {(r["scorer"], r["phase"], r["connections"]) for r in document["results"]}
    assert ("fast", "customer", 1) in phases and ("naive", "session", 4) in phases
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in document["results"])
    assert "serving (quick): 100k items" in document["summary"]
    assert not (tmp_path / "serving-state" / "synthetic-100k").exists()
