"""Centralized, non-private training: the utility reference every federated or private run is compared to.

One command trains one model on one data set, selects the epoch on validation NDCG@10, reports test metrics
(full ranking, seen items excluded; the sampled 100-negative protocol alongside, for older papers) with the
popularity floor, and writes everything, configs included, to a results JSON.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from shared.atomic import atomic_write_text
from shared.data.prepare import PreparedData, prepare
from shared.errors import ConfigError
from shared.evaluation import evaluate_model, evaluate_popularity, evaluate_sampled, popularity_scores
from shared.models import ModelConfig, build_model
from shared.training import TrainConfig, fit
from simulations.datasets import load_interactions


@dataclass(frozen=True)
class CentralizedRun:
    dataset: str
    model: ModelConfig
    train: TrainConfig
    max_customers: int | None = None  # subsample for smoke runs


def subsample_customers(data: PreparedData, max_customers: int, seed: int, max_len: int) -> PreparedData:
    """A seeded subset of customers (whole histories), for quick smoke runs on big data sets."""
    if len(data.sequences) <= max_customers:
        return data
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(data.sequences), size=max_customers, replace=False))
    from shared.data.sequences import (
        CustomerSequences,
        EvalSequenceDataset,
        TrainSequenceDataset,
        leave_one_out,
    )

    seqs = CustomerSequences(
        tuple(data.sequences.user_ids[i] for i in keep), tuple(data.sequences.items[i] for i in keep)
    )
    split = leave_one_out(seqs)
    return replace(
        data,
        sequences=seqs,
        split=split,
        train=TrainSequenceDataset(split.train, max_len),
        valid=EvalSequenceDataset(split.valid, max_len),
        test=EvalSequenceDataset(split.test, max_len),
    )


def run_centralized(run: CentralizedRun, console: Console | None = None, show_progress: bool = True) -> dict:
    """Train, select on validation, evaluate on test; returns the results dictionary."""
    console = console or Console()
    if run.max_customers is not None and run.max_customers < 1:
        raise ConfigError(f"max-customers={run.max_customers!r} must be >= 1")
    start = time.perf_counter()
    name, interactions, catalog = load_interactions(run.dataset)
    data = prepare(interactions, catalog, run.model.max_len)
    if run.max_customers:
        data = subsample_customers(data, run.max_customers, run.train.seed, run.model.max_len)
    load_seconds = time.perf_counter() - start
    torch.manual_seed(run.train.seed)
    model = build_model(run.model, catalog.n_items)

    progress = Progress(
        TextColumn(f"[bold]{run.model.kind}[/] on {name}"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=True,
    )
    with progress:
        task = progress.add_task("train", total=run.train.epochs, status="")
        fitted = fit(
            model,
            data.train,
            data.valid,
            run.train,
            on_epoch=lambda row: progress.update(
                task,
                completed=row["epoch"],
                status=f"loss {row['loss']:.3f}  valid NDCG@10 {row['valid_ndcg@10']:.4f}",
            ),
        )
    test = evaluate_model(model, data.test)
    sampled = evaluate_sampled(model, data.test, n_negatives=100, seed=run.train.seed)
    popularity = evaluate_popularity(popularity_scores(data.split.train, catalog.n_items), data.test)
    return {
        "dataset": name,
        "data": data.summary(),
        "model": run.model.to_dict(),
        "train": run.train.to_dict(),
        "protocol": "leave-one-out; full ranking over the catalog, customer's seen items excluded",
        "best_epoch": fitted.best_epoch,
        "epochs_run": len(fitted.history),
        "stopped_because": fitted.stopped_because,
        "valid": fitted.best_valid,
        "test": test,
        "test_sampled_100": sampled,
        "popularity_test": popularity,
        "train_seconds": fitted.seconds,
        "load_seconds": load_seconds,
        "wall_seconds": time.perf_counter() - start,
        "history": fitted.history,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
    }


def write_results(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True))
