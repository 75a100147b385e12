"""Model files round-trip exactly and refuse anything corrupt, half-written or for another catalog."""

from __future__ import annotations

import json

import pytest
import torch

from shared.errors import CatalogMismatchError, IncompatibleModelError
from shared.models import ModelConfig, build_model
from shared.serde import META, WEIGHTS, load_model, save_model


@pytest.fixture(params=["dnn", "rnn", "transformer"])
def model(request):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind=request.param, dim=16, max_len=8, n_heads=2), 30).eval()


def test_round_trip_gives_identical_scores(tmp_path, model):
    meta = save_model(model, tmp_path / "v1", catalog_hash="abc", origin="global", round_id=3)
    loaded, read = load_model(tmp_path / "v1", expected_catalog_hash="abc")
    history = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    torch.testing.assert_close(loaded.score(history), model.score(history))
    assert read == meta and read.round == 3 and read.origin == "global"
    assert not list(tmp_path.glob(".v1.*")), "no temp directory left behind"


def test_versions_are_immutable(tmp_path, model):
    save_model(model, tmp_path / "v1", catalog_hash="abc")
    with pytest.raises(FileExistsError):
        save_model(model, tmp_path / "v1", catalog_hash="abc")


def test_catalog_mismatch_is_refused(tmp_path, model):
    save_model(model, tmp_path / "v1", catalog_hash="abc")
    with pytest.raises(CatalogMismatchError):
        load_model(tmp_path / "v1", expected_catalog_hash="def")


def test_truncated_weights_are_refused(tmp_path, model):
    save_model(model, tmp_path / "v1", catalog_hash="abc")
    weights = tmp_path / "v1" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(IncompatibleModelError, match="checksum"):
        load_model(tmp_path / "v1")


def test_weights_for_another_shape_are_refused(tmp_path, model):
    save_model(model, tmp_path / "v1", catalog_hash="abc")
    meta_path = tmp_path / "v1" / META
    meta = json.loads(meta_path.read_text())
    meta["n_items"] = 31
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IncompatibleModelError, match="do not fit"):
        load_model(tmp_path / "v1")


def test_garbage_meta_is_refused(tmp_path, model):
    save_model(model, tmp_path / "v1", catalog_hash="abc")
    (tmp_path / "v1" / META).write_text("{not json")
    with pytest.raises(IncompatibleModelError, match="unreadable"):
        load_model(tmp_path / "v1")
