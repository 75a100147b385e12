"""Non-IID partition of a data set into stores, and the run-dir layout simulated stores share."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from shared.data.catalog import Catalog
from shared.errors import ConfigError
from simulations.partition import PartitionSpec, ensure_run_data, partition_customers


def frame_and_catalog(n_users=600, n_items=200, seed=0):
    rng = np.random.default_rng(seed)
    cats = [f"c{i % 8}|x" for i in range(n_items)]
    catalog = Catalog.from_items([f"i{i}" for i in range(n_items)], categories=cats)
    rows = []
    for u in range(n_users):
        taste = u % 8  # customers of one taste buy mostly from one category
        items = [i for i in range(n_items) if i % 8 == taste]
        for t, item in enumerate(rng.choice(items, size=5, replace=False)):
            rows.append((f"u{u}", f"i{item}", t))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(event="view"), catalog


def test_partition_keeps_customers_whole_uneven_and_non_iid():
    frame, catalog = frame_and_catalog()
    spec = PartitionSpec(dataset="test", n_stores=5, seed=1, alpha=0.3, clusters=8, min_customers=20)
    stores, report = partition_customers(frame, catalog, spec)
    owners = {}
    for sid, part in stores.items():
        for user in part["user_id"].unique():
            assert owners.setdefault(user, sid) == sid  # one store owns all of a customer's history
    assert sum(len(p) for p in stores.values()) == len(frame)
    sizes = sorted(report["customers"].values())
    assert sizes[0] >= 20 and sizes[-1] > 1.5 * sizes[0]
    assert report["mean_tv_distance_to_pooled"] > 0.2
    _, iid_report = partition_customers(frame, catalog, replace(spec, alpha=1000.0))
    assert iid_report["mean_tv_distance_to_pooled"] < report["mean_tv_distance_to_pooled"]


def test_run_data_is_written_once_and_guarded_by_its_spec(tmp_path):
    spec = PartitionSpec(dataset="synthetic", n_stores=3, seed=0, synthetic_items=60, synthetic_customers=200)
    data = ensure_run_data(tmp_path, spec)
    assert len(data.store_ids) == 3
    for sid in data.store_ids:
        state = data.store_dir(sid)
        assert (state / "interactions.parquet").exists() and (state / "catalog.json").exists()
    manifest = json.loads((tmp_path / "data" / "stores.json").read_text())
    assert manifest["store_ids"] == list(data.store_ids)
    assert ensure_run_data(tmp_path, spec) == data
    with pytest.raises(ConfigError, match="another run-dir"):
        ensure_run_data(tmp_path, replace(spec, n_stores=4))
