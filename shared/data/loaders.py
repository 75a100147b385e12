"""Loaders for the public benchmark datasets in the shared data folder, and for store files.

Every loader returns the same ``LoadedDataset`` (schema frame + catalog) so simulations, benchmarks and
tests can swap datasets by name. The data live outside the repository (licenses forbid vendoring some of
them), found via ``FEDREC_DATA_ROOT`` or ``<repo>/../shared/data``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.catalog import Catalog
from shared.data.schema import ReadReport, make_frame, read_interactions
from shared.errors import DataError

__all__ = [
    "DATA_ROOT_ENV",
    "LoadedDataset",
    "default_data_root",
    "known_datasets",
    "load_amazon_5core",
    "load_movielens",
    "load_named",
    "load_path",
    "load_user_item_lines",
]

DATA_ROOT_ENV = "FEDREC_DATA_ROOT"


@dataclass(frozen=True, eq=False)  # eq on DataFrames is ambiguous; compare fields explicitly
class LoadedDataset:
    """Interactions (schema columns, chronological within each user) plus the item catalog."""

    name: str
    interactions: pd.DataFrame
    catalog: Catalog
    report: ReadReport | None = None  # set by load_path: what lenient reading dropped

    @property
    def n_users(self) -> int:
        return int(self.interactions["user_id"].nunique())


def default_data_root() -> Path:
    """``$FEDREC_DATA_ROOT`` if set, else the ``shared/data`` folder next to the repository."""
    configured = os.environ.get(DATA_ROOT_ENV)
    if configured:
        return Path(configured).expanduser()
    # loaders.py -> data -> shared (package) -> repo root; the data folder is a sibling of the repo.
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


# ------------------------------------------------------------------------------------------ helpers


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding=encoding) as handle:
                return handle.read()
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _numeric_order(ids: Iterable[str]) -> list[str]:
    """Integer order when every id is an integer (1, 2, 10), else plain string order."""
    unique = set(ids)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def _positions_within_user(users: np.ndarray) -> np.ndarray:
    # Files without timestamps are ordered per user; the position keeps that order as a timestamp.
    return pd.Series(users).groupby(users, sort=False).cumcount().to_numpy(dtype=np.int64)


def _parse_sequence_file(path: Path) -> tuple[list[str], list[int], list[str]]:
    """S3-Rec layout ``user tok1 tok2 ...``: (user per line, tokens per line, all tokens flat)."""
    users: list[str] = []
    lengths: list[int] = []
    tokens: list[str] = []
    # A plain loop over lines is fine (tens of thousands); tokens go into one flat list for numpy.
    for line in _read_text(path).splitlines():
        parts = line.split()
        if not parts:
            continue
        users.append(parts[0])
        lengths.append(len(parts) - 1)
        tokens.extend(parts[1:])
    if not users:
        raise DataError(f"{path}: no sequences found")
    return users, lengths, tokens


def _int_array(path: Path, tokens: list[str]) -> np.ndarray:
    try:
        return np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in tokens if not t.lstrip("+-").isdigit()), "(out of int64 range)")
        raise DataError(f"{path}: value {bad!r} is not an integer") from None


def _attribute_categories(path: Path, item_ids: list[str]) -> tuple[str | None, ...] | None:
    """S3-Rec ``item2attributes``: anonymized attribute ids only, kept as "3|17|42" strings."""
    if not path.exists():
        return None
    try:
        mapping = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected a JSON object item -> [attribute ids]")
    categories: list[str | None] = []
    for item in item_ids:
        attributes = mapping.get(item)
        if not attributes:
            categories.append(None)
            continue
        # dict.fromkeys de-duplicates (LastFM repeats tags) while keeping first-seen order.
        categories.append("|".join(str(a) for a in dict.fromkeys(attributes)))
    return tuple(categories)


# ------------------------------------------------------------------------------------------ loaders


def load_amazon_5core(directory: str | os.PathLike[str], *, name: str | None = None) -> LoadedDataset:
    """S3-Rec format (Amazon, Yelp, LastFM, Taobao): ``sequences.txt.gz`` + optional timestamps/attributes."""
    folder = Path(directory)
    sequences_path = folder / "sequences.txt.gz"
    users, lengths, items = _parse_sequence_file(sequences_path)
    user_column = np.repeat(np.asarray(users, dtype=object), lengths)

    times_path = folder / "timestamps.txt.gz"
    if times_path.exists():
        t_users, t_lengths, t_tokens = _parse_sequence_file(times_path)
        if t_users != users or t_lengths != lengths:
            # zip stops at the shorter file; a pure length difference is reported after its end.
            pairs = zip(zip(users, lengths, strict=True), zip(t_users, t_lengths, strict=True), strict=False)
            line = next(
                (i for i, (seq, ts) in enumerate(pairs, start=1) if seq != ts),
                min(len(users), len(t_users)) + 1,
            )
            raise DataError(
                f"{times_path}: line {line}: not aligned with {sequences_path.name} "
                "(user id or sequence length differs)"
            )
        timestamps = _int_array(times_path, t_tokens)
    else:
        timestamps = _positions_within_user(user_column)

    catalog_ids = _numeric_order(items)
    categories = _attribute_categories(folder / "item2attributes.json.gz", catalog_ids)
    return LoadedDataset(
        name=name or folder.name,
        interactions=make_frame(user_column, np.asarray(items, dtype=object), timestamps),
        catalog=Catalog.from_items(catalog_ids, categories=categories),
    )


def load_user_item_lines(path: str | os.PathLike[str], *, name: str | None = None) -> LoadedDataset:
    """SASRec/BERT4Rec layout: one ``user item`` pair per line, chronological within each user."""
    source = Path(path)
    lines = _read_text(source).splitlines()
    tokens = " ".join(lines).split()
    if len(tokens) != 2 * sum(1 for line in lines if line.strip()):
        for number, line in enumerate(lines, start=1):
            if line.strip() and len(line.split()) != 2:
                raise DataError(f"{source}: line {number}: expected 'user item', found {line.strip()!r}")
    if not tokens:
        raise DataError(f"{source}: no interactions found")
    pairs = np.asarray(tokens, dtype=object).reshape(-1, 2)
    users, items = pairs[:, 0], pairs[:, 1]
    stem = source.name.split(".")[0]
    return LoadedDataset(
        name=name or stem,
        interactions=make_frame(users, items, _positions_within_user(users)),
        catalog=Catalog.from_items(_numeric_order(items.tolist())),
    )


def _movielens_ratings(folder: Path) -> tuple[pd.DataFrame, Path]:
    if (folder / "u.data.gz").exists():
        path, options = folder / "u.data.gz", {"sep": "\t", "header": None}
        columns = ["user", "item", "rating", "timestamp"]
    elif (folder / "ratings.csv.gz").exists():
        path, options = folder / "ratings.csv.gz", {"sep": ",", "header": 0}
        columns = ["user", "item", "rating", "timestamp"]
    else:
        raise DataError(f"{folder}: no MovieLens ratings (expected u.data.gz or ratings.csv.gz)")
    try:
        frame = pd.read_csv(path, names=columns, dtype={"user": str, "item": str}, **options)
        frame["timestamp"] = frame["timestamp"].astype(np.int64)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot parse MovieLens ratings ({exc})") from None
    return frame, path


def _movielens_titles(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(item -> title, item -> "Genre|Genre") from u.item.gz (latin-1) or movies.csv.gz."""
    titles: dict[str, str] = {}
    genres: dict[str, str] = {}
    if (folder / "u.item.gz").exists():
        genre_file = next((p for p in (folder / "u.genre", folder / "u.genre.gz") if p.exists()), None)
        names: list[str] = []
        if genre_file is not None:
            names = [ln.split("|")[0] for ln in _read_text(genre_file, "latin-1").splitlines() if ln]
        for line in _read_text(folder / "u.item.gz", "latin-1").splitlines():
            fields = line.split("|")
            if len(fields) < 2:
                continue
            titles[fields[0]] = fields[1]
            flags = fields[5:]
            if names and len(flags) == len(names):
                picked = [g for g, flag in zip(names, flags, strict=True) if flag.strip() == "1"]
                genres[fields[0]] = "|".join(picked)
    elif (folder / "movies.csv.gz").exists():
        path = folder / "movies.csv.gz"
        try:
            movies = pd.read_csv(path, dtype=str, keep_default_na=False)
            titles = dict(zip(movies["movieId"], movies["title"], strict=True))
            genres = {
                k: v
                for k, v in zip(movies["movieId"], movies["genres"], strict=True)
                if v and v != "(no genres listed)"
            }
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
            raise DataError(f"{path}: cannot parse MovieLens movies ({exc})") from None
    return titles, genres


