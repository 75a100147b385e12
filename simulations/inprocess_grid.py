"""A Flower ``Grid`` that delivers messages to ClientApps in this process, one store after another.

For fast, deterministic tests and small simulations without Ray: the ServerApp code is unchanged (it only
sees a ``Grid``), every message and reply is serialized through Flower's protobuf form exactly as on the wire,
each virtual store keeps its own ``Context`` across rounds (updated only when its ClientApp succeeds, as the
Simulation Engine does), and a ClientApp exception becomes an error reply. Stores run sequentially, so a
timeout cannot cut a slow store short here; use the Ray engine to test stragglers.
"""

from __future__ import annotations

import copy
import itertools
import traceback
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid", "run_inprocess"]


def _wire(message: Message) -> Message:
    """Round-trip through protobuf: what the other side gets is a copy, as over the network."""
    return message_from_proto(message_to_proto(message))


class InProcessGrid(Grid):
    """``n`` virtual stores (node configs ``partition-id`` / ``num-partitions`` unless given) in one
    process."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int | None = None,
        node_configs: list[Mapping[str, Any]] | None = None,
        run_config: Mapping[str, Any] | None = None,
        run_id: int = 1,
    ) -> None:
        if node_configs is None:
            if not num_nodes:
                raise ValueError("give num_nodes or node_configs")
            node_configs = [{"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)]
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        ids = itertools.count(1_000_001)
        self.contexts: dict[int, Context] = {
            nid: Context(
                run_id=run_id,
                node_id=nid,
                node_config=dict(cfg),
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for nid, cfg in zip(ids, node_configs, strict=False)
        }
        self._pending: dict[str, Message] = {}

    # --- Grid interface -----------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            reply = self._deliver(message)
            self._pending[reply.metadata.reply_to_message_id] = reply
            ids.append(reply.metadata.reply_to_message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._pending.pop(i) for i in list(message_ids) if i in self._pending]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return [self._deliver(message) for message in messages]

    # --- delivery -------------------------------------------------------------------------------------
    def _deliver(self, message: Message) -> Message:
        md = message.metadata
        md.__dict__["_message_id"] = str(uuid4())
        md.__dict__["_run_id"] = self._run.run_id
        md.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
        incoming = _wire(message)
        context = self.contexts[md.dst_node_id]
        trial = copy.deepcopy(context)
        try:
            reply = self.client_app(incoming, trial)
            self.contexts[md.dst_node_id] = trial  # state survives only a successful call
        except Exception as ex:
            reason = f"{type(ex).__name__}: {ex}\n{traceback.format_exc(limit=3)}"
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=incoming
            )
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return _wire(reply)


def run_inprocess(
    server_app, client_app: ClientApp, num_nodes: int, run_config: Mapping[str, Any] | None = None
):
    """Run ``server_app``'s main function against ``num_nodes`` in-process stores; returns the grid."""
    grid = InProcessGrid(client_app, num_nodes=num_nodes, run_config=run_config)
    # Messages take their run and sender from the process's task identity (set by Flower's runtimes).
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = grid.run.run_id, SUPERLINK_NODE_ID, 1
    context = Context(
        run_id=grid.run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=dict(run_config or {}),
    )
    server_app(grid, context)
    return grid
