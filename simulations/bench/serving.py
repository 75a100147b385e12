"""``fedrec-sim bench serving``: the store's serving API under real HTTP load, ours vs a naive baseline.

For each catalog (amazon-beauty, 12k items, skipped with a reason when the shared data is absent; synthetic,
100k items) and each model kind, a store state dir is prepared with a **freshly initialised** model (preset
sizes: dim 64, window 50; untrained weights cost exactly what trained ones do), then:

1. the real server (``fedrec-store serve``) starts on 127.0.0.1 in its own process;
2. a real load generator in a separate process drives it: ``wrk`` (with a Lua script for the POST bodies)
   when installed, else a bounded asyncio HTTP/1.1 client (``python -m simulations.bench.serving --load``);
   every phase is bounded in time and request count and uses keep-alive connections;
3. phases: ``customer`` (GET top-10 for known customers: history from the log, seen items excluded) with one
   client (service latency) and with 4 (throughput), ``session`` (POST top-10 for a session's 5 recent
   items) and ``events`` (POST one event, fsynced) with 4;
4. the same phases run again against the server started with ``--scorer naive``: per request the model's own
   ``score()`` over the full 50-slot window (encoder + output layer, no precomputed matrix, no batching),
   a full ``argsort`` over the catalog and seen items filtered in Python; same HTTP stack, same data.

Prints a table (p50/p99 latency, requests/s, errors) with the throughput ratio ours/naive, a one-line
summary against the targets (top-10 at 100k items: p99 <= 10 ms, >= 500 req/s, >= 5x naive), and writes a
JSON. The machine's load average before and after is recorded: other jobs on the 2 cores distort numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
KINDS = ("dnn", "rnn", "transformer")
TARGET_P99_MS, TARGET_RPS, TARGET_RATIO = 10.0, 500.0, 5.0
API_KEY = "bench-key-" + "0" * 22  # loopback only, regenerated state dirs: not a secret


@dataclass(frozen=True)
class Plan:
    seconds: float  # per measured phase (ours)
    naive_seconds: float
    max_requests: int  # per phase, whatever comes first
    connections: int
    warmup_seconds: float


FULL = Plan(seconds=8.0, naive_seconds=5.0, max_requests=50_000, connections=4, warmup_seconds=1.5)
QUICK = Plan(seconds=2.0, naive_seconds=2.0, max_requests=10_000, connections=4, warmup_seconds=0.5)


@dataclass
class PhaseResult:
    catalog: str
    n_items: int
    model: str
    scorer: str
    phase: str
    generator: str
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


# ------------------------------------------------------------------------------------------ store setup


def _prepare_store(name: str, out: Path, console: Console) -> tuple[Path, object, object] | None:
    """Write catalog + interaction log into a fresh state dir; returns (dir, catalog, frame) or None."""
    from shared.data.loaders import default_data_root, load_named
    from shared.data.schema import write_interactions
    from simulations.synthetic import SyntheticConfig, generate

    if name == "amazon-beauty":
        if not (default_data_root() / "amazon-beauty").exists():
            console.print(
                f"[yellow]skip amazon-beauty:[/] shared data folder not found at {default_data_root()}"
            )
            return None
        loaded = load_named("amazon-beauty")
        catalog, frame = loaded.catalog, loaded.interactions
    elif name == "synthetic-100k":
        data = generate(SyntheticConfig(n_stores=1, n_items=100_000, n_customers=20_000, seed=0))
        catalog, frame = data.catalog, next(iter(data.stores.values()))
    else:
        console.print(f"[yellow]skip {name}:[/] catalogs are amazon-beauty and synthetic-100k")
        return None
    root = out / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    catalog.save(root / "catalog.json")
    write_interactions(frame, root / "interactions.csv")
    (root / "api_key").write_text(API_KEY + "\n")
    return root, catalog, frame


def _install_model(root: Path, catalog: object, kind: str) -> str:
    """A freshly initialised preset model of ``kind``, published and made current."""
    import torch

    from client import model_store
    from shared.models import build_model
    from simulations.presets import MODEL_PRESETS

    torch.manual_seed(0)
    model = build_model(MODEL_PRESETS[kind], catalog.n_items)  # type: ignore[attr-defined]
    return model_store.publish(root, model, catalog_hash=catalog.content_hash, origin="central")  # type: ignore[attr-defined]


def _request_lines(frame: object, catalog: object, phase: str, count: int = 2000) -> list[str]:
    """``METHOD\\tPATH\\tBODY`` lines the load generators cycle through."""
    from urllib.parse import quote

    rng = random.Random(0)
    histories = frame.groupby("user_id", sort=False)["item_id"].apply(list)  # type: ignore[attr-defined]
    customers = list(histories.index)
    rng.shuffle(customers)
    customers = customers[:count]
    lines = []
    for i, customer in enumerate(customers):
        if phase == "customer":
            lines.append(f"GET\t/v1/customers/{quote(str(customer), safe='')}/recommendations?n=10\t")
        elif phase == "session":
            body = {"items": histories[customer][-5:], "n": 10}
            lines.append(f"POST\t/v1/sessions/recommendations\t{json.dumps(body)}")
        else:
            item = catalog.item_ids[rng.randrange(catalog.n_items)]  # type: ignore[attr-defined]
            event = {"customer_id": f"bench-{i % 500}", "item_id": item, "event": "view"}
            lines.append(f"POST\t/v1/events\t{json.dumps({'events': [event]})}")
    return lines


# ------------------------------------------------------------------------------------------ server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``fedrec-store serve`` in its own process, on loopback."""

    def __init__(self, root: Path, scorer: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / f"server-{scorer}.log", "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "client.cli",
                "serve",
                "--state",
                str(root),
                "--port",
                str(self.port),
                "--scorer",
                scorer,
                "--log-level",
                "warning",
                "--poll-seconds",
                "10",
            ],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FEDREC_API_KEY": ""},
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                reply = httpx.get(self.url + "/ready", headers={"Authorization": f"Bearer {API_KEY}"})
                if reply.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------------------ load generators

