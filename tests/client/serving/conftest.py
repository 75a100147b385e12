"""Fixtures for the serving tests: a small synthetic store on disk and a real uvicorn server on loopback."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import torch

from client import model_store
from client.serving import create_app
from client.serving.server import ServerThread
from shared.data.catalog import Catalog
from shared.data.schema import write_interactions
from shared.models import ModelConfig, SequentialRecommender, build_model
from simulations.synthetic import SyntheticConfig, generate

API_KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SMALL = ModelConfig(kind="transformer", dim=16, max_len=20, n_layers=1, n_heads=1, mlp_hidden=32)


@dataclass
class Store:
    root: Path
    catalog: Catalog
    interactions: pd.DataFrame

    def customer_items(self, customer: str) -> list[str]:
        rows = self.interactions[self.interactions["user_id"] == customer]
        return rows.sort_values("timestamp", kind="stable")["item_id"].tolist()

    def publish(self, seed: int, config: ModelConfig = SMALL, **kwargs: object) -> str:
        return model_store.publish(
            self.root,
            make_model(self.catalog, seed, config),
            catalog_hash=self.catalog.content_hash,
            **kwargs,
        )


def make_model(catalog: Catalog, seed: int, config: ModelConfig = SMALL) -> SequentialRecommender:
    torch.manual_seed(seed)
    model = build_model(config, catalog.n_items)
    with torch.no_grad():  # larger output weights than the init's so rankings differ clearly between seeds
        model.output.weight.normal_(std=1.0)
    return model.eval()


@pytest.fixture(scope="session")
def synthetic_data():
    return generate(SyntheticConfig(n_stores=2, n_items=300, n_customers=200, min_store_customers=30, seed=7))


@pytest.fixture
def make_store(tmp_path: Path, synthetic_data) -> Callable[..., Store]:
    def build(name: str = "store", with_model: bool = True) -> Store:
        root = tmp_path / name
        root.mkdir()
        frame = synthetic_data.stores["store-00"]
        synthetic_data.catalog.save(root / "catalog.json")
        write_interactions(frame, root / "interactions.csv")
        store = Store(root, synthetic_data.catalog, frame)
        if with_model:
            store.publish(seed=0)
        return store

    return build


@dataclass
class Running:
    url: str
    app: object
    client: httpx.Client
    store: Store

    @property
    def services(self):
        return self.app.state.services


@pytest.fixture
def serve(make_store) -> Iterator[Callable[..., Running]]:
    """``serve(**options)`` starts a real server for a fresh store; all are stopped at teardown."""
    stack: list[tuple[ServerThread, httpx.Client]] = []

    def start(store: Store | None = None, **options: object) -> Running:
        store = store or make_store()
        options.setdefault("poll_seconds", 0.05)
        app = create_app(store.root, API_KEY, **options)
        thread = ServerThread(app)
        url = thread.__enter__()
        client = httpx.Client(base_url=url, headers=AUTH, timeout=30)
        stack.append((thread, client))
        return Running(url, app, client, store)

    yield start
    for thread, client in reversed(stack):
        client.close()
        thread.__exit__(None, None, None)


@pytest.fixture
def api_key() -> str:
    return API_KEY


@pytest.fixture(autouse=True)
def _quiet_uvicorn() -> None:
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
