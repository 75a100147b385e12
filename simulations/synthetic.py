"""Seeded synthetic multi-store interaction logs: the built-in default data set.

The demo, the tests and the benchmarks run on this generator, so it has to look like e-commerce
logs in the ways that matter for federated next-item recommendation. All randomness comes from
one ``numpy.random.Generator(config.seed)``, so one config always yields the same data.

Generative process:

1. **Catalog.** Every item gets a category (uneven category sizes) and a Zipf popularity
   ``(rank + 1) ** -popularity_exponent`` over a random permutation of the items.
2. **Complements.** Every item gets ``successors_per_item`` successor items (phone -> case ->
   charger), mostly from its own category, with geometrically decaying weights. They are stored
   as an ``[n_items, k]`` array; no item x item matrix is ever built.
3. **Stores (non-IID).** Each store draws a category mix from
   ``Dirichlet(store_dirichlet_alpha)``, carries a fraction of the catalog (uniform in
   ``assortment_fraction``) sampled towards its categories and towards bestsellers, and gets an
   uneven share of the customers (lognormal shares on top of ``min_store_customers`` each).
4. **Customers.** Each customer belongs to one store and has a concentrated taste over
   categories, ``Dirichlet(taste_concentration * store mix)``. Sequence lengths are
   ``min_history + lognormal`` (heavy-tailed, mean about ``mean_history``, capped at
   ``max_history``).
5. **Sequences.** The first item comes from taste x popularity. Afterwards, with probability
   ``sequential_prob`` the next item is a successor of the last item (or, with probability
   ``1 - last_item_prob``, of the second-last one), restricted to items the store carries and
   the customer has not seen; otherwise (or when no successor qualifies) it is drawn from the
   customer's taste x popularity within the store's assortment. Items rarely repeat in a
   sequence, which keeps "seen items excluded" evaluation meaningful.
6. **Events and time.** Each step is a "view", "cart" or "purchase" (``event_probs``).
   Timestamps increase strictly per customer: short in-session gaps, occasional multi-hour
   session breaks, start times spread over ``period_days`` from ``start_timestamp``.

Ids: items ``i000042``, stores ``store-03``, customers ``s03-c000123`` (globally unique).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.atomic import atomic_write_text
from shared.data.catalog import Catalog
from shared.data.schema import write_interactions
from shared.errors import ConfigError

__all__ = ["EVENTS", "SyntheticConfig", "SyntheticData", "generate", "write_synthetic"]

EVENTS: tuple[str, str, str] = ("view", "cart", "purchase")

# How many times a taste draw that hit an already-seen item is redrawn before the repeat is kept.
_RESAMPLE_ROUNDS = 4
# Mean in-session gap (s) and mean session break (s): minutes between clicks, hours between visits.
_SESSION_GAP_S = 60.0
_BREAK_GAP_S = 6 * 3600.0
_BREAK_PROB = 0.15


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator; defaults give a demo-sized, clearly sequential, non-IID data set."""

    n_stores: int = 10
    n_items: int = 2000
    n_customers: int = 3000
    n_categories: int = 20
    mean_history: float = 12.0
    min_history: int = 3
    max_history: int = 200
    history_sigma: float = 1.0
    popularity_exponent: float = 1.0
    store_dirichlet_alpha: float = 0.5
    taste_concentration: float = 0.5
    successors_per_item: int = 5
    successor_decay: float = 0.5
    successor_in_category: float = 0.85
    sequential_prob: float = 0.5
    last_item_prob: float = 0.8
    assortment_fraction: tuple[float, float] = (0.4, 0.9)
    store_size_sigma: float = 0.8
    min_store_customers: int = 30
    event_probs: tuple[float, float, float] = (0.85, 0.1, 0.05)
    start_timestamp: int = 1_704_067_200  # 2024-01-01T00:00:00Z
    period_days: float = 90.0
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able dict (tuples become lists) for manifests."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class SyntheticData:
    """Generated catalog plus one interaction frame per store (schema columns, chronological)."""

    catalog: Catalog
    stores: dict[str, pd.DataFrame]
    config: SyntheticConfig = field(default_factory=SyntheticConfig)

    @property
    def n_interactions(self) -> int:
        """Total rows over all stores."""
        return sum(len(f) for f in self.stores.values())


