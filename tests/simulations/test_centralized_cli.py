"""``fedrec-sim`` in-process: a small centralized run, a clear error for a bad data set, and ``synth``.

``centralized`` has no flag to shrink the synthetic generator itself; ``--max-customers`` (a seeded customer
subset of the default 3000-customer / 2000-item set) is what keeps this run to a couple of seconds.
"""

from __future__ import annotations

import json

import pytest
import torch

from shared.data.catalog import Catalog
from shared.data.loaders import known_datasets
from shared.data.schema import read_interactions
from simulations.cli import main


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """The CLI sets torch's thread count process-wide; pin it to 1 and restore it for the other tests."""
    previous = torch.get_num_threads()
    monkeypatch.setenv("FEDREC_THREADS", "1")
    yield
    torch.set_num_threads(previous)


def test_centralized_small_synthetic_run_writes_results(tmp_path, capsys):
    # Prepare
    out = tmp_path / "r.json"
    argv = ["centralized", "--dataset", "synthetic", "--model", "dnn", "--epochs", "1"]
    argv += ["--max-customers", "200", "--out", str(out)]

    # Execute
    code = main(argv)

    # Assert
    assert code == 0
    results = json.loads(out.read_text())
    assert results["dataset"] == "synthetic"
    assert results["data"]["customers"] == 200
    assert results["epochs_run"] == 1 and results["best_epoch"] == 1
    assert results["model"]["kind"] == "dnn"
    assert results["train"]["epochs"] == 1 and results["train"]["seed"] == 0
    for section in ("test", "popularity_test", "test_sampled_100", "valid"):
        metrics = results[section]
        assert metrics["n"] == results["data"]["eval_customers"] > 0, section
        for key in ("hr@10", "ndcg@10", "mrr@10"):
            assert 0.0 <= metrics[key] <= 1.0, (section, key)
    assert results["test_sampled_100"]["hr@10"] >= results["test"]["hr@10"]
    assert 0 < results["train_seconds"] <= results["wall_seconds"]
    assert len(results["history"]) == 1
    assert str(out) in capsys.readouterr().out.replace("\n", "")


def test_centralized_unknown_dataset_is_one_clear_line(capsys):
    # Execute: brackets in the name must come out verbatim (not be eaten as rich markup).
    code = main(["centralized", "--dataset", "no-such-set[eu]", "--model", "dnn"])

    # Assert
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: unknown data set 'no-such-set[eu]'")
    assert "'synthetic'" in lines[0]
    assert all(name in lines[0] for name in known_datasets())
    assert "Traceback" not in captured.err + captured.out


def test_centralized_epochs_zero_is_rejected_not_ignored(capsys):
    # --epochs 0 used to be falsy and silently fell back to the preset's 200 epochs.
    code = main(["centralized", "--dataset", "synthetic", "--model", "dnn", "--epochs", "0"])

    err = capsys.readouterr().err
    assert code == 2
    assert "train.epochs=0" in err


def test_synth_writes_catalog_manifest_and_stores(tmp_path):
    # Prepare
    out = tmp_path / "synth"

    # Execute
    code = main(["synth", "--out", str(out), "--stores", "2", "--items", "50", "--customers", "80"])

    # Assert
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    catalog = Catalog.load(out / "catalog.json")
    assert catalog.n_items == manifest["n_items"] == 50
    assert manifest["catalog_hash"] == catalog.content_hash
    assert [s["store_id"] for s in manifest["stores"]] == ["store-00", "store-01"]
    total_customers = 0
    for store in manifest["stores"]:
        frame, report = read_interactions(out / store["file"])
        assert report.rows_dropped == 0
        assert len(frame) == store["n_interactions"] > 0
        assert frame["user_id"].nunique() == store["n_customers"]
        assert set(frame["item_id"]) <= set(catalog.item_ids)
        total_customers += store["n_customers"]
    assert total_customers == 80
