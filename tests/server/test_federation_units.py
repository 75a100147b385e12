"""Plain-function parts of the operator: run config, SecAgg+ parameters, server optimizers, checkpoints."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from server.checkpoints import CheckpointStore
from server.optimizer import ServerOptimizer
from server.secagg import MODULUS_RANGE, derive_params
from shared.config import RUN_CONFIG_KEYS, FederationConfig
from shared.errors import AggregationError, ConfigError, FedrecError

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_defaults_parse_to_the_config_defaults_and_round_trip():
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "server.server_app:app", "clientapp": "client.client_app:app"}
    assert set(app["config"]) == set(RUN_CONFIG_KEYS)
    cfg = FederationConfig.from_run_config(app["config"])
    assert cfg == FederationConfig()
    assert FederationConfig.from_run_config(cfg.to_run_config()) == cfg
    assert cfg.aggregation.secure and cfg.privacy.dp and math.isfinite(cfg.aggregation.stage_timeout)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("num-server-rounds", 0, "num-server-rounds"),
        ("stage-timeout", 0, "stage-timeout"),
        ("server-optimizer", "sgd", "server-optimizer"),
        ("min-stores", 1, "min-stores"),
        ("dp", "yes", "dp"),
        ("no-such-key", 1, "unknown run config key 'no-such-key'"),
        ("delta", 2.0, "delta"),
        ("lr-decay", 1.5, "lr-decay"),
        ("lr-decay", 0.0, "lr-decay"),
    ],
)
def test_bad_run_config_names_the_key_and_the_value(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        FederationConfig.from_run_config({key: value})


def test_local_learning_rate_decays_by_round():
    cfg = FederationConfig.from_run_config({"lr": 0.01, "lr-decay": 0.5})
    assert [cfg.local.round_lr(r) for r in (1, 2, 3)] == pytest.approx([0.01, 0.005, 0.0025])
    assert cfg.local.to_dp_config(3).lr == pytest.approx(0.0025)
    assert FederationConfig.from_run_config({"lr": 0.01}).local.to_dp_config(7).lr == pytest.approx(0.01)


def test_a_store_budget_in_its_node_config_overrides_the_run():
    cfg = FederationConfig().with_node_policy({"epsilon": 2.5, "delta": 1e-6, "partition-id": 3})
    assert (cfg.privacy.epsilon, cfg.privacy.delta) == (2.5, 1e-6)
    with pytest.raises(ConfigError, match="epsilon"):
        FederationConfig().with_node_policy({"epsilon": -1})


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 10, 16, 20, 64, 500])
def test_secagg_parameters_for_n_stores(n):
    p = derive_params(n, clipping_range=0.5, max_weight=100, timeout=30)
    assert 2 <= p.num_shares <= n
    assert p.num_shares % 2 == 1 or p.num_shares == n  # an even count below n crashes flwr 1.42
    assert p.threshold > p.num_shares / 2 and (p.threshold < p.num_shares or n == 2)
    assert n * p.quantization_range <= MODULUS_RANGE and p.quantization_range <= 2**30  # no wrap, fits int32
    assert p.timeout == 30


def test_secagg_needs_two_stores_and_a_finite_timeout():
    with pytest.raises(AggregationError):
        derive_params(1, clipping_range=1, max_weight=1, timeout=10)
    with pytest.raises(AggregationError, match="timeout"):
        derive_params(5, clipping_range=1, max_weight=1, timeout=math.inf)


def test_fedavg_adds_the_scaled_mean_delta():
    opt = ServerOptimizer(kind="fedavg", lr=0.5)
    w = [np.ones((2, 2), np.float32), np.zeros(3, np.float32)]
    d = [np.full((2, 2), 0.2, np.float32), np.array([1, -1, 0], np.float32)]
    out = opt.step(w, d)
    np.testing.assert_allclose(out[0], 1.1)
    np.testing.assert_allclose(out[1], [0.5, -0.5, 0])
    with pytest.raises(AggregationError, match="non-finite"):
        opt.step(w, [d[0], np.array([np.nan, 0, 0], np.float32)])


def test_fedadam_matches_the_paper_and_its_state_round_trips():
    opt = ServerOptimizer(kind="fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    w = [np.zeros(3, np.float32)]
    d = [np.array([0.1, -0.2, 0.0], np.float32)]
    out = opt.step(w, d)
    m, v = 0.1 * d[0], 0.01 * d[0] ** 2
    np.testing.assert_allclose(out[0], 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    clone = ServerOptimizer(kind="fedadam", lr=0.1)
    clone.load_state(opt.state_meta(), opt.state_arrays())
    np.testing.assert_array_equal(clone.step(out, d)[0], opt.step(out, d)[0])
    with pytest.raises(AggregationError, match="server-optimizer"):
        ServerOptimizer(kind="fedavg").load_state(opt.state_meta(), {})


def test_checkpoints_are_atomic_verified_and_pruned(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.latest() is None
    weights = {"b.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.ones(2, np.float32)}
    for r in (1, 2, 3):
        store.save(r, weights, {}, {"metrics": [{"round": i} for i in range(1, r + 1)]})
    latest = store.latest()
    assert latest.round == 3 and list(latest.weights) == ["b.weight", "a.bias"]  # model order kept
    assert [m["round"] for m in latest.state["metrics"]] == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.glob("round-*")) == ["round-000002", "round-000003"]
    (tmp_path / ".round-000004.tmp").mkdir()  # a crash mid-write leaves a temp dir: ignored
    assert store.latest().round == 3
    (latest.path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(FedrecError, match="checksum"):
        store.latest()
