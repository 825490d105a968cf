"""Pixel Reasoner's `select_frames(target_frames)`, gathered on device with traced indices."""

import jax.numpy as jnp

from pixel_jax.tools.errors import ToolError, first_error


def select_frames(video, target_frames, n_given, max_frames: int, n_frames=None):
    """Gather the frames a call selects → (frames [K, ...], valid [K] bool, error int32).

    video [F, H, W, C] (any trailing shape, e.g. patches); target_frames [K] int32, the 1-based
    indices the model wrote, of which the first n_given are real (K = the parser's static slot
    count; n_given may exceed K when the model wrote more numbers than there are slots);
    max_frames (static) the most frames one call may select, ≤ K; n_frames the true frame count
    of a video padded to F (traced; default F).

    Errors, first failure wins (the authors' order): NO_FRAMES_GIVEN when n_given < 1,
    TOO_MANY_FRAMES when n_given > max_frames, FRAME_OUT_OF_RANGE when a given index is outside
    [1, n_frames] (the authors' code lets 0 and negatives wrap around the Python list; here they
    are errors). Duplicates are kept, in the order given, as the authors' code does: [3, 3] shows
    frame 3 twice. valid[k] is True for the given slots of a successful call; other slots are zeros.
    """
    num_slots = target_frames.shape[0]
    if not 1 <= max_frames <= num_slots:
        raise ValueError(
            f"select_frames: max_frames must be in [1, {num_slots}] (the slots of target_frames), "
            f"got {max_frames}"
        )
    if n_frames is None:
        n_frames = video.shape[0]
    target = jnp.asarray(target_frames, jnp.int32)  # [K]
    given = jnp.arange(num_slots) < n_given  # [K]
    out_of_range = jnp.any(given & ((target < 1) | (target > n_frames)))
    error = first_error(
        (n_given < 1, ToolError.NO_FRAMES_GIVEN),
        (n_given > max_frames, ToolError.TOO_MANY_FRAMES),
        (out_of_range, ToolError.FRAME_OUT_OF_RANGE),
    )
    valid = given & (error == ToolError.OK)  # [K]
    frames = video[jnp.clip(target - 1, 0, video.shape[0] - 1)]  # [K, H, W, C]
    mask = valid.reshape((num_slots,) + (1,) * (video.ndim - 1))
    return jnp.where(mask, frames, jnp.zeros_like(frames)), valid, error
