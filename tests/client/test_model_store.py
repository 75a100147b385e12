"""Model versions in a store's state dir: publish, CURRENT/HISTORY, verification and rollback."""

from __future__ import annotations

import json

import pytest
import torch

from client import model_store
from shared.errors import CatalogMismatchError, FedrecError, IncompatibleModelError
from shared.models import ModelConfig, build_model
from shared.serde import WEIGHTS

HASH = "a" * 64
CONFIG = ModelConfig(kind="dnn", dim=8, max_len=5, mlp_hidden=8)


def publish(state, seed: int = 0, **kwargs) -> str:
    torch.manual_seed(seed)
    return model_store.publish(state, build_model(CONFIG, 20), catalog_hash=HASH, **kwargs)


def corrupt(state, name: str) -> None:
    path = model_store.models_dir(state) / name / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_publish_names_versions_in_order_and_switches_current(tmp_path):
    assert model_store.read_current(tmp_path) is None and model_store.list_versions(tmp_path) == []
    assert [publish(tmp_path, s) for s in range(3)] == ["v000001", "v000002", "v000003"]
    assert model_store.read_current(tmp_path) == "v000003"
    assert [v.name for v in model_store.list_versions(tmp_path)] == ["v000001", "v000002", "v000003"]
    assert model_store.active_stack(tmp_path) == ["v000001", "v000002", "v000003"]
    entries = model_store.read_history(tmp_path)
    assert [(e.action, e.version, e.previous) for e in entries][-2:] == [
        ("stage", "v000003", "v000002"),
        ("activate", "v000003", "v000002"),
    ]


def test_publish_without_switching_leaves_current(tmp_path):
    publish(tmp_path)
    staged = publish(tmp_path, 1, make_current=False)
    assert model_store.read_current(tmp_path) == "v000001"
    assert staged in model_store.mentioned_versions(tmp_path)  # staged: a server must not promote it
    assert model_store.active_stack(tmp_path) == ["v000001"]
    model_store.activate(tmp_path, staged)
    assert model_store.active_stack(tmp_path) == ["v000001", "v000002"]


def test_rollback_walks_back_and_remembers(tmp_path):
    for seed in range(3):
        publish(tmp_path, seed)
    assert model_store.rollback(tmp_path) == "v000002"
    assert model_store.read_current(tmp_path) == "v000002"
    assert model_store.rollback(tmp_path) == "v000001"
    with pytest.raises(FedrecError, match="no previous valid model version"):
        model_store.rollback(tmp_path)
    assert model_store.mentioned_versions(tmp_path) == {"v000001", "v000002", "v000003"}
    assert model_store.rollback(tmp_path, to="v000003") == "v000003"
    assert model_store.rollback(tmp_path) == "v000001"  # --to pushed v000003 on top of v000001


def test_rollback_skips_versions_that_no_longer_verify(tmp_path):
    for seed in range(3):
        publish(tmp_path, seed)
    corrupt(tmp_path, "v000002")
    assert model_store.rollback(tmp_path) == "v000001"


def test_activate_refuses_corrupt_or_foreign_versions_and_changes_nothing(tmp_path):
    publish(tmp_path)
    publish(tmp_path, 1, make_current=False)
    corrupt(tmp_path, "v000002")
    with pytest.raises(IncompatibleModelError, match="checksum"):
        model_store.activate(tmp_path, "v000002")
    with pytest.raises(CatalogMismatchError):
        model_store.activate(tmp_path, "v000001", expected_catalog_hash="b" * 64)
    with pytest.raises(IncompatibleModelError, match="not found"):
        model_store.activate(tmp_path, "v999999")
    with pytest.raises(IncompatibleModelError):
        model_store.activate(tmp_path, "../elsewhere")
    assert model_store.read_current(tmp_path) == "v000001"


def test_torn_history_line_and_hand_written_pointer_are_tolerated(tmp_path):
    publish(tmp_path)
    publish(tmp_path, 1, make_current=False)
    with open(model_store.models_dir(tmp_path) / model_store.HISTORY, "a") as fh:
        fh.write('{"action": "activ')  # a crash mid-append
    (model_store.models_dir(tmp_path) / model_store.CURRENT).write_text("v000002\n")
    assert model_store.active_stack(tmp_path) == ["v000001", "v000002"]
    assert model_store.rollback(tmp_path) == "v000001"


def test_unreadable_meta_is_listed_with_its_reason(tmp_path):
    publish(tmp_path)
    broken = model_store.models_dir(tmp_path) / "half"
    broken.mkdir()
    (broken / "meta.json").write_text(json.dumps({"format": "something-else"}))
    listing = {v.name: v for v in model_store.list_versions(tmp_path)}
    assert listing["v000001"].error is None and listing["half"].meta is None and listing["half"].error
