"""``fedrec-sim bench quality-central``: all three models trained centrally, non-private, side by side.

Data sets: amazon-beauty (the shared real set, skipped with a reason when absent) and the synthetic default.
Prints a table of test HR@10 / NDCG@10 / MRR@10 with wall time next to every number, popularity as the floor
and the published full-ranking row for the same file, writes a JSON, and ends with a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from rich.console import Console

from shared.atomic import atomic_write_text
from shared.data.loaders import default_data_root
from shared.models import MODEL_REGISTRY
from simulations.centralized import CentralizedRun, run_centralized
from simulations.presets import presets_for

# Full-ranking test NDCG@10 on exactly amazon-beauty/sequences.txt.gz (see the shared BASELINES.md).
PUBLISHED_BEAUTY = {"SASRec (S3-Rec paper)": 0.0318, "ICLRec": 0.0403, "MCLRec": 0.0446}
# Measured on this project's 2-core machines with the same protocol: the bar to beat, with its wall time.
RECBOLE_BEAUTY = {"transformer": (0.0499, 30 * 60), "rnn": (0.0373, 28 * 60)}
QUICK_CUSTOMERS = 3000


def available_datasets(requested: list[str] | None, console: Console) -> list[str]:
    datasets = requested or ["amazon-beauty", "synthetic"]
    usable = []
    for name in datasets:
        if name != "synthetic" and not (default_data_root() / name).exists():
            console.print(f"[yellow]skip {name}:[/] shared data folder not found at {default_data_root()}")
            continue
        usable.append(name)
    return usable


def main(args: argparse.Namespace, console: Console) -> int:
    models = args.models or sorted(MODEL_REGISTRY)
    datasets = available_datasets(args.datasets, console)
    rows, runs = [], []
    start = time.perf_counter()
    for dataset in datasets:
        for kind in models:
            model_cfg, train_cfg = presets_for(kind, quick=args.quick)
            max_customers = QUICK_CUSTOMERS if args.quick and dataset != "synthetic" else None
            if args.quick:
                train_cfg = replace(train_cfg, epochs=2, patience=2)
            result = run_centralized(CentralizedRun(dataset, model_cfg, train_cfg, max_customers), console)
            runs.append(result)
            if kind == models[0]:  # the floor is the same for every model: show it once per data set
                rows.append(
                    {
                        "dataset": dataset,
                        "model": "popularity",
                        **result["popularity_test"],
                        "wall_seconds": 0.0,
                    }
                )
            rows.append(
                {
                    "dataset": dataset,
                    "model": kind,
                    **result["test"],
                    "best_epoch": result["best_epoch"],
                    "wall_seconds": result["wall_seconds"],
                }
            )
            console.print(
                f"  {dataset:14s} {kind:12s} test NDCG@10 {result['test']['ndcg@10']:.4f} "
                f"HR@10 {result['test']['hr@10']:.4f} in {result['wall_seconds']:.0f} s"
            )
    from simulations.cli import metrics_table

    console.print(metrics_table("quality-central: test split, full ranking, seen items excluded", rows))
    if "amazon-beauty" in datasets:
        published = ", ".join(f"{k} {v:.4f}" for k, v in PUBLISHED_BEAUTY.items())
        console.print(f"published full-ranking NDCG@10 on amazon-beauty: {published}")
        for kind, (ndcg, seconds) in RECBOLE_BEAUTY.items():
            console.print(
                f"RecBole 1.2.1 {kind} on these 2 cores: NDCG@10 {ndcg:.4f} in {seconds / 60:.0f} min"
            )
    out = args.out / ("quality-central-quick.json" if args.quick else "quality-central.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out, json.dumps({"quick": args.quick, "rows": rows, "runs": runs}, indent=2, sort_keys=True)
    )
    summary = " | ".join(
        f"{r['dataset']}/{r['model']} NDCG@10 {r['ndcg@10']:.4f} ({r['wall_seconds']:.0f}s)" for r in rows
    )
    label = "quality-central (quick)" if args.quick else "quality-central"
    console.print(f"{label}: {summary} | total {time.perf_counter() - start:.0f}s")
    console.print(f"json: {out}")
    return 0
