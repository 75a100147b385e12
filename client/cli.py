"""``fedrec-store``: a partner store's entry point: check data, serve top-N, manage model versions."""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from client.serving.hidden_cache import DEFAULT_CACHE_SIZE
from shared.cli_support import run_cli
from shared.data.catalog import Catalog
from shared.data.prepare import prepare
from shared.data.schema import read_interactions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrec-store", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-data", help="read the interaction log, map it to the catalog, report")
    check.add_argument("--interactions", type=Path, required=True, help="CSV or Parquet interaction log")
    check.add_argument("--catalog", type=Path, required=True, help="the operator's catalog.json")
    check.add_argument("--expected-hash", help="the catalog hash the operator announced")
    check.add_argument(
        "--lenient", action="store_true", help="drop malformed rows (counted) instead of failing"
    )
    check.add_argument("--max-len", type=int, default=50)

    serve = sub.add_parser("serve", help="serve personalized top-N over HTTP (FastAPI + uvicorn)")
    serve.add_argument("--state", type=Path, required=True, help="the store's state dir")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--api-key-file",
        type=Path,
        help="file holding the API key (else $FEDREC_API_KEY, else <state>/api_key)",
    )
    serve.add_argument(
        "--interactions", type=Path, help="the store's interaction log (default <state>/interactions.*)"
    )
    serve.add_argument("--catalog", type=Path, help="catalog.json (default <state>/catalog.json)")
    serve.add_argument(
        "--poll-seconds", type=float, default=1.0, help="how often to look for a new model version"
    )
    serve.add_argument("--max-body-bytes", type=int, default=64 * 1024)
    serve.add_argument("--threads", type=int, default=1, help="torch threads for scoring (default 1)")
    serve.add_argument(
        "--coarse", choices=["auto", "bf16", "off"], default="auto", help="bf16 first pass (exact results)"
    )
    serve.add_argument(
        "--hidden-cache",
        type=int,
        default=DEFAULT_CACHE_SIZE,
        help="history windows whose encoder output is kept (0 = off; a new event is a new window)",
    )
    serve.add_argument(
        "--scorer", choices=["fast", "naive"], default="fast", help="naive = benchmark baseline"
    )
    serve.add_argument(
        "--epsilon-budget", type=float, help="the store's privacy budget, shown on the staff page"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    model = sub.add_parser("model", help="list local model versions or roll back")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    listing = model_sub.add_parser("list", help="model versions, which one is current, and their state")
    listing.add_argument("--state", type=Path, required=True)
    back = model_sub.add_parser("rollback", help="make the previous valid version current again")
    back.add_argument("--state", type=Path, required=True)
    back.add_argument("--to", help="a specific version instead of the previous one")
    return parser


def cmd_check_data(args: argparse.Namespace, console: Console) -> int:
    catalog = Catalog.load(args.catalog, expected_hash=args.expected_hash)
    frame, report = read_interactions(args.interactions, lenient=args.lenient)
    data = prepare(frame, catalog, args.max_len)
    table = Table(title=f"{args.interactions.name} against catalog {catalog.content_hash[:12]}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("rows read", str(report.rows_read))
    table.add_row("rows dropped as malformed", str(report.rows_dropped))
    for key, value in data.summary().items():
        table.add_row(key.replace("_", " "), f"{value:.2f}" if isinstance(value, float) else str(value))
    console.print(table)
    for line in report.first_bad_lines:
        console.print(f"  dropped: {line}")
    return 0


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    import logging

    import torch

    from client.serving import ServeConfig, create_app
    from client.serving.auth import load_api_key
    from client.serving.server import bind, serve_forever
    from client.serving.state import StoreLayout

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One intra-op thread by default: the event loop needs the other core, and batching beats threads.
    torch.set_num_threads(max(1, args.threads))
    config = ServeConfig(
        state_dir=args.state,
        interactions=args.interactions,
        catalog=args.catalog,
        poll_seconds=args.poll_seconds,
        max_body_bytes=args.max_body_bytes,
        scorer=args.scorer,
        epsilon_budget=args.epsilon_budget,
        coarse=args.coarse,
        hidden_cache=args.hidden_cache,
    )
    key = load_api_key(args.api_key_file, StoreLayout.from_config(config).api_key)
    sock = bind(args.host, args.port)  # before loading, so a taken port fails fast
    app = create_app(args.state, key, **{k: v for k, v in vars(config).items() if k != "state_dir"})
    version = app.state.services.holder.version
    console.print(
        f"serving {args.state} on http://{args.host}:{sock.getsockname()[1]} "
        f"(model {version or 'none: popularity only'}, scorer {args.scorer})",
        highlight=False,
        soft_wrap=True,  # one line, so scripts can read the address
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal; turning SIGTERM into
    # KeyboardInterrupt lets both end here with exit code 0 (a requested stop is not an error).
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(app, sock, args.log_level)
    console.print("stopped", highlight=False)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_model(args: argparse.Namespace, console: Console) -> int:
    from client import model_store

    if args.model_command == "rollback":
        catalog_path = args.state / "catalog.json"
        expected = Catalog.load(catalog_path).content_hash if catalog_path.exists() else None
        previous = model_store.read_current(args.state)
        now = model_store.rollback(args.state, to=args.to, expected_catalog_hash=expected)
        console.print(
            f"current model version: {now} (was {previous}); a running server swaps at its next poll"
        )
        return 0
    current = model_store.read_current(args.state)
    table = Table(title=f"model versions in {model_store.models_dir(args.state)}")
    for col in ("", "version", "kind", "origin", "round", "created", "state"):
        table.add_column(col)
    for info in model_store.list_versions(args.state):
        meta = info.meta
        table.add_row(
            "*" if info.name == current else "",
            info.name,
            meta.model.get("kind", "?") if meta else "?",
            meta.origin if meta else "?",
            "-" if meta is None or meta.round is None else str(meta.round),
            "-" if meta is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(meta.created)),
            "ok" if info.error is None else f"unreadable: {info.error}",
        )
    console.print(table)
    console.print(f"current: {current or 'none'} (* marks it)")
    return 0


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"check-data": cmd_check_data, "serve": cmd_serve, "model": cmd_model}
    return handlers[args.command](args, Console())


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
