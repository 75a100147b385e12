"""``fedrec-sim run``: N simulated stores federated on Flower's Simulation Engine (Ray) or in-process.

The auditor's command: it carves the data set into non-IID stores (``simulations.partition``), gives each its
own state dir (ledger, model versions), runs the same ServerApp and ClientApp that ``flwr run .`` and a real
deployment run (DP-SGD at every store, SecAgg+ on by default), shows a progress bar per round, and prints the
final table. Everything lands in the run dir::

    <run>/run.json                  resolved config + partition report
    <run>/data/                     catalog + store manifest
    <run>/stores/<id>/              one store's state dir (interactions, catalog, ledger.jsonl, models/)
    <run>/operator/                 metrics.jsonl, privacy.jsonl, checkpoints/, final.json, models/
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.atomic import atomic_write_text
from shared.config import FederationConfig
from shared.errors import ConfigError

__all__ = ["SimulationRun", "final_table", "prepare_run", "run_federation"]

ENGINES = ("ray", "inprocess")


@dataclass(frozen=True)
class SimulationRun:
    cfg: FederationConfig
    n_stores: int = 10
    engine: str = "ray"
    cpus_per_store: float = 1.0
    verbose: bool = False


def prepare_run(run: SimulationRun, console: Console | None = None) -> tuple[FederationConfig, dict]:
    """Partition the data into the run dir (once) and fix ``max-weight`` to the largest store if unset."""
    from simulations.partition import PartitionSpec, ensure_run_data

    cfg = run.cfg
    root = Path(cfg.run_dir).resolve()
    cfg = replace(cfg, run_dir=str(root))
    data = ensure_run_data(root, PartitionSpec.from_config(cfg.data, run.n_stores, cfg.seed))
    manifest = json.loads((root / "data" / "stores.json").read_text())
    if cfg.aggregation.max_weight == FederationConfig().aggregation.max_weight:
        # SecAgg+'s weight cap near the largest store: no store is capped and quantization stays fine.
        cfg = replace(cfg, aggregation=replace(cfg.aggregation, max_weight=float(max(data.sizes))))
    info = {
        "stores": len(data.store_ids),
        "customers": sum(data.sizes),
        "customers_per_store": {
            "min": min(data.sizes),
            "median": statistics.median(data.sizes),
            "max": max(data.sizes),
        },
        "partition": manifest["report"],
        "catalog_hash": manifest["catalog_hash"],
    }
    if not cfg.resume or not (root / "run.json").exists():
        atomic_write_text(
            root / "run.json",
            json.dumps({"run_config": cfg.to_run_config(), "engine": run.engine, "data": info}, indent=2)
            + "\n",
        )
    if console is not None:
        c = info["customers_per_store"]
        console.print(
            f"{cfg.data.dataset}: {info['stores']} stores, {info['customers']} customers "
            f"(per store min {c['min']}, median {c['median']:g}, max {c['max']}); run dir {root}",
            highlight=False,
        )
    return cfg, info


def remove_previous_run(run_dir: Path) -> None:
    """Delete an earlier ``fedrec-sim run`` in ``run_dir`` (it has a ``run.json``); refuse anything else."""
    import shutil

    if not run_dir.exists():
        return
    if not (run_dir / "run.json").exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"--overwrite: {run_dir} is not a fedrec-sim run dir (no run.json); not deleting it"
        )
    shutil.rmtree(run_dir)


def _quiet_flower(verbose: bool) -> None:
    # Flower warns at every start that its in-process simulation API is deprecated (`flwr run` is the CLI
    # equivalent; both run the same apps); the progress bar and the final table say what matters.
    level = logging.DEBUG if verbose else logging.ERROR
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def run_federation(
    run: SimulationRun, console: Console | None = None, show_progress: bool = True, hooks=None
) -> dict:
    """Prepare, run and return the final report (also in ``<run>/operator/final.json``)."""
    if run.engine not in ENGINES:
        raise ConfigError(f"engine={run.engine!r}; choose one of {ENGINES}")
    console = console or Console()
    cfg, info = prepare_run(run, console)
    from client.client_app import make_client_app
    from server.rounds import RunHooks
    from server.server_app import make_server_app

    hooks = hooks or RunHooks()
    progress = Progress(
        TextColumn("[bold]federation[/]"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=False,
    )
    task = progress.add_task("rounds", total=cfg.rounds, status="starting stores...")
    user_start, user_round = hooks.on_start, hooks.on_round

    def on_start(first: int, total: int) -> None:
        progress.update(task, completed=first - 1, status="")
        if user_start:
            user_start(first, total)

    def on_round(row: dict) -> None:
        eps = row.get("epsilon_max")
        ndcg = row.get("valid_ndcg@10")
        status = (
            (f"valid NDCG@10 {ndcg:.4f}" if ndcg is not None else "no evaluation")
            + (f"  eps<= {eps:.2f}" if eps is not None else "")
            + (f"  declined {row['declined']}" if row["declined"] else "")
            + (f"  failed {row['failed']}" if row["failed"] else "")
            + f"  {row['seconds']:.0f} s"
        )
        progress.update(task, completed=row["round"], status=status)
        if user_round:
            user_round(row)

    hooks = replace(hooks, on_start=on_start, on_round=on_round)
    _quiet_flower(run.verbose)
    server_app = make_server_app(cfg, hooks)
    client_app = make_client_app(cfg)
    start = time.perf_counter()
    with progress:
        if run.engine == "inprocess":
            from simulations.inprocess_grid import run_inprocess

            run_inprocess(server_app, client_app, num_nodes=info["stores"])
        else:
            _run_ray(server_app, client_app, info["stores"], run)
    final = json.loads((Path(cfg.run_dir) / "operator" / "final.json").read_text())
    final["engine"] = run.engine
    final["command_seconds"] = time.perf_counter() - start
    return final


def _run_ray(server_app, client_app, n_stores: int, run: SimulationRun) -> None:
    import warnings

    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs here; silences Ray's notice
    backend = {
        "client_resources": {"num_cpus": run.cpus_per_store, "num_gpus": 0.0},
        "init_args": {
            "include_dashboard": False,
            "num_cpus": os.cpu_count() or 1,
            "logging_level": logging.DEBUG if run.verbose else logging.ERROR,
            "log_to_driver": run.verbose,  # store failures still reach the operator as error replies
        },
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=n_stores,
            backend_config=backend,
            verbose_logging=run.verbose,
        )


def final_table(
    final: dict, title: str = "federated run (test split, full ranking, seen items excluded)"
) -> Table:
    table = Table(title=title)
    for col in ("model", "NDCG@10", "HR@10", "epsilon min / median / max", "stores", "rounds", "time s"):
        table.add_column(col, justify="left" if col == "model" else "right")

    def eps() -> str:
        if final.get("epsilon_max") is None:
            return "no DP"
        return f"{final['epsilon_min']:.2f} / {final['epsilon_median']:.2f} / {final['epsilon_max']:.2f}"

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    rows = [("global", final.get("test_ndcg@10"), final.get("test_hr@10"))]
    if final.get("personalized_test_ndcg@10") is not None:
        rows.append(
            ("personalized (per store)", final["personalized_test_ndcg@10"], final["personalized_test_hr@10"])
        )
    for name, ndcg, hr in rows:
        table.add_row(
            name,
            fmt(ndcg),
            fmt(hr),
            eps(),
            str(final.get("stores_evaluated")),
            str(final.get("rounds")),
            f"{final.get('wall_seconds', 0):.0f}",
        )
    return table


# --------------------------------------------------------------------------------------------- CLI
def demo_config(quick: bool = False) -> FederationConfig:
    """Defaults of ``fedrec-sim run`` (and ``make demo``): the synthetic default, DP at epsilon 8, SecAgg+."""
    from shared.config import (
        AggregationConfig,
        LocalTrainingConfig,
        PersonalizationConfig,
        SimulationDataConfig,
    )
    from shared.models import ModelConfig

    if quick:
        return FederationConfig(
            rounds=2,
            model=ModelConfig(
                kind="transformer", dim=16, max_len=20, n_layers=1, n_heads=1, dropout=0.1, emb_dropout=0.1
            ),
            local=LocalTrainingConfig(epochs=1.0, batch_size=32, lr=5e-3),
            data=SimulationDataConfig(synthetic_items=300, synthetic_customers=600),
            personalization=PersonalizationConfig(epochs=2, patience=1),
            aggregation=AggregationConfig(stage_timeout=300),
        )
    return FederationConfig()  # the defaults are the demo: see shared.config and [tool.flwr.app.config]


def run_config_from_args(args) -> FederationConfig:
    """``demo_config`` with the command line applied (named flags first, then every ``--set KEY=VALUE``)."""
    base = demo_config(args.quick)
    flat = base.to_run_config()
    flat["model"] = args.model
    if args.model != "transformer":
        flat["model-heads"] = 1
    flat["dataset"] = args.dataset
    flat["seed"] = args.seed
    flat["resume"] = bool(args.resume)
    if args.rounds is not None:
        flat["num-server-rounds"] = args.rounds
    if args.epsilon is not None:
        flat["epsilon"] = args.epsilon
    if args.no_dp:
        flat["dp"] = False
    if args.insecure_plain_aggregation:
        flat["insecure-plain-aggregation"] = True
    if args.server_optimizer:
        flat["server-optimizer"] = args.server_optimizer
    default_dir = Path("runs") / f"fed-{args.dataset}-{args.model}{'-quick' if args.quick else ''}"
    flat["run-dir"] = str(args.run_dir or default_dir)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        flat[key.strip()] = _parse_value(value.strip())
    return FederationConfig.from_run_config(flat)


def _parse_value(text: str) -> bool | int | float | str:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text.strip("'\"")