def load_movielens(directory: str | os.PathLike[str], *, name: str | None = None) -> LoadedDataset:
    """MovieLens ratings as implicit views, sorted by timestamp (stable, so ties keep file order)."""
    folder = Path(directory)
    ratings, _ = _movielens_ratings(folder)
    ratings = ratings.sort_values("timestamp", kind="stable")
    titles, genres = _movielens_titles(folder)
    catalog_ids = _numeric_order(ratings["item"].tolist())
    catalog = Catalog.from_items(
        catalog_ids,
        titles=[titles.get(i) for i in catalog_ids] if titles else None,
        categories=[genres.get(i) or None for i in catalog_ids] if genres else None,
    )
    return LoadedDataset(
        name=name or folder.name,
        interactions=make_frame(ratings["user"], ratings["item"], ratings["timestamp"]),
        catalog=catalog,
    )


def load_path(path: str | os.PathLike[str], lenient: bool = False) -> LoadedDataset:
    """A store's own CSV/Parquet file; the catalog is just the items seen, in sorted order."""
    source = Path(path)
    frame, report = read_interactions(source, lenient=lenient)
    return LoadedDataset(
        name=source.name.split(".")[0],
        interactions=frame,
        catalog=Catalog.from_items(_numeric_order(frame["item_id"].unique().tolist())),
        report=report,
    )


