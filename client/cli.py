"""``fedrec-store``: a partner store's entry point. Today: check the store's data against the catalog."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

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


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"check-data": cmd_check_data}[args.command](args, Console())


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