_WRK_LUA = r"""
local lines, max_requests, responses, counter = {}, 0, 0, 0
function init(args)
  max_requests = tonumber(args[2])
  local key = os.getenv("FEDREC_BENCH_KEY")
  for line in io.lines(args[1]) do
    local method, path, body = line:match("^(%u+)\t([^\t]*)\t(.*)$")
    local headers = { ["Authorization"] = "Bearer " .. key }
    if body == "" then body = nil else headers["Content-Type"] = "application/json" end
    lines[#lines + 1] = wrk.format(method, path, headers, body)
  end
  counter = math.random(#lines)
end
function request()
  counter = counter % #lines + 1
  return lines[counter]
end
function response(status, headers, body)
  responses = responses + 1
  if responses >= max_requests then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _run_wrk(url: str, lines_file: Path, seconds: float, max_requests: int, connections: int) -> dict:
    script = lines_file.with_suffix(".lua")
    script.write_text(_WRK_LUA)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(script), url, "--", str(lines_file), str(max_requests)]  # fmt: skip
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, "FEDREC_BENCH_KEY": API_KEY},
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    data = json.loads(line[len("WRKJSON ") :])
    return {
        "requests": data["requests"],
        "seconds": data["duration_us"] / 1e6,
        "errors": data["errors"],
        "p50_ms": data["p50_us"] / 1e3,
        "p99_ms": data["p99_us"] / 1e3,
    }


def _run_python_generator(
    url: str, lines_file: Path, seconds: float, max_requests: int, connections: int
) -> dict:
    cmd = [sys.executable, "-m", "simulations.bench.serving", "--load", url, str(lines_file), str(seconds),
           str(max_requests), str(connections)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


async def _load(url: str, lines: list[str], seconds: float, max_requests: int, connections: int) -> dict:
    """Closed-loop HTTP/1.1 keep-alive load: ``connections`` clients, bounded by time and request count."""
    host, port = url.removeprefix("http://").split(":")
    requests = []
    for line in lines:
        method, path, body = line.split("\t", 2)
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        payload = body.encode()
        if payload:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        requests.append(head.encode() + b"\r\n" + payload)
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal errors, sent
        reader, writer = await asyncio.open_connection(host, int(port))
        i = offset
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            i = (i + 1) % len(requests)
            start = time.perf_counter()
            writer.write(requests[i])
            status = int((await reader.readline()).split()[1])
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            errors += status >= 400
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(k * 97) for k in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3  # noqa: E731
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "errors": errors,
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
    }


# ------------------------------------------------------------------------------------------ driver


def _phases(plan: Plan, scorer: str) -> list[tuple[str, int]]:
    """(phase, connections): one client for latency (service time), several for throughput."""
    phases = [("customer", 1), ("customer", plan.connections), ("session", plan.connections)]
    return [*phases, ("events", plan.connections)] if scorer == "fast" else phases


def _measure(
    server: Server,
    work: Path,
    lines_by_phase: dict[str, list[str]],
    phases: list[tuple[str, int]],
    seconds: float,
    plan: Plan,
) -> dict[tuple[str, int], dict]:
    generator = _run_wrk if shutil.which("wrk") else _run_python_generator
    results = {}
    for phase, connections in phases:
        lines_file = work / f"{phase}.tsv"
        lines_file.write_text("\n".join(lines_by_phase[phase]) + "\n")
        generator(server.url, lines_file, plan.warmup_seconds, plan.max_requests, connections)  # warm-up
        measured = generator(server.url, lines_file, seconds, plan.max_requests, connections)
        measured["generator"] = "wrk" if generator is _run_wrk else "python-asyncio"
        results[(phase, connections)] = measured
    return results


def _load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ")[0]
    except OSError:
        return "?"


def run(catalogs: list[str], kinds: list[str], plan: Plan, out: Path, console: Console) -> list[PhaseResult]:
    results: list[PhaseResult] = []
    state_root = out / "serving-state"
    for name in catalogs:
        prepared = _prepare_store(name, state_root, console)
        if prepared is None:
            continue
        root, catalog, frame = prepared
        lines = {phase: _request_lines(frame, catalog, phase) for phase in ("customer", "session", "events")}
        for kind in kinds:
            version = _install_model(root, catalog, kind)
            for scorer in ("fast", "naive"):
                (root / "events.csv").unlink(missing_ok=True)  # every run starts from the same histories
                phases = _phases(plan, scorer)
                seconds = plan.seconds if scorer == "fast" else plan.naive_seconds
                server = Server(root, scorer)
                try:
                    server.wait_ready()
                    with tempfile.TemporaryDirectory() as work:
                        measured = _measure(server, Path(work), lines, phases, seconds, plan)
                finally:
                    server.stop()
                for (phase, connections), m in measured.items():
                    results.append(
                        PhaseResult(
                            catalog=name,
                            n_items=catalog.n_items,  # type: ignore[attr-defined]
                            model=kind,
                            scorer=scorer,
                            phase=phase,
                            generator=m["generator"],
                            connections=connections,
                            requests=m["requests"],
                            seconds=m["seconds"],
                            rps=m["requests"] / m["seconds"] if m["seconds"] else 0.0,
                            p50_ms=m["p50_ms"],
                            p99_ms=m["p99_ms"],
                            errors=m["errors"],
                        )
                    )
                    r = results[-1]
                    console.print(
                        f"  {name:14s} {kind:12s} {scorer:5s} {phase:8s} c={connections} {r.rps:6.0f} req/s"
                        f"  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  errors {r.errors}"
                        f"  (model {version}, load {_load_average()})",
                        highlight=False,
                        soft_wrap=True,
                    )
        shutil.rmtree(root, ignore_errors=True)  # ~100 MB of models; kept (with server logs) only on failure
    return results


def _ratio(results: list[PhaseResult], r: PhaseResult) -> float | None:
    if r.scorer != "fast":
        return None
    naive = next(
        (
            x
            for x in results
            if (x.catalog, x.model, x.phase, x.connections, x.scorer)
            == (r.catalog, r.model, r.phase, r.connections, "naive")
        ),
        None,
    )
    return r.rps / naive.rps if naive and naive.rps else None


def _table(results: list[PhaseResult]) -> Table:
    table = Table(title="serving: real HTTP load on 127.0.0.1 (top-10; closed loop, keep-alive)")
    for col in (
        "catalog",
        "model",
        "scorer",
        "phase",
        "conn",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "x naive",
    ):
        table.add_column(col, justify="left" if col in ("catalog", "model", "scorer", "phase") else "right")
    for r in results:
        ratio = _ratio(results, r)
        table.add_row(
            f"{r.catalog} ({r.n_items // 1000}k)",
            r.model,
            r.scorer,
            r.phase,
            str(r.connections),
            f"{r.rps:.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.errors),
            "-" if ratio is None else f"{ratio:.1f}x",
        )
    return table


def _summary(results: list[PhaseResult], plan: Plan, quick: bool) -> tuple[str, dict]:
    """Targets on the 100k catalog, top-10, per model: p99 service latency (one client, known customers),
    throughput and the ratio to naive under load (customers and sessions, ``plan.connections`` clients)."""
    verdicts = {}
    parts = []
    for model in dict.fromkeys(r.model for r in results if r.n_items >= 100_000):
        mine = {
            (r.phase, r.connections): r
            for r in results
            if r.scorer == "fast" and r.n_items >= 100_000 and r.model == model
        }
        latency = mine.get(("customer", 1))
        loaded = [
            mine[k] for k in (("customer", plan.connections), ("session", plan.connections)) if k in mine
        ]
        if latency is None or not loaded:
            continue
        rps = min(r.rps for r in loaded)
        ratio = min(_ratio(results, r) or 0.0 for r in loaded)
        p99_loaded = max(r.p99_ms for r in loaded)
        ok = (
            latency.p99_ms <= TARGET_P99_MS
            and rps >= TARGET_RPS
            and ratio >= TARGET_RATIO
            and not any(r.errors for r in (latency, *loaded))
        )
        verdicts[model] = ok
        parts.append(
            f"{model}: p99 {latency.p99_ms:.1f}ms (c=1; {p99_loaded:.1f}ms at c={plan.connections}), "
            f">= {rps:.0f}/s, >= {ratio:.1f}x naive{'' if ok else ' (miss)'}"
        )
    met = bool(verdicts) and all(verdicts.values())
    label = "serving (quick)" if quick else "serving"
    total_errors = sum(r.errors for r in results)
    line = (
        f"{label}: 100k items, top-10 | " + " | ".join(parts) + f" | targets p99<={TARGET_P99_MS:.0f}ms, "
        f">={TARGET_RPS:.0f}/s, >={TARGET_RATIO:.0f}x naive: {'met' if met else 'NOT met'}"
        f" | errors {total_errors}"
    )
    return line, {"targets_met": met, "by_model": verdicts}


def main(args: argparse.Namespace, console: Console) -> int:
    plan = QUICK if args.quick else FULL
    kinds = args.models or list(KINDS)
    catalogs = args.datasets or (["synthetic-100k"] if args.quick else ["amazon-beauty", "synthetic-100k"])
    load_before = _load_average()
    console.print(
        f"serving bench: catalogs {catalogs}, models {kinds}, 1 and {plan.connections} connections, "
        f"{plan.seconds:.0f}s per phase (naive {plan.naive_seconds:.0f}s), load generator "
        f"{'wrk' if shutil.which('wrk') else 'python-asyncio (wrk not installed)'}; loadavg {load_before}",
        soft_wrap=True,
    )
    start = time.perf_counter()
    results = run(catalogs, kinds, plan, args.out, console)
    # Not a terminal (CI, a pipe): rich would squeeze the table into 80 columns.
    wide = console if console.is_terminal and console.width >= 110 else Console(width=130)
    wide.print(_table(results))
    line, verdict = _summary(results, plan, args.quick)
    load_after = _load_average()
    console.print(
        f"machine load average before/after: {load_before}/{load_after} on {os.cpu_count()} cores "
        "(other jobs share these cores: compare ratios and medians)",
        soft_wrap=True,
    )
    out = args.out / ("serving-quick.json" if args.quick else "serving.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "quick": args.quick,
        "plan": asdict(plan),
        "model_init": "freshly initialised preset models (latency does not depend on training)",
        "naive_baseline": "model.score() on the full 50-slot window per request, full argsort, "
        "Python filtering",
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "cpus": os.cpu_count(),
        "results": [asdict(r) | {"x_naive": _ratio(results, r)} for r in results],
        **verdict,
        "summary": line,
        "wall_seconds": time.perf_counter() - start,
    }
    atomic_write_text(out, json.dumps(document, indent=2, sort_keys=True))
    console.print(line, highlight=False, soft_wrap=True)
    console.print(f"json: {out}")
    median_ratio = statistics.median([x for r in results if (x := _ratio(results, r)) is not None] or [0.0])
    console.print(f"median throughput ratio ours/naive over all rows: {median_ratio:.1f}x", highlight=False)
    return 0


if __name__ == "__main__":  # the asyncio load generator's own process
    if len(sys.argv) == 7 and sys.argv[1] == "--load":
        _, _, url, path, secs, limit, conns = sys.argv
        result = asyncio.run(
            _load(url, Path(path).read_text().splitlines(), float(secs), int(limit), int(conns))
        )
        print(json.dumps(result))
    else:
        raise SystemExit(
            "usage: python -m simulations.bench.serving --load URL LINES SECONDS MAX CONNECTIONS"
        )
