"""The store's side of a federated run with DP-SGD and SecAgg+ (in-process grid, 3 stores, 2 rounds).

One store starts with its budget already spent: it must decline every round with "budget exhausted" (visible
to the operator) while the others train. A recording mod (outermost, so it sees exactly what leaves the
store) keeps every outgoing message; no customer id and no byte of the personalized model may be in them.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from flwr.common.serde import message_to_proto

from client import model_store
from client.client_app import make_client_app
from client.ledger import PrivacyLedger
from client.store import LEDGER
from server.rounds import RunHooks
from server.server_app import make_server_app
from shared.config import (
    AggregationConfig,
    FederationConfig,
    LocalTrainingConfig,
    PersonalizationConfig,
    PrivacyConfig,
    SimulationDataConfig,
)
from shared.data.schema import read_interactions
from shared.models import ModelConfig
from shared.privacy.accounting import PrivacyEvent
from shared.serde import load_model
from simulations.inprocess_grid import run_inprocess
from simulations.partition import PartitionSpec, ensure_run_data

N_STORES = 3
EXHAUSTED = 2  # partition whose ledger is already at its budget


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("dprun")
    cfg = FederationConfig(
        rounds=2,
        run_dir=str(run_dir),
        model=ModelConfig(kind="dnn", dim=8, max_len=12, mlp_hidden=16),
        local=LocalTrainingConfig(epochs=0.5, batch_size=8, lr=1e-2),
        privacy=PrivacyConfig(dp=True, epsilon=4.0, delta=1e-5),
        personalization=PersonalizationConfig(enabled=True, epochs=2, patience=1, lr=1e-2),
        data=SimulationDataConfig(synthetic_items=60, synthetic_customers=300),
        aggregation=AggregationConfig(max_weight=150, delta_bound=0.5, stage_timeout=60),
    )
    data = ensure_run_data(run_dir, PartitionSpec.from_config(cfg.data, N_STORES, cfg.seed))
    spent_store = data.store_ids[EXHAUSTED]
    ledger = PrivacyLedger.open(data.store_dir(spent_store) / LEDGER, spent_store, cfg.privacy.budget())
    ledger.append(
        PrivacyEvent(
            round_id=0, noise_multiplier=0.5, sample_rate=1.0, steps=200, accountant="rdp", time=time.time()
        ),
        enforce_budget=False,
    )
    outgoing: dict[str, list[bytes]] = {s: [] for s in data.store_ids}

    def record_mod(msg, ctx, call_next):
        reply = call_next(msg, ctx)
        outgoing[data.store_ids[int(ctx.node_config["partition-id"])]].append(
            message_to_proto(reply).SerializeToString()
        )
        return reply

    rows = []
    hooks = RunHooks(on_round=rows.append, store_wait_seconds=5)
    run_inprocess(make_server_app(cfg, hooks), make_client_app(cfg, extra_mods=[record_mod]), N_STORES)
    return {
        "cfg": cfg,
        "data": data,
        "rows": rows,
        "outgoing": outgoing,
        "spent_store": spent_store,
        "privacy": [json.loads(x) for x in (run_dir / "operator" / "privacy.jsonl").read_text().splitlines()],
        "final": json.loads((run_dir / "operator" / "final.json").read_text()),
    }


def test_exhausted_store_declines_and_the_operator_sees_why(run):
    for row in run["rows"]:
        assert row["trained"] == N_STORES - 1 and row["declined"] == 1 and row["updated"]
        assert any("budget exhausted" in reason for reason in row["declined_reasons"])
    declined = [p for p in run["privacy"] if p["store_id"] == run["spent_store"]]
    assert [p["status"] for p in declined] == ["declined", "declined"]
    assert all(p["epsilon"] > run["cfg"].privacy.epsilon for p in declined)


def test_ledgers_hold_one_event_per_trained_round_and_match_the_reported_epsilon(run):
    budget = run["cfg"].privacy.budget()
    for store in run["data"].store_ids:
        ledger = PrivacyLedger.open(run["data"].store_dir(store) / LEDGER, store, budget)
        rounds = [e.round_id for e in ledger.events()]
        if store == run["spent_store"]:
            assert rounds == [0]
            continue
        assert rounds == [1, 2]
        last = [p for p in run["privacy"] if p["store_id"] == store][-1]
        assert last["epsilon"] == pytest.approx(ledger.epsilon())
        assert ledger.epsilon() <= budget.epsilon_max
        assert last["delta"] == budget.delta and last["unit"] == "customer" and last["accountant"] == "rdp"
    eps = run["final"]
    assert eps["epsilon_max"] >= eps["epsilon_median"] >= eps["epsilon_min"] > 0


def test_each_store_keeps_the_global_model_and_serves_its_personalized_copy(run):
    for store in run["data"].store_ids:
        state = run["data"].store_dir(store)
        versions = {v.meta.origin: v for v in model_store.list_versions(state)}
        assert set(versions) == {"global", "personalized"}
        assert model_store.read_current(state) == versions["personalized"].name
        _, meta = load_model(versions["personalized"].path)
        assert meta.round == run["cfg"].rounds and meta.extra["base_version"] == versions["global"].name
    final = run["final"]
    assert final["personalized_test_ndcg@10"] is not None and final["test_customers"] > 0


def test_no_personalized_weights_or_customer_ids_leave_a_store(run):
    for store in run["data"].store_ids:
        state = run["data"].store_dir(store)
        messages = run["outgoing"][store]
        assert len(messages) >= 2 * 4 + 2  # 4 SecAgg+ stages + 1 evaluation per round, + the final report
        blob = b"\n".join(messages)
        assert store.encode() in blob  # positive control: plaintext strings are found by this search
        frame, _ = read_interactions(state / "interactions.parquet")
        customers = frame["user_id"].unique()
        assert len(customers) > 10
        leaked = [c for c in customers if c.encode() in blob]
        assert not leaked, f"{store}: customer ids in outgoing messages: {leaked[:3]}"
        current = model_store.read_current(state)
        personalized, _ = load_model(model_store.models_dir(state) / current)
        global_version = next(v for v in model_store.list_versions(state) if v.meta.origin == "global")
        base, _ = load_model(global_version.path)
        for name, tensor in personalized.state_dict().items():
            if torch.equal(tensor, base.state_dict()[name]):
                continue  # identical to the global model the operator sent: not private
            raw = tensor.detach().numpy().astype(np.float32).tobytes()
            for start in range(0, max(1, len(raw) - 32), max(32, len(raw) // 8)):
                assert raw[start : start + 32] not in blob, (
                    f"{store}: personalized {name} bytes left the store"
                )
