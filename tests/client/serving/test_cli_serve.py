"""``fedrec-store serve`` as a real process: loopback, key from a file, clean stop; the model commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from client.serving.server import bind

REPO = Path(__file__).resolve().parents[3]


def test_serve_command_runs_the_service_on_loopback(make_store, tmp_path, api_key):
    store = make_store()
    key_file = tmp_path / "key"
    key_file.write_text(api_key + "\n")
    with bind() as probe:  # a free port (released just before the server takes it)
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client.cli",
            "serve",
            "--state",
            str(store.root),
            "--port",
            str(port),
            "--api-key-file",
            str(key_file),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "FEDREC_API_KEY": ""},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {api_key}"}
        assert httpx.get(url + "/ready", headers=headers).json()["model_version"] == "v000001"
        assert httpx.get(url + "/ready").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert f"on http://127.0.0.1:{port}" in output and api_key not in output


def test_model_list_marks_the_current_version(make_store, capsys):
    from client.cli import main

    store = make_store()
    store.publish(seed=1)
    assert main(["model", "list", "--state", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "v000001" in out and "v000002" in out and "current: v000002" in out


def test_rollback_with_nothing_to_return_to_is_a_clear_error(make_store, capsys):
    from client.cli import main

    store = make_store()
    assert main(["model", "rollback", "--state", str(store.root)]) == 2
    assert "no previous valid model version" in capsys.readouterr().err
