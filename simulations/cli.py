"""``fedrec-sim``: the auditor's entry point (centralized reference runs, benchmarks, synthetic data)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared.cli_support import run_cli, set_torch_threads
from shared.errors import ConfigError
from shared.models import MODEL_REGISTRY
from simulations.synthetic import SyntheticConfig, write_synthetic


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrec-sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    central = sub.add_parser("centralized", help="train one model centrally (non-private) and evaluate it")
    central.add_argument(
        "--dataset", default="synthetic", help="'synthetic', a shared data set name, or a file"
    )
    central.add_argument("--model", default="transformer", choices=sorted(MODEL_REGISTRY))
    central.add_argument("--epochs", type=int, help="maximum epochs (default: the preset's)")
    central.add_argument("--quick", action="store_true", help="a few epochs only, for smoke runs")
    central.add_argument("--max-customers", type=int, help="train on a seeded subset of customers")
    central.add_argument("--seed", type=int, default=0)
    central.add_argument("--out", type=Path, default=None, help="results JSON (default runs/central-...)")

    fed = sub.add_parser(
        "run", help="federated run of N simulated stores: DP-SGD at every store, SecAgg+ (Flower simulation)"
    )
    fed.add_argument("--dataset", default="synthetic", help="'synthetic' or a shared data set name")
    fed.add_argument("--stores", type=int, default=10, help="number of simulated stores (default 10)")
    fed.add_argument("--rounds", type=int, help="federated rounds (default: the preset's)")
    fed.add_argument("--model", default="transformer", choices=sorted(MODEL_REGISTRY))
    fed.add_argument("--epsilon", type=float, help="each store's budget, customer-level (default 8)")
    fed.add_argument("--no-dp", action="store_true", help="non-private local training (benchmark arm only)")
    fed.add_argument(
        "--insecure-plain-aggregation",
        action="store_true",
        help="turn secure aggregation off (the operator sees every store's update); debugging only",
    )
    fed.add_argument("--server-optimizer", choices=["fedavg", "fedadam"])
    fed.add_argument("--run-dir", type=Path, help="default runs/fed-<dataset>-<model>")
    fed.add_argument("--resume", action="store_true", help="continue after the last complete round")
    fed.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier run in --run-dir first (not with --resume)",
    )
    fed.add_argument("--engine", choices=["ray", "inprocess"], default="ray")
    fed.add_argument("--seed", type=int, default=0)
    fed.add_argument("--quick", action="store_true", help="tiny smoke run (2 rounds, small model and data)")
    fed.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any run-config key of [tool.flwr.app.config], e.g. --set model-dim=32 --set local-epochs=2",
    )
    fed.add_argument("--verbose", action="store_true", help="Flower's and Ray's logs")

    bench = sub.add_parser("bench", help="benchmarks; each prints a one-line summary and writes JSON")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("--quick", action="store_true", help="smoke version, under a minute")
    bench.add_argument("--datasets", nargs="+", default=None)
    bench.add_argument("--models", nargs="+", default=None, choices=sorted(MODEL_REGISTRY))
    bench.add_argument("--out", type=Path, default=Path("runs/bench"))
    bench.add_argument("--untied", action="store_true", help="dp-overhead: untied output layers")
    bench.add_argument("--timeout", type=float, default=900.0, help="dp-overhead: seconds per configuration")
    bench.add_argument("--dp-batch", type=int, default=None, help="dp-utility: expected Poisson batch")
    bench.add_argument("--dp-epochs", type=float, default=None, help="dp-utility: epochs (sets the steps)")
    bench.add_argument("--dp-lr", type=float, default=None, help="dp-utility: Adam learning rate")
    bench.add_argument(
        "--epsilons", nargs="+", type=float, default=None, help="dp-utility: budgets (default 1 3 8)"
    )
    bench.add_argument("--fed-rounds", type=int, default=None, help="fed-quality: federated arm's rounds")
    bench.add_argument(
        "--fed-local-epochs", type=float, default=None, help="fed-quality: federated arm's epochs per round"
    )
    bench.add_argument(
        "--fed-lr-decay", type=float, default=None, help="fed-quality: federated arm's lr decay per round"
    )

    synth = sub.add_parser("synth", help="write the synthetic multi-store data set to a folder")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--stores", type=int, default=SyntheticConfig.n_stores)
    synth.add_argument("--items", type=int, default=SyntheticConfig.n_items)
    synth.add_argument("--customers", type=int, default=SyntheticConfig.n_customers)
    synth.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    synth.add_argument("--format", choices=["csv", "parquet"], default="csv")
    return parser


def metrics_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    for col in ("data set", "model", "HR@10", "NDCG@10", "MRR@10", "best epoch", "wall s"):
        table.add_column(col, justify="right" if col not in ("data set", "model") else "left")
    for r in rows:
        table.add_row(
            r["dataset"],
            r["model"],
            f"{r['hr@10']:.4f}",
            f"{r['ndcg@10']:.4f}",
            f"{r['mrr@10']:.4f}",
            str(r.get("best_epoch", "-")),
            f"{r['wall_seconds']:.0f}",
        )
    return table


def cmd_centralized(args: argparse.Namespace, console: Console) -> int:
    from simulations.centralized import CentralizedRun, run_centralized, write_results
    from simulations.presets import presets_for

    model_cfg, train_cfg = presets_for(args.model, quick=args.quick)
    overrides = {"epochs": args.epochs} if args.epochs is not None else {}  # --epochs 0 must be rejected
    train_cfg = replace(train_cfg, seed=args.seed, **overrides)
    results = run_centralized(
        CentralizedRun(args.dataset, model_cfg, train_cfg, max_customers=args.max_customers), console
    )
    out = args.out or Path("runs") / f"central-{results['dataset']}-{args.model}.json"
    write_results(results, out)
    rows = [
        {
            "dataset": results["dataset"],
            "model": "popularity",
            **results["popularity_test"],
            "wall_seconds": 0,
        },
        {
            "dataset": results["dataset"],
            "model": args.model,
            **results["test"],
            "best_epoch": results["best_epoch"],
            "wall_seconds": results["wall_seconds"],
        },
    ]
    console.print(metrics_table("test split, full ranking (seen items excluded)", rows))
    console.print(f"results: {out}")
    return 0


def cmd_synth(args: argparse.Namespace, console: Console) -> int:
    cfg = SyntheticConfig(
        n_stores=args.stores, n_items=args.items, n_customers=args.customers, seed=args.seed
    )
    out = write_synthetic(cfg, args.out, fmt=args.format)
    console.print(f"wrote {cfg.n_stores} stores and the catalog to {out}")
    return 0


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from simulations.runner import SimulationRun, final_table, run_config_from_args, run_federation

    cfg = run_config_from_args(args)
    if args.overwrite:
        from simulations.runner import remove_previous_run

        if args.resume:
            raise ConfigError("--overwrite and --resume exclude each other")
        remove_previous_run(Path(cfg.run_dir))
    final = run_federation(
        SimulationRun(cfg=cfg, n_stores=args.stores, engine=args.engine, verbose=args.verbose), console
    )
    console.print(final_table(final))
    console.print(
        f"privacy: epsilon per store at delta {final['privacy']['delta']} "
        f"({final['privacy']['accountant']}), "
        f"unit: {final['privacy']['unit']}; secure aggregation: {final['aggregation']}",
        highlight=False,
    )
    console.print(f"run dir: {Path(cfg.run_dir).resolve()}  (operator/metrics.jsonl, operator/final.json)")
    return 0


# Benchmark name -> module under simulations.bench with a ``main(args, console)``; imported on demand.
BENCHMARKS = {
    "quality-central": "quality_central",
    "dp-overhead": "dp_overhead",
    "dp-utility": "dp_utility",
    "serving": "serving",
    "fed-quality": "fed_quality",
    "secagg-overhead": "secagg_overhead",
}


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    import importlib

    module = importlib.import_module(f"simulations.bench.{BENCHMARKS[args.name]}")
    return module.main(args, console)


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_torch_threads()
    # Wide enough for the benchmark tables when output goes to a file or a CI log (no terminal width).
    console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=not sys.stdout.isatty())
    handlers = {"centralized": cmd_centralized, "synth": cmd_synth, "bench": cmd_bench, "run": cmd_run}
    return handlers[args.command](args, console)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
