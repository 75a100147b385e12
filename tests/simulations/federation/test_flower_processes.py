"""Real Flower processes on 127.0.0.1 (slow): ``flwr run .`` in local simulation, and SuperLink + SuperNodes.

Both use a private ``FLWR_HOME`` and free ports, and stop every process they start (the managed local
SuperLink that ``flwr run`` launches keeps running otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulations.partition import PartitionSpec, ensure_run_data

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
TINY = (
    "model-dim=16 model-max-len=12 model-layers=1 model-heads=1 synthetic-items=80 synthetic-customers=240 "
    "batch-size=16 local-epochs=0.5 finetune-epochs=1 stage-timeout=300"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "FEDREC_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (our private FLWR_HOME or port): ours to stop."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
    return [pid for pid in found if pid != os.getpid()]


def stop(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    time.sleep(2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_flwr_run_local_simulation(tmp_path):
    home = tmp_path / "flwr-home"
    env = flower_env(home)
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    run_dir = tmp_path / "run"
    cmd = [
        str(BIN / "flwr"),
        "run",
        ".",
        "--stream",
        "--federation-config",
        "num-supernodes=3 client-resources-num-cpus=1",
        "--run-config",
        f"num-server-rounds=1 run-dir='{run_dir}' {TINY}",
    ]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        stop(pids_mentioning(str(home)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[fedrec] final" in done.stdout + done.stderr
    final = json.loads((run_dir / "operator" / "final.json").read_text())
    assert final["stores_evaluated"] == 3 and final["aggregation"] == "secagg+"
    assert not pids_mentioning(str(home))


def test_superlink_and_supernodes_on_loopback(tmp_path):
    """A deployment in miniature: an operator SuperLink, two store SuperNodes with their own state dirs."""
    home = tmp_path / "flwr-home"
    env = flower_env(home)
    data = ensure_run_data(
        tmp_path / "stores",
        PartitionSpec(dataset="synthetic", n_stores=2, seed=0, synthetic_items=80, synthetic_customers=240),
    )
    link_port = free_port()
    home.mkdir()
    connection = f'[superlink.e2e]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    (home / "config.toml").write_text('[superlink]\ndefault = "e2e"\n\n' + connection)
    procs = [
        subprocess.Popen(
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
                "--database",
                str(tmp_path / "state.db"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    for store in data.store_ids:
        node_config = f"store-dir='{data.store_dir(store)}' store-id='{store}'"
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    node_config,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    operator_dir = tmp_path / "operator-run"
    run_config = (
        f"num-server-rounds=1 run-dir='{operator_dir}' catalog='{data.catalog_path}' min-stores=2 {TINY}"
    )
    try:
        time.sleep(5)
        done = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "e2e", "--stream", "--run-config", run_config],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        stop(pids_mentioning(str(home)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    final = json.loads((operator_dir / "operator" / "final.json").read_text())
    assert final["stores_evaluated"] == 2 and final["rounds_logged"] == [1]
    for store in data.store_ids:
        state = data.store_dir(store)
        assert (state / "ledger.jsonl").exists() and (state / "models" / "CURRENT").exists()
    # The operator's dir holds no store data: only its own logs, checkpoints and the global model.
    assert not list(operator_dir.rglob("interactions.*"))
