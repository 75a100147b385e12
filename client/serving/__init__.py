"""Store-local serving: a FastAPI service answering top-N requests from the store's current local model.

Modules, one job each: ``config`` (settings), ``state`` (where things live in the store state dir),
``auth`` (API key), ``limits`` (request size), ``metrics`` (Prometheus), ``histories`` (customers' recent
items and popularity), ``event_log`` (durable live events), ``batching`` (one worker thread draining a
queue), ``scoring`` (precomputed item matrix, batched top-k), ``model_holder`` (atomic swap, watcher),
``ledger_view`` (privacy spend for the page), ``page`` (staff web page), ``services`` (what the routes
share), ``app`` (routes and factory), ``server``
(uvicorn on loopback).
"""

from client.serving.app import create_app
from client.serving.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
