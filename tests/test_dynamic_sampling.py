"""Dynamic sampling: informative groups first, in sampling order; fillers carry no loss."""

import numpy as np
import pytest

from pixel_jax.rl import dynamic_sampling
from pixel_jax.rollout.trajectory import Trajectory

G, S = 2, 5


def _rollout(shaped: list[float], tag: int, valid=None) -> dynamic_sampling.Rollout:
    """Q = len(shaped) // G prompts; every array of row r holds tag·100 + r so rows can be traced."""
    rows = len(shaped)
    ids = tag * 100 + np.arange(rows)
    zeros = np.zeros(rows, np.int32)
    trajectory = Trajectory(
        tokens=np.repeat(ids[:, None], S, axis=1), positions=np.broadcast_to(ids[None, :, None], (3, rows, S)).copy(),
        slot_valid=np.ones((rows, S), bool), loss_mask=np.ones((rows, S), bool), logprobs=np.zeros((rows, S)),
        temperature=np.ones((rows, S)), crops=np.zeros((rows, 1, 28, 28, 3), np.uint8), n_crops=zeros,
        n_calls=zeros, n_errors=zeros, call_errors=zeros[:, None], call_boxes=np.zeros((rows, 1, 4)),
        call_targets=zeros[:, None], finish=zeros, response_length=zeros + S, prompt_len=2)
    prompts = rows // G
    return dynamic_sampling.Rollout(
        trajectory=trajectory, task_reward=ids.astype(np.float32), shaped_reward=np.asarray(shaped, np.float32),
        prompt_pixel_values=np.arange(prompts, dtype=np.float32)[:, None, None] + tag * 100 + np.zeros((1, 4, 3)),
        prompt_grid_thw=np.tile([[1, 2, 2]], (prompts, 1)),
        valid=np.ones(prompts, bool) if valid is None else np.asarray(valid))


def test_informative_groups_have_unequal_shaped_rewards():
    rollout = _rollout([1, 1, 0, 1, 0.5, 0.5], tag=0, valid=[True, True, False])
    np.testing.assert_array_equal(rollout.informative(), [False, True, False])


def test_assemble_takes_informative_groups_first_then_fills_without_loss():
    first = _rollout([1, 1, 0, 1], tag=1)  # group 0 all equal, group 1 informative
    second = _rollout([0, 0, 1, 0], tag=2)  # group 0 all equal, group 1 informative
    batch = dynamic_sampling.assemble([first, second], num_groups=3)
    assert batch.informative_groups == 2
    # groups: (first, 1), (second, 1), then the first uninformative one: (first, 0)
    np.testing.assert_array_equal(batch.task_reward, [102, 103, 202, 203, 100, 101])
    np.testing.assert_array_equal(batch.trajectory.tokens[:, 0], [102, 103, 202, 203, 100, 101])
    np.testing.assert_array_equal(batch.trajectory.positions[0, :, 0], [102, 103, 202, 203, 100, 101])
    np.testing.assert_array_equal(batch.trajectory.loss_mask.any(axis=1), [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(batch.prompt_pixel_values[:, 0, 0], [101, 201, 100])  # one image per group
    assert batch.prompt_grid_thw.shape == (3, 3)


def test_assemble_needs_enough_valid_groups():
    with pytest.raises(ValueError, match="1 valid groups, fewer than the 2"):
        dynamic_sampling.assemble([_rollout([1, 0, 1, 0], tag=0, valid=[True, False])], num_groups=2)
