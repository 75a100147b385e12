"""Sanity tests of the synthetic multi-store generator (the data every demo and benchmark uses)."""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from itertools import combinations, pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.data.catalog import Catalog
from shared.data.schema import read_interactions
from shared.errors import ConfigError
from simulations.synthetic import EVENTS, SyntheticConfig, SyntheticData, generate, write_synthetic

COLUMNS = ["user_id", "item_id", "timestamp", "event"]


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    """Default config once per module: every statistical test below looks at the product default."""
    return generate(SyntheticConfig())


def _all(d: SyntheticData) -> pd.DataFrame:
    return pd.concat(d.stores.values(), ignore_index=True)


def _item_category(d: SyntheticData) -> dict[str, int]:
    """Category index per item id ("category-03" -> 3), as the catalog records it."""
    assert d.catalog.categories is not None
    return {
        i: int(c.removeprefix("category-"))
        for i, c in zip(d.catalog.item_ids, d.catalog.categories, strict=True)
    }


# --- determinism and shape -------------------------------------------------------------------


def test_same_seed_same_data_different_seed_different(data: SyntheticData) -> None:
    again = generate(SyntheticConfig())
    assert list(again.stores) == list(data.stores)
    for sid in data.stores:
        pd.testing.assert_frame_equal(again.stores[sid], data.stores[sid])
    assert again.catalog.content_hash == data.catalog.content_hash

    other = generate(SyntheticConfig(seed=1))
    assert not all(
        len(other.stores[s]) == len(data.stores[s])
        and other.stores[s]["item_id"].equals(data.stores[s]["item_id"])
        for s in data.stores
    )


def test_frames_follow_schema_and_id_formats(data: SyntheticData) -> None:
    cfg = data.config
    assert list(data.stores) == [f"store-{s:02d}" for s in range(cfg.n_stores)]
    assert data.catalog.n_items == cfg.n_items
    assert data.catalog.item_ids[42] == "i000042"
    catalog_items = set(data.catalog.item_ids)
    for sid, frame in data.stores.items():
        assert list(frame.columns) == COLUMNS
        assert frame["timestamp"].dtype == np.int64
        assert set(frame["event"].unique()) <= set(EVENTS)
        assert set(frame["item_id"].unique()) <= catalog_items
        prefix = "s" + sid.removeprefix("store-") + "-c"
        assert frame["user_id"].str.fullmatch(re.escape(prefix) + r"\d{6}").all()
    events = _all(data)["event"].value_counts(normalize=True)
    assert events["view"] > events["cart"] > events["purchase"] > 0


def test_customer_ids_unique_across_stores(data: SyntheticData) -> None:
    per_store = [set(f["user_id"].unique()) for f in data.stores.values()]
    assert sum(len(s) for s in per_store) == len(set().union(*per_store)) == data.config.n_customers


def test_chronological_and_lengths(data: SyntheticData) -> None:
    cfg = data.config
    for frame in data.stores.values():
        # Contiguous per customer, and time never goes backwards within a customer.
        runs = (frame["user_id"] != frame["user_id"].shift()).sum()
        assert runs == frame["user_id"].nunique()
        assert (frame.groupby("user_id", sort=False)["timestamp"].diff().dropna() >= 0).all()
    lengths = _all(data).groupby("user_id").size()
    assert lengths.min() >= cfg.min_history
    assert lengths.max() <= cfg.max_history
    assert 0.75 * cfg.mean_history < lengths.mean() < 1.25 * cfg.mean_history
    assert lengths.max() > 4 * cfg.mean_history  # heavy tail, not a constant length


# --- realism ---------------------------------------------------------------------------------


