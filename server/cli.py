"""``fedrec-operator``: the operator's entry point. Today: publish and inspect the global item catalog."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from rich.console import Console

from shared.cli_support import run_cli
from shared.data.catalog import Catalog
from shared.data.schema import read_interactions
from shared.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrec-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    catalog = sub.add_parser("catalog", help="the global item vocabulary every store maps its items to")
    catalog_sub = catalog.add_subparsers(dest="action", required=True)
    build = catalog_sub.add_parser("build", help="build a catalog from an item list or interaction files")
    src = build.add_mutually_exclusive_group(required=True)
    src.add_argument("--items", type=Path, help="CSV with column item_id (optional: title, category)")
    src.add_argument("--interactions", type=Path, nargs="+", help="interaction files (their items, sorted)")
    build.add_argument("--out", type=Path, required=True)
    show = catalog_sub.add_parser("show", help="print a catalog's size and content hash (verifies it)")
    show.add_argument("path", type=Path)
    return parser


def catalog_from_item_file(path: Path) -> Catalog:
    """Items in file order; ``title`` and ``category`` columns are optional."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read item list ({err})") from err
    if "item_id" not in frame.columns:
        raise DataError(f"{path}: missing column 'item_id' (found {list(frame.columns)})")
    optional = {c: frame[c].tolist() for c in ("title", "category") if c in frame.columns}
    return Catalog.from_items(
        frame["item_id"].tolist(), titles=optional.get("title"), categories=optional.get("category")
    )


def catalog_from_interactions(paths: list[Path]) -> Catalog:
    items: set[str] = set()
    for path in paths:
        frame, _ = read_interactions(path)
        items.update(frame["item_id"].unique().tolist())
    return Catalog.from_items(sorted(items))


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if args.action == "build":
        catalog = (
            catalog_from_item_file(args.items) if args.items else catalog_from_interactions(args.interactions)
        )
        catalog.save(args.out)
        console.print(f"catalog: {catalog.n_items} items, hash {catalog.content_hash} -> {args.out}")
    else:
        catalog = Catalog.load(args.path)
        console.print(f"catalog: {catalog.n_items} items, hash {catalog.content_hash} (verified)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