# ----------------------------------------------------------------------------------------- registry

_Loader = Callable[..., LoadedDataset]
_REGISTRY: dict[str, tuple[str, _Loader]] = {
    "amazon-beauty": ("amazon-beauty", load_amazon_5core),
    "amazon-sports": ("amazon-sports", load_amazon_5core),
    "amazon-toys": ("amazon-toys", load_amazon_5core),
    "yelp": ("yelp", load_amazon_5core),
    "lastfm": ("lastfm", load_amazon_5core),
    "taobao-mclrec": ("taobao-mclrec", load_amazon_5core),
    "amazon-games-sasrec": ("amazon-games-sasrec/Video.txt.gz", load_user_item_lines),
    "amazon-beauty-bert4rec": ("amazon-beauty-bert4rec/beauty.txt.gz", load_user_item_lines),
    "ml-100k": ("ml-100k", load_movielens),
    "ml-latest-small": ("ml-latest-small", load_movielens),
}


def known_datasets() -> tuple[str, ...]:
    """Names accepted by ``load_named``."""
    return tuple(_REGISTRY)


def load_named(name: str, data_root: str | os.PathLike[str] | None = None) -> LoadedDataset:
    """Load a benchmark dataset by its registry name from the shared data folder."""
    if name not in _REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(_REGISTRY)}")
    root = Path(data_root) if data_root is not None else default_data_root()
    if not root.is_dir():
        raise DataError(
            f"shared data folder not found at {root}; set {DATA_ROOT_ENV} to the folder that holds "
            "the dataset directories (amazon-beauty/, ml-100k/, ...)"
        )
    relative, loader = _REGISTRY[name]
    target = root / relative
    if not target.exists():
        raise DataError(f"dataset {name!r} is not in the shared data folder: {target} does not exist")
    return loader(target, name=name)
