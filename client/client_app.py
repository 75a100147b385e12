"""The store's Flower ClientApp (``[tool.flwr.app.components] clientapp``): wiring only.

A legacy ``NumPyClient`` (``client.federated.StoreClient``) behind the mod chain chosen in
``server.aggregation.client_mods`` (SecAgg+ by default). ``extra_mods`` go outermost: they see exactly what
leaves the store (tests use this to record every outgoing message and to inject failures).
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context
from flwr.client import Client
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from client.federated import StoreClient
from server.aggregation import client_mods
from shared.config import FederationConfig

__all__ = ["app", "make_client_app"]


def make_client_app(cfg: FederationConfig | None = None, extra_mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp for one store with ``cfg`` (default: parsed from the run config, node policy applied)."""

    def client_fn(context: Context) -> Client:
        config = cfg or FederationConfig.from_run_config(context.run_config)
        return StoreClient(config.with_node_policy(context.node_config), context).to_client()

    mods = client_mods(cfg.aggregation if cfg is not None else None)
    return ClientApp(client_fn=client_fn, mods=[*extra_mods, *mods])


app = make_client_app()
