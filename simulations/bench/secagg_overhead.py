"""``fedrec-sim bench secagg-overhead``: round time with SecAgg+ vs plain aggregation, same stores and model.

For 10 and 20 synthetic stores and a ~1M-parameter transformer (7,000 items, dim 64), each store runs its
real round (DP-SGD, one local epoch, ledger) on Flower's Simulation Engine (one CPU per store), once with
secure aggregation (our ``RobustSecAggPlusWorkflow``) and once with plain aggregation; same seeds, same data,
same DP noise. The per-round time is the operator's fit time (sampling to new global model, local training
included), median over the rounds after the first (the first pays Ray's actor start-up). The ratio answers
the target (<= 1.5x per round including local training); the absolute difference is the protocol's cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared.atomic import atomic_write_text
from shared.config import (
    AggregationConfig,
    FederationConfig,
    LocalTrainingConfig,
    PersonalizationConfig,
    SimulationDataConfig,
)
from shared.models import ModelConfig, build_model

FULL = {
    "stores": (10, 20),
    "items": 7000,
    "dim": 64,
    "customers_per_store": 200,
    "rounds": 3,
    "engine": "ray",
}
QUICK = {
    "stores": (4, 6),
    "items": 1000,
    "dim": 32,
    "customers_per_store": 80,
    "rounds": 2,
    "engine": "inprocess",
}


def _config(run_dir: Path, n: int, p: dict, secure: bool) -> FederationConfig:
    return FederationConfig(
        rounds=p["rounds"],
        run_dir=str(run_dir),
        model=ModelConfig(kind="transformer", dim=p["dim"], max_len=50, n_layers=2, n_heads=2),
        local=LocalTrainingConfig(epochs=1.0, batch_size=64, lr=3e-3),
        personalization=PersonalizationConfig(enabled=False),
        data=SimulationDataConfig(
            synthetic_items=p["items"], synthetic_customers=n * p["customers_per_store"]
        ),
        aggregation=AggregationConfig(insecure_plain=not secure, stage_timeout=1800),
    )


def _run(cfg: FederationConfig, n: int, engine: str, console: Console) -> dict:
    from simulations.runner import SimulationRun, run_federation

    start = time.perf_counter()
    final = run_federation(SimulationRun(cfg=cfg, n_stores=n, engine=engine), console, show_progress=False)
    rows = [
        json.loads(x) for x in (Path(cfg.run_dir) / "operator" / "metrics.jsonl").read_text().splitlines()
    ]
    steady = rows[1:] or rows
    return {
        "fit_seconds": [r["fit_seconds"] for r in rows],
        "round_seconds": [r["seconds"] for r in rows],
        "fit_median": statistics.median(r["fit_seconds"] for r in steady),
        "round_median": statistics.median(r["seconds"] for r in steady),
        "trained": [r["trained"] for r in rows],
        "secagg": rows[-1].get("secagg"),
        "test_ndcg@10": final.get("test_ndcg@10"),
        "wall_seconds": time.perf_counter() - start,
    }


def _quantization_error(secure_dir: Path, cfg: FederationConfig) -> dict:
    """Exact error of the secure aggregate in the last round: the operator's applied update (difference of
    the last two checkpoints; FedAvg, server lr 1) against the exact weighted mean of the bounded deltas the
    stores sent (each store's re-send cache holds its last update)."""
    import numpy as np

    from client.update import CachedUpdate
    from server.checkpoints import CheckpointStore
    from simulations.partition import load_run_data

    store = CheckpointStore(secure_dir / "operator" / "checkpoints")
    last = store.latest()
    data = load_run_data(secure_dir)
    if last.round > 1:
        before = CheckpointStore.load(store.root / f"round-{last.round - 1:06d}").weights
    else:  # the initial model, built as the operator builds it
        import torch

        from shared.data.catalog import Catalog

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, Catalog.load(data.catalog_path).n_items)
        before = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    caches = [CachedUpdate.load(data.store_dir(s) / "federation") for s in data.store_ids]
    caches = [c for c in caches if c is not None and c.round_id == last.round and c.weight > 0]
    total = sum(c.weight for c in caches)
    names = list(last.weights)
    exact = [
        sum(c.weight * c.arrays[i].astype(np.float64) for c in caches) / total for i in range(len(names))
    ]
    applied = [last.weights[k].astype(np.float64) - before[k] for k in names]
    err = np.concatenate([(a - e).ravel() for a, e in zip(applied, exact, strict=True)])
    mean = np.concatenate([e.ravel() for e in exact])
    return {
        "round": last.round,
        "stores": len(caches),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "max_abs": float(np.abs(err).max()),
        "update_rms": float(np.sqrt(np.mean(mean**2))),
    }


def main(args: argparse.Namespace, console: Console) -> int:
    p = QUICK if args.quick else FULL
    root = args.out / ("secagg-overhead-quick" if args.quick else "secagg-overhead")
    results = []
    for n in p["stores"]:
        row: dict = {"stores": n}
        for secure in (False, True):
            name = "secure" if secure else "plain"
            run_dir = root / f"{n}-stores-{name}"
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            cfg = _config(run_dir, n, p, secure)
            if "params" not in row:
                row["params"] = sum(t.numel() for t in build_model(cfg.model, p["items"]).parameters())
            console.print(f"  {n} stores, {name} aggregation ...", highlight=False)
            row[name] = _run(cfg, n, p["engine"], console)
            console.print(
                f"    fit s/round {row[name]['fit_median']:.2f} (rounds: "
                + ", ".join(f"{s:.1f}" for s in row[name]["fit_seconds"])
                + ")",
                highlight=False,
            )
        row["quantization"] = _quantization_error(root / f"{n}-stores-secure", cfg)
        row["ratio"] = row["secure"]["fit_median"] / row["plain"]["fit_median"]
        row["overhead_seconds"] = row["secure"]["fit_median"] - row["plain"]["fit_median"]
        results.append(row)

    table = Table(title="secagg-overhead: s per round (fit incl. local DP-SGD), median of rounds 2..R")
    for col in (
        "stores",
        "params",
        "plain s",
        "SecAgg+ s",
        "ratio",
        "protocol cost s",
        "shares / threshold",
        "quantization RMSE / update RMS",
    ):
        table.add_column(col, justify="right")
    for r in results:
        sa = r["secure"]["secagg"] or {}
        table.add_row(
            str(r["stores"]),
            f"{r['params'] / 1e6:.2f}M",
            f"{r['plain']['fit_median']:.2f}",
            f"{r['secure']['fit_median']:.2f}",
            f"{r['ratio']:.2f}x",
            f"{r['overhead_seconds']:+.2f}",
            f"{sa.get('num_shares')} / {sa.get('threshold')}",
            f"{r['quantization']['rmse']:.1e} / {r['quantization']['update_rms']:.1e}",
        )
    console.print(table)
    doc = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
        "rows": results,
        "target": "<= 1.5x per round including local training",
    }
    out = args.out / ("secagg-overhead-quick.json" if args.quick else "secagg-overhead.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(doc, indent=2))
    summary = " | ".join(
        f"{r['stores']} stores: {r['secure']['fit_median']:.2f} s vs {r['plain']['fit_median']:.2f} s "
        f"= {r['ratio']:.2f}x"
        for r in results
    )
    console.print(f"secagg-overhead ({p['engine']}, {results[0]['params'] / 1e6:.2f}M params): {summary}")
    console.print(f"json: {out}")
    return 0


__all__ = ["main"]
