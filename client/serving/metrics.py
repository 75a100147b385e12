"""Prometheus metrics: request counts and latency by route template, recommendations by strategy, model state.

Each app has its own ``CollectorRegistry`` so several apps (tests, benchmarks) never share counters. Labels
use the route *template* (``/v1/customers/{customer_id}/recommendations``), never the raw path: customer ids
are personal data, and unbounded label values would also blow up the metric store.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Latency buckets around the 10 ms target: fine below it, coarse above.
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fedrec_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "fedrec_http_request_duration_seconds",
            "Request latency by route",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.recommendations = Counter(
            "fedrec_recommendations", "Recommendation lists served by strategy", ["strategy"], registry=r
        )
        self.events = Counter("fedrec_events", "Events durably recorded", registry=r)
        self.unknown_items = Counter(
            "fedrec_unknown_items", "Item ids not in the catalog (ignored)", registry=r
        )
        self.batch_size = Histogram(
            "fedrec_scoring_batch_size",
            "Requests per scoring pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.model_info = Gauge(
            "fedrec_model_info",
            "The model version being served (value 1)",
            ["version", "kind", "origin"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "fedrec_model_loaded_timestamp_seconds", "When the served model was loaded", registry=r
        )
        self.exact_fallbacks = Counter(
            "fedrec_scoring_exact_fallbacks",
            "Requests whose bf16 certificate failed and were rescored in full float32",
            registry=r,
        )
        self.encoder_cache = Counter(
            "fedrec_encoder_cache",
            "Scored histories whose encoder output was cached or computed",
            ["result"],
            registry=r,
        )
        self.swaps = Counter("fedrec_model_swaps", "Model versions swapped in", registry=r)
        self.swap_failures = Counter("fedrec_model_swap_failures", "New model versions refused", registry=r)
        self.customers = Gauge("fedrec_customers_in_memory", "Customers with a history in memory", registry=r)

    def model_changed(self, version: str, kind: str, origin: str, loaded_at: float) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, kind=kind, origin=origin).set(1)
        self.model_loaded.set(loaded_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request after routing, so the route template is known."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or "unmatched"
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)
