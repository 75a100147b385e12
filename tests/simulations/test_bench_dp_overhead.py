"""The dp-overhead benchmark measures every mode it compares (tiny sizes: a smoke test, no timing)."""

from __future__ import annotations

import pytest

from simulations.bench.dp_overhead import MODES, measure, per_sample_bytes


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_takes_steps_and_reports_time_and_memory(mode, monkeypatch):
    monkeypatch.setenv("FEDREC_THREADS", "1")  # measure() sets torch's threads; keep the suite's single one
    result = measure("transformer", n_items=300, mode=mode, batch=8, steps=2, warmup=1, tied=True)
    assert len(result["times"]) == 2 and result["median_s"] > 0
    assert result["peak_rss_bytes"] > 0


def test_hooks_memory_estimate_is_what_per_sample_tables_take():
    # 256 records x (100,001 x 64) floats: the reason hooks mode is skipped at 100k items.
    assert per_sample_bytes(100_000, 64, 256, tied=True) == 256 * 100_001 * 64 * 4
    assert per_sample_bytes(100_000, 64, 256, tied=False) == 2 * 256 * 100_001 * 64 * 4
