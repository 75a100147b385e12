"""Update bounding, weights and the re-send cache (plain functions)."""

from __future__ import annotations

import numpy as np

from client.update import CachedUpdate, arrays_sha256, bound_delta, compute_delta, store_weight


def test_delta_is_bounded_coordinatewise_and_clipping_is_reported():
    local = [np.array([0.0, 0.3, -2.0, 5.0], np.float32)]
    global_ = [np.zeros(4, np.float32)]
    bounded = bound_delta(compute_delta(local, global_), 1.0)
    np.testing.assert_array_equal(bounded.arrays[0], np.array([0.0, 0.3, -1.0, 1.0], np.float32))
    assert bounded.clipped_fraction == 0.5 and bounded.max_abs == 5.0


def test_weight_is_customers_capped_at_max_weight():
    assert store_weight(120, 1000.0) == 120
    assert store_weight(5000, 1000.0) == 1000


def test_cached_update_round_trips_and_refuses_a_torn_pair(tmp_path):
    arrays = [np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), np.ones(2, np.float32)]
    CachedUpdate(3, arrays_sha256(arrays), 17, {"status": "trained"}, arrays).save(tmp_path)
    back = CachedUpdate.load(tmp_path)
    assert back.round_id == 3 and back.weight == 17 and back.global_sha256 == arrays_sha256(arrays)
    for a, b in zip(back.arrays, arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "last-update.safetensors").write_bytes(b"other")  # crash between the two writes
    assert CachedUpdate.load(tmp_path) is None
    assert CachedUpdate.load(tmp_path / "missing") is None


def test_fingerprint_sees_every_byte_and_shape():
    a = [np.zeros((2, 3), np.float32)]
    assert arrays_sha256(a) != arrays_sha256([np.zeros((3, 2), np.float32)])
    b = [a[0].copy()]
    b[0][1, 2] = 1e-30
    assert arrays_sha256(a) != arrays_sha256(b)
