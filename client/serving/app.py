"""The serving API: ``create_app(state_dir, api_key)`` builds a FastAPI app for one store.

Endpoints (all but ``/health`` and the page shell require ``Authorization: Bearer <key>``):

- ``GET  /health``                                   liveness, open
- ``GET  /ready``                                    200 when a model is being served, else 503
- ``GET  /v1/customers/{customer_id}/recommendations?n=10&exclude_seen=true``  top-N for a known customer
- ``GET  /v1/customers/{customer_id}/history?limit=20``                         their recent items
- ``POST /v1/sessions/recommendations``              top-N for an anonymous session (body: recent item ids)
- ``POST /v1/events``                                record view / cart / purchase events (fsync, then 201)
- ``GET  /v1/model``                                 model version being served, CURRENT, last refusal
- ``GET  /v1/status``                                model + privacy spend vs budget (the page reads this)
- ``GET  /metrics``                                  Prometheus text format
- ``GET  /openapi.json``                             this API's OpenAPI schema
- ``GET  /``                                         the staff web page (a static shell; data needs the key)

The shared state (catalog, histories, model, event writer) lives in ``client.serving.services``; this module
holds the routes, the error replies and the factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from client.serving.auth import bearer_dependency
from client.serving.config import MAX_ID_LENGTH, MAX_N, ServeConfig
from client.serving.event_log import Row
from client.serving.limits import BodyLimitMiddleware
from client.serving.metrics import MetricsMiddleware
from client.serving.page import page_html
from client.serving.schemas import (
    ID_PATTERN,
    CustomerHistory,
    ErrorBody,
    EventBatch,
    EventsRecorded,
    Health,
    HistoryItem,
    ModelStatus,
    Readiness,
    Recommendations,
    SessionRequest,
    StoreStatus,
    ValidationErrorBody,
)
from client.serving.services import EventWrite, Services

log = logging.getLogger(__name__)
API_VERSION = "1"

_COMMON_RESPONSES: dict[int | str, dict] = {
    400: {"model": ErrorBody, "description": "unreadable request (body not UTF-8 JSON, bad Content-Length)"},
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    413: {"model": ErrorBody, "description": "request body too large"},
}
_VALIDATION = {422: {"model": ValidationErrorBody, "description": "invalid request"}}


def _json(body: BaseModel) -> Response:
    """Serialize a response model once: returning the model would make FastAPI validate it a second time
    against ``response_model`` (which still documents the schema) on the hot path."""
    return Response(body.model_dump_json(), media_type="application/json")


# ------------------------------------------------------------------------------------------ errors


def _validation_reply(request: Request, exc: Exception) -> JSONResponse:
    """422 with loc/msg/type only: no echo of the (possibly huge) input, and a plain word for bad JSON."""
    problems = []
    for error in exc.errors():  # type: ignore[attr-defined]
        message = error.get("msg", "invalid value")
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error")
            message = f"malformed JSON body: {reason}" if reason else "malformed JSON body"
        problems.append(
            {
                "loc": [str(p) if not isinstance(p, int) else p for p in error.get("loc", ())],
                "msg": message,
                "type": error.get("type", "value_error"),
            }
        )
    return JSONResponse({"detail": problems}, status_code=422)


def _http_reply(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def _internal_reply(request: Request, exc: Exception) -> JSONResponse:
    # The trace goes to the server log only; the client learns nothing about the internals.
    log.error("unhandled error on %s", request.scope.get("route", request.url.path), exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


# ------------------------------------------------------------------------------------------ routes


class _AnyText(Convertor[str]):
    """Matches any characters, '/' and newlines included, so every customer id reaches validation (a 422
    that says what is wrong) instead of falling through routing (a bare 404)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("customer", _AnyText())
CustomerIdParam = PathParam(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)