def test_popularity_is_heavy_tailed(data: SyntheticData) -> None:
    counts = _all(data)["item_id"].value_counts()
    top = counts.iloc[: data.config.n_items // 10].sum()
    assert top / counts.sum() > 0.4


def test_stores_are_non_iid(data: SyntheticData) -> None:
    cat = _item_category(data)
    n_cat = data.config.n_categories
    dists = []
    for frame in data.stores.values():
        c = np.bincount(frame["item_id"].map(cat).to_numpy(), minlength=n_cat)
        dists.append(c / c.sum())
    tv = [0.5 * np.abs(a - b).sum() for a, b in combinations(dists, 2)]
    assert np.mean(tv) > 0.3

    items = [frozenset(f["item_id"].unique()) for f in data.stores.values()]
    assert len(set(items)) == len(items)

    sizes = [f["user_id"].nunique() for f in data.stores.values()]
    assert min(sizes) >= data.config.min_store_customers
    assert max(sizes) > 3 * min(sizes)


def _hit_rate_at_10(data: SyntheticData) -> tuple[float, float]:
    """Hit@10 on held-out customers' last item: most-frequent-successor vs global popularity.

    Seen items are excluded from both rankings, as in the real evaluation.
    """
    frame = _all(data)
    seqs = [g.to_numpy() for _, g in frame.groupby("user_id", sort=True)["item_id"]]
    order = np.random.default_rng(0).permutation(len(seqs))
    cut = int(0.8 * len(seqs))
    train, test = [seqs[i] for i in order[:cut]], [seqs[i] for i in order[cut:]]

    pop: Counter[str] = Counter()
    nxt: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for s in train:
        pop.update(s)
        for a, b in pairwise(s):
            nxt[a][b] += 1
    by_pop = [i for i, _ in pop.most_common()]

    def top10(ranked: list[str], seen: set[str]) -> set[str]:
        out: list[str] = []
        for i in ranked:
            if i not in seen and i not in out:
                out.append(i)
                if len(out) == 10:
                    break
        return set(out)

    hit_pop = hit_seq = 0
    for s in test:
        seen, target = set(s[:-1]), s[-1]
        hit_pop += target in top10(by_pop, seen)
        hit_seq += target in top10([i for i, _ in nxt[s[-2]].most_common()] + by_pop, seen)
    return hit_seq / len(test), hit_pop / len(test)


def test_sequential_signal_beats_popularity(data: SyntheticData) -> None:
    seq, pop = _hit_rate_at_10(data)
    assert pop < 0.2
    assert seq > 0.25
    assert seq > 2.5 * pop


# --- config validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("n_stores", 0),
        ("n_items", 5),
        ("n_customers", 100),  # < n_stores * min_store_customers
        ("mean_history", 2),
        ("popularity_exponent", -1.0),
        ("store_dirichlet_alpha", 0.0),
        ("sequential_prob", 1.5),
        ("seed", -1),
        ("seed", 1.5),
        ("n_items", True),
        ("event_probs", (0.5, 0.5, 0.5)),
        ("assortment_fraction", (0.9, 0.4)),
    ],
)
def test_bad_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        SyntheticConfig(**{key: value})


# --- invariants over small random configs ----------------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n_stores=st.integers(1, 4),
    n_items=st.integers(10, 80),
    n_categories=st.integers(1, 10),
    alpha=st.floats(0.01, 10.0),
    min_history=st.integers(1, 4),
)
def test_invariants_hold_for_small_configs(
    seed: int, n_stores: int, n_items: int, n_categories: int, alpha: float, min_history: int
) -> None:
    cfg = SyntheticConfig(
        seed=seed,
        n_stores=n_stores,
        n_items=n_items,
        n_categories=min(n_categories, n_items),
        n_customers=n_stores * 5 + 7,
        min_store_customers=5,
        min_history=min_history,
        mean_history=min_history + 3,
        max_history=30,
        store_dirichlet_alpha=alpha,
    )
    d = generate(cfg)
    frame = _all(d)
    assert frame["user_id"].nunique() == cfg.n_customers
    lengths = frame.groupby("user_id").size()
    assert lengths.between(cfg.min_history, cfg.max_history).all()
    assert set(frame["item_id"]) <= set(d.catalog.item_ids)
    assert (frame.groupby("user_id", sort=False)["timestamp"].diff().dropna() > 0).all()


# --- scale -----------------------------------------------------------------------------------


def test_big_catalog_is_cheap() -> None:
    """A 100k-item catalog must not trigger anything quadratic in n_items."""
    t0 = time.perf_counter()
    d = generate(SyntheticConfig(n_items=100_000, n_customers=1_000))
    assert time.perf_counter() - t0 < 10
    assert d.catalog.n_items == 100_000
    assert d.catalog.item_ids[-1] == "i099999"


@pytest.mark.slow
def test_benchmark_size_under_20_seconds() -> None:
    t0 = time.perf_counter()
    d = generate(SyntheticConfig(n_items=100_000, n_customers=20_000))
    assert time.perf_counter() - t0 < 20
    assert sum(f["user_id"].nunique() for f in d.stores.values()) == 20_000


# --- writing ---------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_write_synthetic_round_trips_and_is_byte_identical(tmp_path: Path, fmt: str) -> None:
    cfg = SyntheticConfig(n_stores=3, n_items=300, n_customers=200, n_categories=5)
    out = write_synthetic(cfg, tmp_path / "a", fmt=fmt)
    write_synthetic(cfg, tmp_path / "b", fmt=fmt)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")

    manifest = json.loads((out / "manifest.json").read_text())
    catalog = Catalog.load(out / "catalog.json")
    assert manifest["catalog_hash"] == catalog.content_hash
    assert manifest["config"]["seed"] == cfg.seed

    expected = generate(cfg)
    assert [s["store_id"] for s in manifest["stores"]] == list(expected.stores)
    for entry in manifest["stores"]:
        frame, _ = read_interactions(out / entry["file"])
        assert len(frame) == entry["n_interactions"]
        assert frame["user_id"].nunique() == entry["n_customers"]
        want = expected.stores[entry["store_id"]]
        assert frame["item_id"].tolist() == want["item_id"].tolist()
        assert frame["timestamp"].tolist() == want["timestamp"].tolist()


def test_write_synthetic_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fmt"):
        write_synthetic(SyntheticConfig(n_stores=2, n_customers=100), tmp_path, fmt="xlsx")
