"""``fedrec-sim bench dp-overhead``: the cost of customer-level DP-SGD per training step, side by side.

For each model and catalog size (12k = amazon-beauty's 12,101 items; 100k = synthetic), batch 256, history
length 50 (every position real), dim 64, it measures in one run:
(a) the non-private step, (b) our DP step (``bk``: book-keeping output layer, ghost-clipped encoder,
tied-aware), (c) Opacus's own ghost clipping throughout (tied-aware; two full backward passes), and (d) naive
Opacus hooks, which materialise per-sample gradients of every table -- skipped, with the reason, when they
cannot fit.
Each configuration runs in its own process (clean peak-memory reading); the median step time over the timed
steps and the peak RSS are reported as ratios to the non-private step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

from shared.atomic import atomic_write_text

MODES = ("plain", "bk", "ghost", "hooks")
MEMORY_LIMIT_BYTES = 14 * 2**30  # leave room on a 24 GiB machine shared with other work


def per_sample_bytes(n_items: int, dim: int, batch: int, tied: bool) -> int:
    """What hooks mode materialises for the item tables alone: ``batch x params x 4`` bytes."""
    tables = (1 if tied else 2) * (n_items + 1) * dim
    return batch * tables * 4


def measure(kind: str, n_items: int, mode: str, batch: int, steps: int, warmup: int, tied: bool) -> dict:
    """Runs inside the child process: build the model, time ``steps`` steps after ``warmup``."""
    import torch

    from shared.models import ModelConfig, build_model, token_losses
    from shared.privacy.dp_sgd import dp_loss_backward, wrap_private

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("FEDREC_THREADS", os.cpu_count() or 1)))
    model = build_model(ModelConfig(kind=kind, dim=64, max_len=50, tie_output=tied), n_items)
    gen = torch.Generator().manual_seed(1)
    seqs = torch.randint(1, n_items + 1, (batch, 51), generator=gen)
    inputs, targets = seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if mode == "plain":

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            losses, _ = token_losses(model, inputs, targets)
            losses.mean().backward()
            optimizer.step()
    else:
        module, dp_opt = wrap_private(
            model,
            optimizer,
            grad_sample_mode=mode,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=batch,
        )

        def step() -> None:
            dp_opt.zero_grad(set_to_none=True)
            dp_loss_backward(module, dp_opt, inputs, targets, mode)
            dp_opt.step()

    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"median_s": statistics.median(times), "times": times, "peak_rss_bytes": peak}


def run_child(args: dict, timeout: float) -> dict:
    code = (
        "import json, sys; from simulations.bench.dp_overhead import measure; "
        "print('RESULT ' + json.dumps(measure(**json.loads(sys.argv[1]))))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return {"skipped": f"failed: {tail[0][:200]} (exit {proc.returncode})"}


def main(args: argparse.Namespace, console: Console) -> int:
    kinds = args.models or ["dnn", "rnn", "transformer"]
    sizes = [2_000] if args.quick else [12_101, 100_000]
    batch = 32 if args.quick else 256
    steps, warmup = (2, 1) if args.quick else (5, 2)
    tied = not args.untied
    rows = []
    for n_items in sizes:
        for kind in kinds:
            row: dict = {"model": kind, "n_items": n_items, "batch": batch, "tied": tied}
            for mode in MODES:
                if mode == "hooks" and per_sample_bytes(n_items, 64, batch, tied) > MEMORY_LIMIT_BYTES:
                    need = per_sample_bytes(n_items, 64, batch, tied) / 2**30
                    row[mode] = {"skipped": f"per-sample gradients of the item tables need {need:.1f} GiB"}
                    continue
                params = {
                    "kind": kind,
                    "n_items": n_items,
                    "mode": mode,
                    "batch": batch,
                    "steps": steps,
                    "warmup": warmup,
                    "tied": tied,
                }
                row[mode] = run_child(params, timeout=args.timeout)
                console.print(f"  {kind:12s} {n_items:>7d} items  {mode:6s} {_fmt(row[mode])}")
            rows.append(row)
    table = Table(
        title=f"dp-overhead: batch {batch}, history 50, dim 64, {'tied' if tied else 'untied'} output"
    )
    for col in (
        "model",
        "items",
        "plain s/step",
        "ours s/step",
        "ours/plain time",
        "ours/plain peak mem",
        "opacus ghost s/step",
        "ghost/ours time",
        "hooks s/step",
        "hooks/ours time",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    summary = []
    for r in rows:
        p, g, o, h = r["plain"], r["bk"], r["ghost"], r["hooks"]
        t_ratio = g["median_s"] / p["median_s"] if "median_s" in g and "median_s" in p else None
        m_ratio = g["peak_rss_bytes"] / p["peak_rss_bytes"] if t_ratio else None
        o_ratio = o["median_s"] / g["median_s"] if "median_s" in o and "median_s" in g else None
        h_ratio = h["median_s"] / g["median_s"] if "median_s" in h and "median_s" in g else None
        r["ratios"] = {
            "ours_over_plain_time": t_ratio,
            "ours_over_plain_peak_memory": m_ratio,
            "opacus_ghost_over_ours_time": o_ratio,
            "hooks_over_ours_time": h_ratio,
        }
        table.add_row(
            r["model"],
            str(r["n_items"]),
            _fmt(p),
            _fmt(g),
            _ratio(t_ratio),
            _ratio(m_ratio),
            _fmt(o),
            _ratio(o_ratio),
            _fmt(h),
            _ratio(h_ratio),
        )
        summary.append(
            f"{r['model']}@{r['n_items'] // 1000}k time x{_ratio(t_ratio)} mem x{_ratio(m_ratio)}"
            f" ghost/ours x{_ratio(o_ratio)} hooks/ours x{_ratio(h_ratio)}"
        )
    console.print(table)
    out = args.out / ("dp-overhead-quick.json" if args.quick else "dp-overhead.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"rows": rows}, indent=2))
    console.print("dp-overhead: " + " | ".join(summary))
    console.print(f"json: {out}")
    return 0


def _fmt(result: dict) -> str:
    return f"{result['median_s']:.3f}" if "median_s" in result else f"skip ({result['skipped']})"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"
