"""The warm-start set on disk: exact round trip, atomic files, per-epoch orders."""

import numpy as np
import pytest

from pixel_jax.rollout.trajectory import Trajectory
from pixel_jax.sft.store import TrajectoryStore
from pixel_jax.sft.trainer import SFTBatch


def _batch(seed: int) -> SFTBatch:
    rng = np.random.default_rng(seed)
    rows, slots = 2, 6
    trajectory = Trajectory(
        tokens=rng.integers(0, 100, (rows, slots), dtype=np.int32), positions=rng.integers(0, 9, (3, rows, slots)),
        slot_valid=rng.random((rows, slots)) > 0.2, loss_mask=rng.random((rows, slots)) > 0.5,
        logprobs=rng.normal(size=(rows, slots)).astype(np.float32), temperature=np.ones((rows, slots), np.float32),
        crops=rng.integers(0, 255, (rows, 2, 28, 28, 3), dtype=np.uint8), n_crops=np.array([1, 2]),
        n_calls=np.array([1, 2]), n_errors=np.array([0, 1]), call_errors=np.array([[0, 0], [0, 3]]),
        call_boxes=rng.random((rows, 2, 4)).astype(np.float32), call_targets=np.array([[1, 0], [1, 2]]),
        finish=np.array([1, 1]), response_length=np.array([3, 4]), prompt_len=2)
    return SFTBatch(trajectory=trajectory, prompt_pixel_values=rng.random((rows, 4, 12)).astype(np.float32),
                    prompt_grid_thw=np.array([[1, 2, 2], [1, 2, 2]]))


def test_round_trip_is_exact_and_indices_are_contiguous(tmp_path):
    store = TrajectoryStore(tmp_path / "trajectories")
    assert len(store) == 0 and not store.complete
    for index in range(3):
        store.write(index, _batch(index))
    store.mark_complete()
    assert len(store) == 3 and store.complete
    restored, original = store.read(1), _batch(1)
    assert restored.trajectory.prompt_len == 2 and restored.trajectory.call_frames is None
    for name in ("tokens", "positions", "loss_mask", "logprobs", "crops", "call_boxes", "finish"):
        np.testing.assert_array_equal(getattr(restored.trajectory, name), getattr(original.trajectory, name))
    np.testing.assert_array_equal(restored.prompt_pixel_values, original.prompt_pixel_values)
    assert not list(store.directory.glob(".*"))  # no temporary file left


def test_epoch_orders_are_permutations_fixed_by_seed_and_epoch(tmp_path):
    store = TrajectoryStore(tmp_path)
    for index in range(8):
        store.write(index, _batch(0))
    orders = [store.epoch_order(epoch, seed=0) for epoch in range(3)]
    for order in orders:
        assert sorted(order) == list(range(8))
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(store.epoch_order(1, seed=0), orders[1])


def test_an_empty_synthesis_cannot_be_marked_complete(tmp_path):
    with pytest.raises(ValueError, match="stored no batch"):
        TrajectoryStore(tmp_path).mark_complete()