def _api_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
    def ready() -> Response | Readiness:
        version = services.holder.version
        if version is None:
            body = Readiness(ready=False, reason="no valid model version in the store's model dir")
            return JSONResponse(body.model_dump(), status_code=503)
        return Readiness(ready=True, model_version=version)

    @router.get(
        "/v1/customers/{customer_id:customer}/recommendations",
        response_model=Recommendations,
        responses=_VALIDATION,
    )
    async def customer_recommendations(
        customer_id: str = CustomerIdParam,
        n: int = Query(10, ge=1, le=MAX_N, description="how many items"),
        exclude_seen: bool = Query(True, description="leave out items the customer already interacted with"),
    ) -> Response:
        """Top-N for a known customer from their history (log + live events); unknown -> popularity."""
        snap = services.histories.snapshot(customer_id)
        history = snap.recent if snap is not None else np.zeros(0, dtype=np.int64)
        exclude = snap.seen if (snap is not None and exclude_seen) else np.zeros(0, dtype=np.int64)
        strategy, version, items = await services.recommend(history, exclude, n)
        return _json(
            Recommendations(
                strategy=strategy,
                model_version=version,
                customer_id=customer_id,
                history_length=len(history),
                items=items,
            )
        )

    @router.get(
        "/v1/customers/{customer_id:customer}/history", response_model=CustomerHistory, responses=_VALIDATION
    )
    def customer_history(
        customer_id: str = CustomerIdParam, limit: int = Query(20, ge=1, le=200)
    ) -> CustomerHistory:
        """The customer's most recent items (what the model sees), newest first."""
        snap = services.histories.snapshot(customer_id)
        if snap is None:
            return CustomerHistory(customer_id=customer_id, known=False, items=[], total_seen=0)
        picked = range(len(snap.recent) - 1, max(-1, len(snap.recent) - 1 - limit), -1)
        items = [
            HistoryItem(
                item_id=services.catalog.item_ids[int(snap.recent[i]) - 1],
                title=services.catalog.title(int(snap.recent[i])),
                event=snap.events[i],
                timestamp=int(snap.timestamps[i]),
            )
            for i in picked
        ]
        return CustomerHistory(customer_id=customer_id, known=True, items=items, total_seen=len(snap.seen))

    @router.post("/v1/sessions/recommendations", response_model=Recommendations, responses=_VALIDATION)
    async def session_recommendations(body: SessionRequest) -> Response:
        """Top-N for an anonymous session from the item ids it carries; unknown ids ignored and reported."""
        history, unknown = services.encode(body.items)
        exclude = history if body.exclude_seen else np.zeros(0, dtype=np.int64)  # repeats are harmless
        strategy, version, items = await services.recommend(history, exclude, body.n)
        return _json(
            Recommendations(
                strategy=strategy,
                model_version=version,
                history_length=len(history),
                items=items,
                unknown_items=unknown,
            )
        )

    @router.post(
        "/v1/events",
        response_model=EventsRecorded,
        status_code=201,
        responses={**_VALIDATION, 503: {"model": ErrorBody, "description": "event log not writable"}},
    )
    async def record_events(body: EventBatch) -> Response | EventsRecorded:
        """Append events to the store's log (fsynced before 201); the next recommendation reflects them."""
        now = int(time.time())
        index_of = services.index_of
        codes = [index_of.get(e.item_id, 0) for e in body.events]
        rows: list[Row] = []
        known = []
        for event, code in zip(body.events, codes, strict=True):
            stamp = event.timestamp if event.timestamp is not None else now
            rows.append((event.customer_id, event.item_id, stamp, event.event))
            if code:
                known.append((event.customer_id, code, stamp, event.event))
        # Unknown items are still logged (the store's log is its record; the catalog may grow), but they
        # cannot enter a history the model reads.
        unknown = list(dict.fromkeys(e.item_id for e, c in zip(body.events, codes, strict=True) if not c))
        services.metrics.unknown_items.inc(len(unknown))
        try:
            await asyncio.wrap_future(services.writer.submit(EventWrite(rows, known)))
        except OSError as err:
            log.error("event log write failed: %s", err)
            return JSONResponse({"detail": "event log is not writable; events not recorded"}, status_code=503)
        return EventsRecorded(recorded=len(rows), applied=len(known), unknown_items=unknown)

    @router.get("/v1/model", response_model=ModelStatus)
    def model_status() -> ModelStatus:
        """The version being served, the version CURRENT names, and the last refused version."""
        return services.model_status()

    @router.get("/v1/status", response_model=StoreStatus)
    def status() -> StoreStatus:
        """What the staff page shows: model, customers in memory, privacy spend vs budget."""
        return StoreStatus(
            model=services.model_status(),
            customers=len(services.histories),
            items=services.catalog.n_items,
            privacy=services.ledger.summary(),
        )

    @router.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}
        },
    )
    def metrics() -> Response:
        """Prometheus metrics: request counts, latency histogram, model version, swaps, events."""
        return Response(services.metrics.render(), media_type=services.metrics.content_type)

    return router


def create_app(state_dir: str | os.PathLike[str], api_key: str, **options: object) -> FastAPI:
    """The serving app for the store at ``state_dir``; ``options`` are ``ServeConfig`` fields."""
    config = ServeConfig(state_dir=Path(state_dir), **options)  # type: ignore[arg-type]
    services = Services(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.start()
        try:
            yield
        finally:
            services.stop()

    app = FastAPI(
        title="fedrec store serving",
        version=API_VERSION,
        description="Personalized top-N for one partner store; every endpoint but /health needs the API key.",
        openapi_url=None,  # published below, behind the key
        docs_url=None,  # Swagger UI loads its assets from a CDN, which a store server may not reach
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_exception_handler(RequestValidationError, _validation_reply)
    app.add_exception_handler(StarletteHTTPException, _http_reply)
    app.add_exception_handler(Exception, _internal_reply)

    @app.get("/health", response_model=Health)
    def health() -> Health:
        """Liveness: the process answers. Open, so a supervisor needs no key."""
        return Health(status="ok")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(
            page_html(),
            headers={
                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    protected = [Depends(bearer_dependency(api_key))]
    app.include_router(_api_router(services), dependencies=protected, responses=_COMMON_RESPONSES)

    @app.get("/openapi.json", include_in_schema=False, dependencies=protected)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    # Outermost first: metrics see every reply, including 413s from the size limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    return app
