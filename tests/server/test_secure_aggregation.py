"""SecAgg+ end to end on the real ServerApp/ClientApp (in-process grid, 5 stores, one run for all tests).

Round 1 runs clean; in rounds 2-5 one store fails at ``setup``, ``share_keys``, training
(``collect_masked_vectors``) and ``unmask`` respectively. Every round the unmasked aggregate must equal the
exact weighted mean of the surviving stores' bounded deltas (read back from each store's re-send cache) within
the quantization error, the failed store must be back in the next round, and what the operator receives from
one store must look like uniform noise, unrelated to that store's delta.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from scipy import stats

from client.client_app import make_client_app
from client.update import CachedUpdate
from server.aggregation import PlainFitWorkflow, fit_workflow
from server.checkpoints import CheckpointStore
from server.rounds import RunHooks
from server.secagg import RobustSecAggPlusWorkflow
from server.server_app import make_server_app
from shared.config import (
    AggregationConfig,
    FederationConfig,
    LocalTrainingConfig,
    PersonalizationConfig,
    PrivacyConfig,
    SimulationDataConfig,
)
from shared.models import ModelConfig, build_model
from simulations.inprocess_grid import run_inprocess
from simulations.partition import load_run_data

N_STORES = 5
FAULTS = {
    2: (1, Stage.SETUP),
    3: (2, Stage.SHARE_KEYS),
    4: (3, Stage.COLLECT_MASKED_VECTORS),
    5: (4, Stage.UNMASK),
}


def tiny_config(run_dir, **aggregation) -> FederationConfig:
    return FederationConfig(
        rounds=len(FAULTS) + 1,
        run_dir=str(run_dir),
        model=ModelConfig(kind="dnn", dim=8, max_len=12, mlp_hidden=16, dropout=0.0, emb_dropout=0.0),
        local=LocalTrainingConfig(epochs=1.0, batch_size=16, lr=1e-2),
        privacy=PrivacyConfig(dp=False),  # this module tests the protocol; DP runs in tests/client/federation
        personalization=PersonalizationConfig(enabled=False),
        data=SimulationDataConfig(synthetic_items=60, synthetic_customers=300),
        aggregation=AggregationConfig(max_weight=120, delta_bound=0.5, stage_timeout=60, **aggregation),
    )


def fault_mod(msg, ctx, call_next):
    """Outermost mod: raise for the store and stage scheduled in FAULTS (an error reply, like a crash)."""
    if msg.metadata.message_type == "train" and RECORD_KEY_CONFIGS in msg.content.config_records:
        stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
        if FAULTS.get(int(msg.metadata.group_id)) == (int(ctx.node_config["partition-id"]), stage):
            raise RuntimeError(f"injected failure at {stage}")
    return call_next(msg, ctx)


class RecordingGrid:
    """Wraps the operator's grid and keeps every reply it hands to server-side code."""

    def __init__(self, grid) -> None:
        self._grid = grid
        self.replies = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.replies.extend(replies)
        return replies


