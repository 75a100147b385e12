"""Scoring: a customer's hidden state against a precomputed item matrix, batched, with a partial top-k.

Per model version we keep the output layer as one ``[V, H]`` matrix and bias (the model is never rebuilt
per request; a swap replaces the whole ``ServingModel``). A batch of B requests is one ``encode`` of the B
left-padded histories, then one pass over the item matrix and ``torch.topk`` (a partial sort, O(V)).

At 100k items that pass is memory-bound, so on CPUs with fast bfloat16 matmuls it runs in two stages that
still return the exact float32 top-k:

1. coarse scores ``s~ = bf16(h) @ bf16(W).T + b`` (half the bytes, several times faster), and an upper bound
   ``U_j = s~_j + 4u * |h| * |w_j|`` on every exact score (u = 2^-8, bf16's unit roundoff: rounding h and w
   costs 2u + u^2, rounding the product u, float32 accumulation 64 * 2^-24 << u; Cauchy-Schwarz bounds
   sum |h_i w_ji| by |h| |w_j|);
2. the ``k + margin`` items with the largest ``U`` are rescored in float32; if the k-th exact score is at
   least the largest ``U`` left out, no other item can enter the top-k (a certificate, checked per request).
   A request without one (rare) is scored in full float32.

``naive_recommend`` is the benchmark's baseline: what a first implementation does per request (the model's
own ``score`` on a full-width window, a full sort, seen items filtered in Python).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from client.serving.hidden_cache import DEFAULT_CACHE_SIZE, HiddenCache
from shared.models import PAD, SequentialRecommender
from shared.serde import ModelMeta

COARSE_MODES = ("auto", "bf16", "off")
MARGIN = (
    32  # extra coarse candidates per request; more makes the certificate likelier and the rescoring dearer
)
# 4u, plus 2^-20 relative for float32 rounding in forming U itself (the bias addition, the product): generous.
_BOUND = 4 * 2.0**-8 + 2.0**-20
_FP32_SLACK = 2.0**-20
_SMALL_CATALOG = 4096  # below this the float32 pass is already cheap


@dataclass(frozen=True)
class ServingModel:
    """Everything one model version needs to answer requests, swapped as one object."""

    version: str
    meta: ModelMeta
    model: SequentialRecommender
    weight: torch.Tensor  # [V, H] float32 contiguous, V = n_items + 1
    bias: torch.Tensor  # [V], bias[PAD] = -inf so padding never ranks
    coarse_weight: torch.Tensor | None  # [V, H] bfloat16, or None for single-stage float32
    norms: torch.Tensor  # [V] |w_j|, for the coarse bound
    bias_upper: torch.Tensor  # [V] bias + float32 slack, for the coarse bound
    hidden_cache: HiddenCache = field(default_factory=lambda: HiddenCache(0))
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def build(
        cls,
        version: str,
        meta: ModelMeta,
        model: SequentialRecommender,
        coarse: str = "auto",
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> ServingModel:
        model.eval()
        weight, bias = model.item_matrix()
        weight = weight.detach().float().contiguous()
        bias = bias.detach().float().clone().contiguous()
        bias[PAD] = float("-inf")
        coarse_weight = weight.to(torch.bfloat16).contiguous() if _use_coarse(weight, coarse) else None
        bias_upper = bias + torch.nan_to_num(bias.abs(), posinf=0.0) * _FP32_SLACK  # PAD stays -inf
        return cls(
            version,
            meta,
            model,
            weight,
            bias,
            coarse_weight,
            weight.norm(dim=1),
            bias_upper,
            HiddenCache(cache_size),
        )

    @property
    def max_len(self) -> int:
        return self.model.config.max_len

    @property
    def kind(self) -> str:
        return self.model.config.kind


def _use_coarse(weight: torch.Tensor, mode: str) -> bool:
    """Two-stage bf16 scoring if asked, or (auto) for a large catalog where bf16 matmul is faster here."""
    if mode not in COARSE_MODES:
        raise ValueError(f"coarse={mode!r}; choose one of {COARSE_MODES}")
    if mode != "auto":
        return mode == "bf16"
    if weight.shape[0] < _SMALL_CATALOG:
        return False
    probe = torch.randn(4, weight.shape[1])
    half = weight.to(torch.bfloat16)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        full = best(lambda: probe @ weight.T)
        coarse = best(lambda: probe.bfloat16() @ half.T)
    return coarse * 1.3 < full  # CPUs without native bf16 emulate it slowly: keep float32 there


@dataclass(frozen=True)
class ScoreRequest:
    history: np.ndarray  # int64 model indexes, oldest first, non-empty
    exclude: np.ndarray  # int64 model indexes not to recommend
    k: int


@dataclass(frozen=True)
class ScoreResult:
    version: str
    items: np.ndarray  # int64 model indexes, best first
    scores: np.ndarray  # float32
    exact_fallback: bool = False  # the bf16 certificate failed and the full float32 pass ran


def left_padded(histories: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """``[B, T]`` with T = the longest trimmed history (not max_len: padding costs the encoder time)."""
    width = max(1, min(max_len, max(len(h) for h in histories)))
    out = np.zeros((len(histories), width), dtype=np.int64)
    for row, history in enumerate(histories):
        tail = history[-width:]
        if len(tail):
            out[row, width - len(tail) :] = tail
    return torch.from_numpy(out)


def _mask_excluded(scores: torch.Tensor, requests: Sequence[ScoreRequest]) -> None:
    rows = [np.full(len(r.exclude), i, dtype=np.int64) for i, r in enumerate(requests)]
    if sum(len(r) for r in rows):
        cols = np.concatenate([r.exclude for r in requests])
        scores[torch.from_numpy(np.concatenate(rows)), torch.from_numpy(cols)] = float("-inf")


def _results(
    version: str, requests: Sequence[ScoreRequest], scores: torch.Tensor, items: torch.Tensor, fallback: bool
) -> list[ScoreResult]:
    top_scores, top_items = scores.numpy(), items.numpy()
    out = []
    for i, request in enumerate(requests):
        row_scores, row_items = top_scores[i, : request.k], top_items[i, : request.k]
        keep = np.isfinite(row_scores)  # fewer than k candidates left after exclusion
        out.append(ScoreResult(version, row_items[keep].astype(np.int64), row_scores[keep], fallback))
    return out


def _exact(serving: ServingModel, hidden: torch.Tensor, requests: Sequence[ScoreRequest], fallback: bool):
    scores = torch.addmm(serving.bias, hidden, serving.weight.T)  # [B, V]
    _mask_excluded(scores, requests)
    k = min(max(r.k for r in requests), scores.shape[1])
    top_scores, top_items = torch.topk(scores, k, dim=1)  # partial sort, [B, k]
    return _results(serving.version, requests, top_scores, top_items, fallback)


def _two_stage(
    serving: ServingModel, hidden: torch.Tensor, requests: Sequence[ScoreRequest]
) -> list[ScoreResult]:
    assert serving.coarse_weight is not None
    upper = torch.mm(hidden.to(torch.bfloat16), serving.coarse_weight.T).float()  # [B, V]
    upper += serving.bias_upper
    upper.addcmul_(_BOUND * hidden.norm(dim=1, keepdim=True), serving.norms)  # U_j >= exact score j
    _mask_excluded(upper, requests)
    n_candidates = min(max(r.k for r in requests) + MARGIN, upper.shape[1] - 1)
    top_upper, candidates = torch.topk(upper, n_candidates + 1, dim=1)  # [B, C + 1]
    left_out = top_upper[:, -1]  # the largest bound not rescored
    candidates, top_upper = candidates[:, :-1], top_upper[:, :-1]
    exact = (
        torch.einsum("bh,bch->bc", hidden, serving.weight[candidates]) + serving.bias[candidates]
    )  # [B, C]
    exact = exact.masked_fill(top_upper == float("-inf"), float("-inf"))  # excluded items stay out
    order_scores, order = torch.sort(exact, dim=1, descending=True)
    ranked = torch.gather(candidates, 1, order)
    results = _results(serving.version, requests, order_scores, ranked, False)
    uncertain = []
    for i, request in enumerate(requests):
        kth = float(order_scores[i, request.k - 1]) if request.k <= order_scores.shape[1] else float("-inf")
        if not kth >= float(left_out[i]):
            uncertain.append(i)
    if uncertain:  # rare: rescoring the whole catalog in float32 settles it
        redo = _exact(serving, hidden[uncertain], [requests[i] for i in uncertain], fallback=True)
        for i, result in zip(uncertain, redo, strict=True):
            results[i] = result
    return results


def _encode(serving: ServingModel, windows: Sequence[np.ndarray]) -> torch.Tensor:
    """``[B, H]``: the encoder's state after each window's last item, one batched forward."""
    items = left_padded(windows, serving.max_len)
    return serving.model.encode(items)[:, -1, :].float()


def score_batch(serving: ServingModel, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
    """Exact float32 top-k for every request in one pass over the item matrix."""
    windows = [r.history[-serving.max_len :] for r in requests]
    with torch.inference_mode():
        hidden = serving.hidden_cache.lookup(windows, lambda todo: _encode(serving, todo)).contiguous()
        if serving.coarse_weight is None:
            return _exact(serving, hidden, requests, fallback=False)
        return _two_stage(serving, hidden, requests)


def naive_recommend(serving: ServingModel, request: ScoreRequest) -> ScoreResult:
    """Baseline: full-width forward through the model's own scorer, full sort, Python filtering."""
    window = np.zeros(serving.max_len, dtype=np.int64)
    tail = request.history[-serving.max_len :]
    window[serving.max_len - len(tail) :] = tail
    with torch.no_grad():
        scores = serving.model.score(torch.from_numpy(window).unsqueeze(0))[0]  # [V]
    order = torch.argsort(scores, descending=True).numpy()
    excluded = set(request.exclude.tolist())
    chosen = []
    for index in order.tolist():
        if index == PAD or index in excluded:
            continue
        chosen.append(index)
        if len(chosen) == request.k:
            break
    items = np.asarray(chosen, dtype=np.int64)
    return ScoreResult(serving.version, items, scores.numpy()[items])
