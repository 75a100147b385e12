"""The operator's Flower ServerApp (``[tool.flwr.app.components] serverapp``): wiring only.

``flwr run .`` loads ``app``, which parses the run config once (``shared.config``) and runs
``server.rounds.Federation``. ``fedrec-sim run`` builds its own app with ``make_server_app(cfg, hooks)`` to
get progress callbacks in-process (Flower's in-process simulation passes an empty run config).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.rounds import Federation, RunHooks
from shared.config import FederationConfig

__all__ = ["app", "make_server_app"]


def make_server_app(cfg: FederationConfig | None = None, hooks: RunHooks | None = None) -> ServerApp:
    """A ServerApp running the federation with ``cfg`` (default: parsed from the run config)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = cfg or FederationConfig.from_run_config(context.run_config)
        Federation(config, hooks).run(grid, context)

    return server_app


app = make_server_app()