def initial_weights(cfg: FederationConfig, n_items: int) -> list[np.ndarray]:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, n_items)
    return [v.detach().numpy().copy() for v in model.state_dict().values()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("secagg")
    cfg = tiny_config(run_dir)
    rows, globals_, caches = [], {}, {}
    recording: list[RecordingGrid] = []

    def on_round(row):
        rows.append(row)
        data = load_run_data(run_dir)
        caches[row["round"]] = {
            s: CachedUpdate.load(data.store_dir(s) / "federation") for s in data.store_ids
        }
        latest = CheckpointStore(run_dir / "operator" / "checkpoints").latest()
        globals_[row["round"]] = list(latest.weights.values())

    def wrap(grid):
        recording.append(RecordingGrid(grid))
        return recording[0]

    hooks = RunHooks(on_round=on_round, wrap_grid=wrap, store_wait_seconds=5)
    grid = run_inprocess(make_server_app(cfg, hooks), make_client_app(cfg, extra_mods=[fault_mod]), N_STORES)
    data = load_run_data(run_dir)
    partition_of = {nid: int(ctx.node_config["partition-id"]) for nid, ctx in grid.contexts.items()}
    from shared.data.catalog import Catalog

    n_items = Catalog.load(data.catalog_path).n_items
    globals_[0] = initial_weights(cfg, n_items)
    return {
        "cfg": cfg,
        "rows": rows,
        "globals": globals_,
        "caches": caches,
        "data": data,
        "partition_of": partition_of,
        "replies": recording[0].replies,
        "final": json.loads((run_dir / "operator" / "final.json").read_text()),
    }


def survivors(run, r):
    """Stores whose masked update entered round r's sum: they trained in r (their cache is for round r)."""
    return {s: c for s, c in run["caches"][r].items() if c is not None and c.round_id == r}


def test_every_round_aggregates_the_survivors_within_quantization_error(run):
    for row in run["rows"]:
        r = row["round"]
        alive = survivors(run, r)
        total = sum(c.weight for c in alive.values())
        expected_mean = [
            sum(c.weight * c.arrays[i].astype(np.float64) for c in alive.values()) / total
            for i in range(len(run["globals"][0]))
        ]
        before, after = run["globals"][r - 1], run["globals"][r]
        err = np.concatenate(
            [(a - b - m).ravel() for a, b, m in zip(after, before, expected_mean, strict=True)]
        )
        p = row["secagg"]
        step = 2 * p["clipping_range"] / 2 ** p["quantization_bits"]  # one quantization level per store
        ratio = sum(c.weight for c in alive.values()) / p["max_weight"]
        bound = len(alive) * step / ratio + 1e-6  # + float32 rounding of the global weights
        assert np.abs(err).max() <= bound, (r, np.abs(err).max(), bound)
        assert row["updated"] and row["clipped_fraction"] == 0.0


def test_quantization_error_is_negligible_against_the_update(run):
    r = 1
    alive = survivors(run, r)
    total = sum(c.weight for c in alive.values())
    mean = np.concatenate(
        [sum(c.weight * c.arrays[i] for c in alive.values()).ravel() / total for i in range(4)]
    )
    applied = np.concatenate(
        [(a - b).ravel() for a, b in zip(run["globals"][1][:4], run["globals"][0][:4], strict=True)]
    )
    rmse = float(np.sqrt(np.mean((applied - mean) ** 2)))
    assert rmse < 1e-5 * max(1.0, float(np.sqrt(np.mean(mean**2))) * 1e3)
    assert rmse / float(np.sqrt(np.mean(mean**2))) < 1e-3


def test_a_store_failing_at_any_stage_is_dropped_and_back_next_round(run):
    rows = {row["round"]: row for row in run["rows"]}
    store_ids = run["data"].store_ids
    assert rows[1]["trained"] == N_STORES and rows[1]["failed"] == 0
    for r, (partition, stage) in FAULTS.items():
        row = rows[r]
        assert row["sampled"] == N_STORES and row["updated"], (r, stage, row)
        failed_store = store_ids[partition]
        if stage == Stage.UNMASK:  # its masked update was already in the sum: it still counts
            assert failed_store in survivors(run, r)
            assert row["trained"] == N_STORES
        else:
            assert failed_store not in survivors(run, r)
            assert row["trained"] == N_STORES - 1
        if stage in (Stage.SETUP, Stage.SHARE_KEYS):
            assert row["secagg"]["pruned_before_masking"] == 1
        if r + 1 in rows:  # everyone again in the next round
            assert failed_store in survivors(run, r + 1)
    assert run["final"]["stores_evaluated"] == N_STORES


def test_what_the_operator_receives_from_one_store_is_masked(run):
    masked = [
        m
        for m in run["replies"]
        if m.metadata.group_id == "1"
        and m.has_content()
        and Key.MASKED_PARAMETERS in m.content.config_records.get(RECORD_KEY_CONFIGS, {})
    ]
    assert len(masked) == N_STORES
    p = run["rows"][0]["secagg"]
    q_range, bound = 2 ** p["quantization_bits"], p["clipping_range"]
    for msg in masked:
        # No plaintext arrays travel next to the masked vector.
        assert all(len(rec) == 0 for rec in msg.content.array_records.values())
        store = run["data"].store_ids[run["partition_of"][msg.metadata.src_node_id]]
        true = run["caches"][1][store]
        ratio = true.weight / p["max_weight"]
        scaled = [(np.clip(a * ratio, -bound, bound) + bound) * q_range / (2 * bound) for a in true.arrays]
        quantized = np.concatenate([q.ravel() for q in scaled])
        vectors = [
            bytes_to_ndarray(b) for b in msg.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        ]
        values = np.concatenate([v.ravel() for v in vectors[1:]]).astype(
            np.float64
        )  # [0] is the weight factor
        assert values.shape == quantized.shape
        # Uniform over the 2^32 modulus, uncorrelated with the true (quantized) delta, never close to it.
        assert stats.kstest(values / 2**32, "uniform").pvalue > 1e-4
        assert abs(np.corrcoef(values, quantized)[0, 1]) < 4 / math.sqrt(len(values))
        assert np.mean(np.abs(values - quantized) < 0.01 * 2**32) < 0.1


def test_plain_mode_needs_the_flag_and_warns(caplog, tmp_path):
    secure = fit_workflow(tiny_config(tmp_path).aggregation, lambda n: n)
    assert isinstance(secure, RobustSecAggPlusWorkflow) and math.isfinite(secure.timeout)
    with caplog.at_level(logging.WARNING, logger="server.aggregation"):
        plain = fit_workflow(tiny_config(tmp_path, insecure_plain=True).aggregation, lambda n: n)
    assert isinstance(plain, PlainFitWorkflow) and math.isfinite(plain.timeout)
    assert any("INSECURE" in r.getMessage() for r in caplog.records)


def test_plain_run_aggregates_exactly(tmp_path):
    cfg = replace(tiny_config(tmp_path, insecure_plain=True), rounds=1)
    got = {}
    hooks = RunHooks(store_wait_seconds=5, on_round=lambda row: got.update(row=row))
    run_inprocess(make_server_app(cfg, hooks), make_client_app(cfg), 3)
    data = load_run_data(tmp_path)
    caches = [CachedUpdate.load(data.store_dir(s) / "federation") for s in data.store_ids]
    total = sum(c.weight for c in caches)
    latest = CheckpointStore(tmp_path / "operator" / "checkpoints").latest()
    from shared.data.catalog import Catalog

    init = initial_weights(cfg, Catalog.load(data.catalog_path).n_items)
    for i, (after, before) in enumerate(zip(latest.weights.values(), init, strict=True)):
        mean = sum(c.weight * c.arrays[i].astype(np.float64) for c in caches) / total
        np.testing.assert_allclose(after, before + mean, atol=1e-6)
    assert got["row"]["aggregation"] == "plain-insecure" and got["row"]["trained"] == 3


def test_flower_without_the_fix_loses_rounds_with_early_dropouts(tmp_path, monkeypatch):
    """Regression guard: Flower 1.42's workflow alone halts when a store fails at setup or share_keys."""
    import server.secagg

    monkeypatch.setattr(server.secagg, "prune_dropped", lambda state: set())
    cfg = replace(tiny_config(tmp_path), rounds=3)
    rows = []
    hooks = RunHooks(store_wait_seconds=5, on_round=rows.append)
    run_inprocess(make_server_app(cfg, hooks), make_client_app(cfg, extra_mods=[fault_mod]), N_STORES)
    assert [row["updated"] for row in rows] == [True, False, False]
    assert all("halted" in row["note"] for row in rows[1:])