# ----------------------------------------------------------------------------------------------
# validation


def _need(ok: bool, key: str, value: object, rule: str) -> None:
    """Raise a ConfigError that names the key, so a bad CLI flag or manifest is easy to fix."""
    if not ok:
        raise ConfigError(f"synthetic config: {key}={value!r} is invalid ({rule})")


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        return False
    return bool(np.isfinite(v))


def _validate(c: SyntheticConfig) -> None:
    """Reject bad values early with the key named, instead of failing deep inside numpy."""
    for key in (
        "n_stores",
        "n_items",
        "n_customers",
        "n_categories",
        "min_history",
        "max_history",
        "successors_per_item",
        "min_store_customers",
        "start_timestamp",
        "seed",
    ):
        _need(_is_int(getattr(c, key)), key, getattr(c, key), "must be an integer")
    for key in (
        "mean_history",
        "history_sigma",
        "popularity_exponent",
        "store_dirichlet_alpha",
        "taste_concentration",
        "successor_decay",
        "successor_in_category",
        "sequential_prob",
        "last_item_prob",
        "store_size_sigma",
        "period_days",
    ):
        _need(_is_num(getattr(c, key)), key, getattr(c, key), "must be a finite number")

    _need(c.n_stores >= 1, "n_stores", c.n_stores, ">= 1")
    _need(c.n_categories >= 1, "n_categories", c.n_categories, ">= 1")
    _need(c.n_items >= max(10, c.n_categories), "n_items", c.n_items, ">= max(10, n_categories)")
    _need(c.min_store_customers >= 1, "min_store_customers", c.min_store_customers, ">= 1")
    _need(
        c.n_customers >= c.n_stores * c.min_store_customers,
        "n_customers",
        c.n_customers,
        f">= n_stores * min_store_customers = {c.n_stores * c.min_store_customers}",
    )
    _need(c.min_history >= 1, "min_history", c.min_history, ">= 1")
    _need(c.max_history >= c.min_history, "max_history", c.max_history, ">= min_history")
    _need(
        c.min_history < c.mean_history <= c.max_history,
        "mean_history",
        c.mean_history,
        "min_history < mean_history <= max_history",
    )
    _need(c.history_sigma >= 0, "history_sigma", c.history_sigma, ">= 0")
    _need(c.popularity_exponent >= 0, "popularity_exponent", c.popularity_exponent, ">= 0")
    _need(c.store_dirichlet_alpha > 0, "store_dirichlet_alpha", c.store_dirichlet_alpha, "> 0")
    _need(c.taste_concentration > 0, "taste_concentration", c.taste_concentration, "> 0")
    _need(
        1 <= c.successors_per_item < c.n_items,
        "successors_per_item",
        c.successors_per_item,
        "1 <= k < n_items",
    )
    _need(0 < c.successor_decay <= 1, "successor_decay", c.successor_decay, "in (0, 1]")
    for key in ("successor_in_category", "sequential_prob", "last_item_prob"):
        _need(0 <= getattr(c, key) <= 1, key, getattr(c, key), "in [0, 1]")
    _need(c.store_size_sigma >= 0, "store_size_sigma", c.store_size_sigma, ">= 0")
    _need(c.period_days > 0, "period_days", c.period_days, "> 0")
    _need(c.start_timestamp >= 0, "start_timestamp", c.start_timestamp, ">= 0")
    _need(c.seed >= 0, "seed", c.seed, ">= 0")

    af = c.assortment_fraction
    _need(
        isinstance(af, tuple) and len(af) == 2 and all(_is_num(x) for x in af),
        "assortment_fraction",
        af,
        "a (low, high) pair of numbers",
    )
    _need(0 < af[0] <= af[1] <= 1, "assortment_fraction", af, "0 < low <= high <= 1")
    ep = c.event_probs
    _need(
        isinstance(ep, tuple) and len(ep) == 3 and all(_is_num(x) and x >= 0 for x in ep),
        "event_probs",
        ep,
        "three non-negative numbers for view, cart, purchase",
    )
    _need(abs(sum(ep) - 1.0) < 1e-6, "event_probs", ep, "must sum to 1")


