"""select_frames: on-device gather of 1-based frame indices, and each error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.frames import select_frames

NUM_FRAMES, SLOTS, MAX_FRAMES = 6, 5, 4


@pytest.fixture
def video():
    # frame f (0-based) is filled with the value f + 1, so a gathered frame names its index
    values = np.arange(1, NUM_FRAMES + 1, dtype=np.uint8)
    return jnp.asarray(np.broadcast_to(values[:, None, None, None], (NUM_FRAMES, 4, 3, 3)).copy())


def select(video, target_frames, n_given, **kwargs):
    slots = np.zeros(SLOTS, np.int32)
    slots[: min(len(target_frames), SLOTS)] = target_frames[:SLOTS]
    frames, valid, error = select_frames(video, jnp.asarray(slots), n_given, MAX_FRAMES, **kwargs)
    return np.asarray(frames[:, 0, 0, 0]), np.asarray(valid), ToolError(int(error))


def test_gathers_given_frames_in_order(video):
    frames, valid, error = select(video, [6, 1, 3], 3)
    assert error == ToolError.OK
    assert frames.tolist() == [6, 1, 3, 0, 0]
    assert valid.tolist() == [True, True, True, False, False]


def test_duplicates_are_kept(video):
    frames, valid, error = select(video, [2, 2, 5], 3)
    assert error == ToolError.OK
    assert frames.tolist() == [2, 2, 5, 0, 0] and valid.sum() == 3


@pytest.mark.parametrize(
    "target_frames, n_given, expected",
    [
        ([], 0, ToolError.NO_FRAMES_GIVEN),
        ([1, 2, 3, 4, 5], 5, ToolError.TOO_MANY_FRAMES),
        ([1, 2, 3, 4, 5, 6, 1], 7, ToolError.TOO_MANY_FRAMES),  # more numbers than slots
        ([1, 7], 2, ToolError.FRAME_OUT_OF_RANGE),
        ([0, 2], 2, ToolError.FRAME_OUT_OF_RANGE),
        ([-1], 1, ToolError.FRAME_OUT_OF_RANGE),
        ([9, 9, 9, 9, 9], 5, ToolError.TOO_MANY_FRAMES),  # too many is reported first
    ],
)
def test_errors(video, target_frames, n_given, expected):
    frames, valid, error = select(video, target_frames, n_given)
    assert error == expected
    assert not valid.any() and not frames.any()


def test_index_beyond_the_true_length_of_a_padded_video(video):
    assert select(video, [5], 1, n_frames=4)[2] == ToolError.FRAME_OUT_OF_RANGE
    assert select(video, [4], 1, n_frames=4)[2] == ToolError.OK


def test_unused_slots_are_not_checked(video):
    slots = jnp.array([2, 99, -5, 0, 0], jnp.int32)  # garbage after the one given index
    _, valid, error = select_frames(video, slots, 1, MAX_FRAMES)
    assert int(error) == ToolError.OK and np.asarray(valid).tolist() == [True] + [False] * 4


def test_traced_indices_compile_once(video):
    jitted = jax.jit(select_frames, static_argnums=3)
    for slots, n_given in [([1, 2, 0, 0, 0], 2), ([6, 5, 4, 3, 0], 4), ([7, 0, 0, 0, 0], 1)]:
        jitted(video, jnp.array(slots, jnp.int32), n_given, MAX_FRAMES)
    assert jitted._cache_size() == 1


def test_max_frames_must_fit_the_slots(video):
    with pytest.raises(ValueError, match="max_frames"):
        select_frames(video, jnp.zeros(SLOTS, jnp.int32), 1, SLOTS + 1)
