"""The store's mod chain: SecAgg+ for every training message, plain updates only where the store allows it."""

from __future__ import annotations

import logging

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.supercore.task_identity import TaskIdentity

import server.aggregation
from server.aggregation import client_mods
from shared.config import AggregationConfig


def message(secure: bool) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    content = RecordDict({"fitins.config": ConfigRecord({"round": 1})})
    if secure:
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({"stage": "unknown-stage"})
    msg = Message(content, dst_node_id=7, message_type=MessageType.TRAIN, group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def echo(msg: Message, ctx: Context) -> Message:
    return Message(RecordDict(), reply_to=msg)


def test_one_mod_and_secagg_handles_protocol_messages():
    (mod,) = client_mods()
    with pytest.raises(ValueError, match="stage"):  # reached Flower's secaggplus_mod, which checks the stage
        mod(message(secure=True), context({"partition-id": 0}), echo)


def test_plain_request_is_refused_without_the_flag():
    (mod,) = client_mods(AggregationConfig())
    with pytest.raises(PermissionError, match="secure aggregation"):
        mod(message(secure=False), context({"partition-id": 0}), echo)


def test_simulated_store_follows_the_auditors_flag_with_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(server.aggregation, "_warned_plain", [])  # warned once per process
    (mod,) = client_mods(AggregationConfig(insecure_plain=True))
    with caplog.at_level(logging.WARNING, logger="server.aggregation"):
        reply = mod(message(secure=False), context({"partition-id": 0}), echo)
    assert not reply.has_error() and any("INSECURE" in r.getMessage() for r in caplog.records)


def test_a_deployed_store_decides_for_itself():
    (mod,) = client_mods(AggregationConfig(insecure_plain=True))  # the operator asks for plain...
    with pytest.raises(PermissionError):  # ...but this store did not allow it in its node config
        mod(message(secure=False), context({"store-dir": "/tmp/x"}), echo)
    allowed = context({"store-dir": "/tmp/x", "allow-plain-aggregation": "true"})
    assert not mod(message(secure=False), allowed, echo).has_error()