# ----------------------------------------------------------------------------------------------
# sampling helpers


class _GroupedSampler:
    """Weighted sampling of members within many groups at once, via one cumsum + searchsorted.

    Lets every customer draw "an item of category c in store s" in one vectorised call without a
    per-group Python loop or a dense group x item matrix.
    """

    def __init__(self, members: np.ndarray, groups: np.ndarray, weights: np.ndarray, n_groups: int):
        order = np.argsort(groups, kind="stable")
        self.members = members[order]
        w = weights[order].astype(np.float64)
        self.cum = np.cumsum(w)
        counts = np.bincount(groups, minlength=n_groups)
        self.first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.last = self.first + counts - 1
        self.total = np.bincount(groups, weights=weights, minlength=n_groups).astype(np.float64)
        # Cumulative weight before each group's first member (empty groups never get sampled).
        self.base = np.concatenate([[0.0], self.cum])[self.first]

    def sample(self, group: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One member per entry of ``group``; every requested group must have positive weight."""
        target = self.base[group] + u * self.total[group]
        idx = np.searchsorted(self.cum, target, side="right")
        # Float round-off can land one past the group's end (or before its start); clamp.
        idx = np.clip(idx, self.first[group], self.last[group])
        return self.members[idx]


def _row_categorical(cum_probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per row of a row-wise cumulative probability matrix."""
    idx = (cum_probs < u[:, None] * cum_probs[:, -1:]).sum(axis=1)
    return np.minimum(idx, cum_probs.shape[1] - 1)


def _dirichlet_rows(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    """Row-wise Dirichlet with a different alpha per row (numpy's dirichlet takes one vector)."""
    g = rng.standard_gamma(alpha)
    s = g.sum(axis=1, keepdims=True)
    # Tiny alphas can underflow every component to 0; fall back to the normalised alpha then.
    return np.where(s > 0, g / np.where(s > 0, s, 1.0), alpha / alpha.sum(axis=1, keepdims=True))


# ----------------------------------------------------------------------------------------------
# generative steps


def _item_structure(c: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Category per item (uneven sizes, none empty) and Zipf popularity over a random ranking."""
    shares = rng.dirichlet(np.full(c.n_categories, 2.0))
    item_cat = rng.choice(c.n_categories, size=c.n_items, p=shares)
    # Guarantee every category has at least one item so category ids are all meaningful.
    item_cat[rng.permutation(c.n_items)[: c.n_categories]] = np.arange(c.n_categories)
    ranks = rng.permutation(c.n_items)
    pop = (ranks + 1.0) ** -c.popularity_exponent
    return item_cat, pop / pop.sum()


def _successors(
    c: SyntheticConfig, rng: np.random.Generator, item_cat: np.ndarray, pop: np.ndarray
) -> np.ndarray:
    """``[n_items, k]`` complement lists, mostly within the item's category.

    Weighted by sqrt-popularity so successors are not just the bestsellers: the sequential signal
    must carry information popularity does not.
    """
    n, k = c.n_items, c.successors_per_item
    w = np.sqrt(pop)
    items = np.arange(n)
    within = _GroupedSampler(items, item_cat, w, c.n_categories)
    glob = _GroupedSampler(items, np.zeros(n, dtype=np.int64), w, 1)

    src_cat = np.repeat(item_cat, k)
    succ = np.empty(n * k, dtype=np.int64)
    pending = np.arange(n * k)
    in_cat = rng.random(n * k) < c.successor_in_category
    # Categories of one item cannot offer a distinct successor; those slots go global.
    in_cat &= np.bincount(item_cat, minlength=c.n_categories)[src_cat] > 1
    owner = np.repeat(items, k)
    for _ in range(8):  # redraw self-loops; a handful of rounds leaves ~none
        u = rng.random(len(pending))
        ic = in_cat[pending]
        draw = np.empty(len(pending), dtype=np.int64)
        draw[ic] = within.sample(src_cat[pending[ic]], u[ic])
        draw[~ic] = glob.sample(np.zeros((~ic).sum(), dtype=np.int64), u[~ic])
        succ[pending] = draw
        pending = pending[draw == owner[pending]]
        if len(pending) == 0:
            break
    if len(pending):  # deterministic fix-up for stubborn self-loops
        succ[pending] = (owner[pending] + 1) % n
    return succ.reshape(n, k)


def _store_sizes(c: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Uneven customer counts (lognormal shares) with a floor so every store can train."""
    shares = rng.lognormal(0.0, c.store_size_sigma, size=c.n_stores)
    shares /= shares.sum()
    extra = c.n_customers - c.n_stores * c.min_store_customers
    raw = shares * extra
    sizes = np.floor(raw).astype(np.int64)
    # Hand the rounding remainder to the largest fractional parts (deterministic tie-break).
    rest = extra - int(sizes.sum())
    sizes[np.argsort(-(raw - sizes), kind="stable")[:rest]] += 1
    return sizes + c.min_store_customers


def _assortments(
    c: SyntheticConfig,
    rng: np.random.Generator,
    store_mix: np.ndarray,
    item_cat: np.ndarray,
    pop: np.ndarray,
) -> np.ndarray:
    """``[n_stores, n_items]`` bool: which items each store carries.

    Weighted sampling without replacement (Gumbel top-m) towards the store's categories and
    towards bestsellers, so assortments overlap on the head but differ in the tail.
    """
    carried = np.zeros((c.n_stores, c.n_items), dtype=bool)
    lo, hi = c.assortment_fraction
    frac = rng.uniform(lo, hi, size=c.n_stores)
    log_pop = 0.5 * np.log(pop)
    for s in range(c.n_stores):
        m = max(c.n_categories, round(frac[s] * c.n_items))
        m = min(m, c.n_items)
        keys = np.log(store_mix[s, item_cat]) + log_pop + rng.gumbel(size=c.n_items)
        carried[s, np.argpartition(-keys, m - 1)[:m]] = True
    return carried


def _history_lengths(c: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed lengths: ``min_history + floor(lognormal)``, mean about ``mean_history``."""
    excess = c.mean_history - c.min_history + 0.5  # +0.5 compensates the floor
    mu = np.log(excess) - c.history_sigma**2 / 2
    extra = np.floor(rng.lognormal(mu, c.history_sigma, size=c.n_customers)).astype(np.int64)
    return np.clip(c.min_history + extra, c.min_history, c.max_history)


def _sequences(
    c: SyntheticConfig,
    rng: np.random.Generator,
    lengths: np.ndarray,
    cust_store: np.ndarray,
    taste_cum: np.ndarray,
    succ: np.ndarray,
    carried: np.ndarray,
    shelf: _GroupedSampler,
) -> tuple[np.ndarray, np.ndarray]:
    """Item histories ``[n_customers, max_len]`` (-1 padded) and which steps were sequential.

    Customers are processed position by position, sorted by length so the active ones at step t
    are a prefix: one vectorised batch per position instead of a Python loop per customer.
    """
    n = len(lengths)
    order = np.argsort(-lengths, kind="stable")
    L = lengths[order]
    store = cust_store[order]
    tcum = taste_cum[order]
    max_len = int(L.max())
    hist = np.full((n, max_len), -1, dtype=np.int64)
    seq_step = np.zeros((n, max_len), dtype=bool)
    # Number of customers still active at step t (L sorted descending, so they form a prefix).
    active_at = np.searchsorted(-L, -np.arange(max_len), side="left")
    k = succ.shape[1]
    succ_w = c.successor_decay ** np.arange(k)
    n_cat = tcum.shape[1]

    def taste_draw(rows: np.ndarray, t: int) -> np.ndarray:
        """Taste x popularity within the store's shelf, redrawing items already seen."""
        out = np.empty(len(rows), dtype=np.int64)
        todo = np.arange(len(rows))
        for r in range(_RESAMPLE_ROUNDS + 1):
            rr = rows[todo]
            cat = _row_categorical(tcum[rr], rng.random(len(rr)))
            item = shelf.sample(store[rr] * n_cat + cat, rng.random(len(rr)))
            out[todo] = item
            if t == 0 or r == _RESAMPLE_ROUNDS:
                break
            seen = (hist[rr, :t] == item[:, None]).any(axis=1)
            todo = todo[seen]
            if len(todo) == 0:
                break
        return out

    for t in range(max_len):
        m = int(active_at[t])
        rows = np.arange(m)
        if t == 0:
            hist[:m, 0] = taste_draw(rows, 0)
            continue
        use_seq = rng.random(m) < c.sequential_prob
        back = np.where((rng.random(m) < c.last_item_prob) | (t < 2), 1, 2)
        prev = hist[rows, t - back]
        cands = succ[prev]  # [m, k]
        ok = carried[store[:m, None], cands]
        ok &= ~(hist[:m, :t, None] == cands[:, None, :]).any(axis=1)
        w = ok * succ_w[None, :]
        has = use_seq & (w.sum(axis=1) > 0)
        nxt = np.empty(m, dtype=np.int64)
        hs = np.flatnonzero(has)
        if len(hs):
            pick = _row_categorical(np.cumsum(w[hs], axis=1), rng.random(len(hs)))
            nxt[hs] = cands[hs, pick]
        rest = np.flatnonzero(~has)
        if len(rest):
            nxt[rest] = taste_draw(rest, t)
        hist[:m, t] = nxt
        seq_step[:m, t] = has

    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n)
    return hist[inv], seq_step[inv]


def _timestamps(c: SyntheticConfig, rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """Strictly increasing unix seconds per customer, flattened in customer-major order."""
    total = int(lengths.sum())
    starts = c.start_timestamp + rng.uniform(0, 0.8 * c.period_days * 86400, size=len(lengths))
    brk = rng.random(total) < _BREAK_PROB
    gaps = np.where(
        brk, rng.exponential(_BREAK_GAP_S, size=total), rng.exponential(_SESSION_GAP_S, size=total)
    )
    gaps = np.floor(gaps).astype(np.int64) + 1  # >= 1 s keeps order strict
    ends = np.cumsum(lengths)
    seg_start = ends - lengths
    cum = np.cumsum(gaps)
    # Per-customer cumulative gaps, with the first event of each customer at its start time.
    offs = cum - np.repeat(cum[seg_start], lengths)
    return np.repeat(np.floor(starts).astype(np.int64), lengths) + offs


def _ids(prefix: str, n: int, min_width: int) -> np.ndarray:
    width = max(min_width, len(str(max(n - 1, 0))))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def generate(config: SyntheticConfig | None = None) -> SyntheticData:
    """Build catalog and per-store logs from ``config`` (default config if None); pure in the seed."""
    c = config or SyntheticConfig()
    rng = np.random.default_rng(c.seed)

    item_cat, pop = _item_structure(c, rng)
    succ = _successors(c, rng, item_cat, pop)

    store_mix = rng.dirichlet(np.full(c.n_categories, c.store_dirichlet_alpha), size=c.n_stores)
    # Smooth so every category keeps a little weight in every store (no hard zeros downstream).
    store_mix = 0.9 * store_mix + 0.1 / c.n_categories
    carried = _assortments(c, rng, store_mix, item_cat, pop)
    sizes = _store_sizes(c, rng)

    # Shelf sampler: groups are (store, category) pairs over the items each store carries.
    st_idx, it_idx = np.nonzero(carried)
    groups = st_idx * c.n_categories + item_cat[it_idx]
    shelf = _GroupedSampler(it_idx, groups, pop[it_idx], c.n_stores * c.n_categories)
    shelf_ok = (shelf.total.reshape(c.n_stores, c.n_categories) > 0).astype(np.float64)

    cust_store = np.repeat(np.arange(c.n_stores), sizes)
    alpha = c.taste_concentration * store_mix[cust_store]
    taste = _dirichlet_rows(rng, alpha) * shelf_ok[cust_store]
    # A taste that only covers categories the store lacks falls back to the store's shelf.
    dead = taste.sum(axis=1) <= 0
    taste[dead] = shelf_ok[cust_store[dead]]
    taste_cum = np.cumsum(taste, axis=1)

    lengths = _history_lengths(c, rng)
    hist, _ = _sequences(c, rng, lengths, cust_store, taste_cum, succ, carried, shelf)

    valid = np.arange(hist.shape[1])[None, :] < lengths[:, None]
    items_flat = hist[valid]  # row-major: customer-major, chronological
    events = rng.choice(3, size=len(items_flat), p=np.asarray(c.event_probs))
    ts = _timestamps(c, rng, lengths)

    item_ids = _ids("i", c.n_items, 6)
    sw = max(2, len(str(c.n_stores - 1)))
    cw = max(6, len(str(int(sizes.max()) - 1)))
    cat_names = np.array([f"category-{j:02d}" for j in range(c.n_categories)], dtype=object)
    titles = [f"Category {item_cat[i]} item {i}" for i in range(c.n_items)]
    catalog = Catalog.from_items(list(item_ids), titles=titles, categories=list(cat_names[item_cat]))

    event_names = np.array(EVENTS, dtype=object)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    cust_bounds = np.concatenate([[0], np.cumsum(sizes)])
    stores: dict[str, pd.DataFrame] = {}
    for s in range(c.n_stores):
        c0, c1 = int(cust_bounds[s]), int(cust_bounds[s + 1])
        r0, r1 = int(bounds[c0]), int(bounds[c1])
        local = np.array([f"s{s:0{sw}d}-c{j:0{cw}d}" for j in range(c1 - c0)], dtype=object)
        frame = pd.DataFrame(
            {
                "user_id": pd.array(np.repeat(local, lengths[c0:c1]), dtype="str"),
                "item_id": pd.array(item_ids[items_flat[r0:r1]], dtype="str"),
                "timestamp": ts[r0:r1].astype(np.int64),
                "event": pd.array(event_names[events[r0:r1]], dtype="str"),
            }
        )
        stores[f"store-{s:0{sw}d}"] = frame
    return SyntheticData(catalog=catalog, stores=stores, config=c)


# ----------------------------------------------------------------------------------------------
# writing


def write_synthetic(
    config: SyntheticConfig | None, out_dir: str | os.PathLike[str], fmt: str = "csv"
) -> Path:
    """Generate and write ``catalog.json``, ``stores/<store_id>.<fmt>`` and ``manifest.json``.

    Byte-identical for equal configs, so generated data can be cached and diffed.
    """
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"synthetic write: fmt={fmt!r} is invalid (csv or parquet)")
    c = config or SyntheticConfig()
    data = generate(c)
    out = Path(out_dir)
    (out / "stores").mkdir(parents=True, exist_ok=True)
    data.catalog.save(out / "catalog.json")
    store_info = []
    for sid, frame in data.stores.items():
        write_interactions(frame, out / "stores" / f"{sid}.{fmt}")
        store_info.append(
            {
                "store_id": sid,
                "file": f"stores/{sid}.{fmt}",
                "n_customers": int(frame["user_id"].nunique()),
                "n_interactions": len(frame),
            }
        )
    manifest = {
        "generator": "simulations.synthetic",
        "config": c.to_dict(),
        "catalog_hash": data.catalog.content_hash,
        "n_items": data.catalog.n_items,
        "format": fmt,
        "stores": store_info,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out
