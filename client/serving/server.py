"""Running the app under uvicorn: in the foreground (CLI, benchmark) or in a thread (tests).

Binds 127.0.0.1 unless told otherwise: the service sits inside the store's trust boundary. Access logs are
off because request paths carry customer ids (personal data) and logging every request costs throughput.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

DEFAULT_HOST = "127.0.0.1"


def bind(host: str = DEFAULT_HOST, port: int = 0) -> socket.socket:
    """A listening socket (``port=0``: a free one); pass it to the server so the port is known up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: FastAPI, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        server_header=False,
        lifespan="on",
        ws="none",  # no websocket endpoints: do not load a websocket stack at all
        timeout_keep_alive=30,
        limit_concurrency=1024,  # beyond this uvicorn answers 503 at once instead of queueing without bound
        h11_max_incomplete_event_size=16 * 1024,  # header size cap (the body cap is the app's)
    )


def serve_forever(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    uvicorn.Server(uvicorn_config(app, log_level)).run(sockets=[sock])


class ServerThread:
    """``with ServerThread(app) as base_url:`` runs a real uvicorn server on a free loopback port."""

    def __init__(self, app: FastAPI, host: str = DEFAULT_HOST) -> None:
        self.sock = bind(host, 0)
        self.port = self.sock.getsockname()[1]
        self.base_url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self.base_url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self.sock.close()
