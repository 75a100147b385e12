"""Model lifecycle on a live server: hot swap under load, refusal of broken versions, rollback via the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from client import model_store
from shared.data.catalog import Catalog
from shared.models import ModelConfig, build_model
from shared.serde import META, WEIGHTS


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def serving_version(running) -> str | None:
    serving = running.client.get("/v1/model").json()["serving"]
    return None if serving is None else serving["version"]


def test_hot_swap_under_concurrent_load_fails_no_request(serve):
    running = serve()
    customers = running.store.interactions["user_id"].unique()[:20].tolist()
    stop = threading.Event()
    failures: list[str] = []
    versions: list[list[str]] = [[] for _ in range(4)]

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=running.url, headers=running.client.headers, timeout=30) as client:
            i = 0
            while not stop.is_set():
                i += 1
                if i % 2:
                    reply = client.get(f"/v1/customers/{customers[i % len(customers)]}/recommendations")
                else:
                    reply = client.post(
                        "/v1/sessions/recommendations", json={"items": ["i000001", "i000002"]}
                    )
                if reply.status_code != 200:
                    failures.append(f"{reply.status_code} {reply.text[:200]}")
                else:
                    versions[worker].append(reply.json()["model_version"])

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:

        def served() -> int:
            return sum(len(v) for v in versions)

        published = []
        for seed in (1, 2, 3):
            floor = served() + 20
            wait_for(lambda f=floor: served() >= f, timeout=60)  # traffic on every version
            published.append(running.store.publish(seed=seed))
            wait_for(lambda v=published[-1]: serving_version(running) == v)
        floor = served() + 20
        wait_for(lambda f=floor: served() >= f, timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    seen = set().union(*map(set, versions))
    assert {"v000001", *published} <= seen
    for sequence in versions:  # each client saw versions only move forward: no mixing of old and new
        assert sequence == sorted(sequence)
    assert running.services.holder.swaps == 4


def corrupt_copy(store, source: str, name: str) -> Path:
    """A newer version dir whose weights are cut short, as a crashed copy would leave it."""
    src = model_store.models_dir(store.root) / source
    dst = model_store.models_dir(store.root) / name
    dst.mkdir()
    weights = (src / WEIGHTS).read_bytes()
    (dst / WEIGHTS).write_bytes(weights[: len(weights) // 2])
    meta = json.loads((src / META).read_text())
    meta["created"] = time.time()
    (dst / META).write_text(json.dumps(meta))
    return dst


def test_a_corrupt_new_version_is_refused_and_the_old_one_keeps_serving(serve):
    running = serve()
    store = running.store
    # 1) dropped into models/ (auto-promotion path): refused, CURRENT untouched
    corrupt_copy(store, "v000001", "v000002")
    wait_for(lambda: running.services.holder.last_refusal is not None)
    assert running.services.holder.last_refusal.version == "v000002"
    assert model_store.read_current(store.root) == "v000001"
    # 2) CURRENT pointed at it by hand (bypassing verification): refused again, old model keeps serving
    (model_store.models_dir(store.root) / "CURRENT").write_text("v000002\n")
    time.sleep(0.3)
    status = running.client.get("/v1/model").json()
    assert status["serving"]["version"] == "v000001" and status["pointer"] == "v000002"
    assert "checksum" in status["last_refusal"]["reason"]
    customer = store.interactions["user_id"].iloc[0]
    reply = running.client.get(f"/v1/customers/{customer}/recommendations")
    assert reply.status_code == 200 and reply.json()["model_version"] == "v000001"
    metrics = running.client.get("/metrics").text
    assert "fedrec_model_swap_failures_total 1.0" in metrics  # refused once, not on every poll
    # 3) a good version published afterwards is picked up as usual
    fixed = store.publish(seed=5)
    wait_for(lambda: serving_version(running) == fixed)


def test_a_model_for_another_catalog_is_refused(serve):
    running = serve()
    store = running.store
    other = Catalog.from_items([f"x{i}" for i in range(store.catalog.n_items)])  # same size, other items
    model = build_model(ModelConfig(kind="dnn", dim=8, max_len=10), other.n_items)
    model_store.save_model(
        model, model_store.models_dir(store.root) / "foreign", catalog_hash=other.content_hash
    )
    wait_for(lambda: running.services.holder.last_refusal is not None)
    assert "catalog" in running.services.holder.last_refusal.reason
    assert serving_version(running) == "v000001"


def test_rollback_via_the_cli_returns_to_the_previous_version(serve):
    running = serve()
    store = running.store
    second = store.publish(seed=9)
    wait_for(lambda: serving_version(running) == second)
    cli = subprocess.run(
        [sys.executable, "-m", "client.cli", "model", "rollback", "--state", str(store.root)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert cli.returncode == 0, cli.stderr
    assert "current model version: v000001 (was v000002)" in cli.stdout
    wait_for(lambda: serving_version(running) == "v000001")
    time.sleep(0.3)  # several polls: the rolled-back version must not be promoted again
    assert serving_version(running) == "v000001"
    assert model_store.read_current(store.root) == "v000001"


def test_a_staged_version_is_not_served_until_activated(serve):
    running = serve()
    store = running.store
    staged = store.publish(seed=4, make_current=False)  # e.g. a global model awaiting its personalized copy
    time.sleep(0.4)  # several polls
    assert serving_version(running) == "v000001" and running.services.holder.last_refusal is None
    model_store.activate(store.root, staged)
    wait_for(lambda: serving_version(running) == staged)


def test_a_version_copied_in_by_hand_is_promoted(serve):
    running = serve()
    store = running.store
    source = model_store.models_dir(store.root) / "v000001"
    copied = model_store.models_dir(store.root) / "hand-copied"
    copied.mkdir()
    (copied / WEIGHTS).write_bytes((source / WEIGHTS).read_bytes())
    meta = json.loads((source / META).read_text())
    meta["created"] = time.time()
    (copied / META).write_text(json.dumps(meta))
    wait_for(lambda: serving_version(running) == "hand-copied")
    assert model_store.read_current(store.root) == "hand-copied"
