"""3-D (t, h, w) M-RoPE positions of a token sequence with images and videos, in jnp (jit-able).

Reproduces transformers' `Qwen2_5_VLModel.get_rope_index` (v5): over the valid (unmasked) tokens
of a row, a text token takes position p on all three axes and advances p by 1; an image or
video of merged grid (t, h, w) placed at p gives its token (i, j, k) the position
(p + ⌊i·τ⌋, p + j, p + k), with τ = tokens_per_second · second_per_grid_t for videos and τ = 1
for images, and advances p by max(h, w). Masked tokens get position 0. Images and videos are
numbered in reading order across the batch, matching `image_grid_thw` / `video_grid_thw`.

Instead of a Python loop over groups, every token gets an "advance" (1 for text, max(h, w) on
the first token of a vision run, 0 otherwise); the running position is its exclusive cumsum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig

_TEXT, _IMAGE, _VIDEO = 0, 1, 2


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
    return jnp.cumsum(x, axis=-1) - x


def _latest(values: jax.Array, where: jax.Array, fill: int = 0) -> jax.Array:
    """For each t, `values` at the latest t' ≤ t with where[t'] (values must be nondecreasing there)."""
    return jax.lax.cummax(jnp.where(where, values, fill), axis=values.ndim - 1)


def get_rope_index(
    config: Qwen2_5_VLConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    image_grid_thw: jax.Array | None = None,
    video_grid_thw: jax.Array | None = None,
    second_per_grid_ts: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """input_ids [B, T] -> position_ids [3, B, T] int32, rope_deltas [B, 1] int32.

    rope_deltas = max position + 1 − number of valid tokens: the offset that continues text
    positions during decoding (next position = deltas + number of tokens so far).
    """
    input_ids = jnp.asarray(input_ids)
    valid = jnp.ones(input_ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    merge = config.vision.spatial_merge_size

    modality = jnp.full(input_ids.shape, _TEXT, jnp.int32)
    if image_grid_thw is not None:
        modality = jnp.where(input_ids == config.image_token_id, _IMAGE, modality)
    if video_grid_thw is not None:
        modality = jnp.where(input_ids == config.video_token_id, _VIDEO, modality)
    modality = jnp.where(valid, modality, -1)

    # Modality of the previous valid token: a vision run starts where the modality changes.
    index = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    last_valid = _latest(index, valid, fill=-1)  # [B, T]
    previous_valid = jnp.concatenate([jnp.full_like(last_valid[:, :1], -1), last_valid[:, :-1]], axis=1)
    previous_modality = jnp.where(
        previous_valid >= 0, jnp.take_along_axis(modality, jnp.maximum(previous_valid, 0), axis=1), _TEXT
    )
    is_vision = modality > _TEXT
    run_start = is_vision & (modality != previous_modality)  # [B, T]

    # Grid (t, h, w) in merged units and temporal scale τ of the item each vision token belongs to.
    grid = jnp.zeros(input_ids.shape + (3,), jnp.int32)
    scale = jnp.ones(input_ids.shape, jnp.float32)
    for kind, grids, ts in ((_IMAGE, image_grid_thw, None), (_VIDEO, video_grid_thw, second_per_grid_ts)):
        if grids is None:
            continue
        grids = jnp.asarray(grids, jnp.int32).reshape(-1, 3) // jnp.array([1, merge, merge])
        starts = (run_start & (modality == kind)).reshape(-1)
        item = (jnp.cumsum(starts) - 1).reshape(input_ids.shape)  # reading order across the batch
        item = jnp.clip(item, 0, grids.shape[0] - 1)
        grid = jnp.where((modality == kind)[..., None], grids[item], grid)
        if kind == _VIDEO:
            seconds = jnp.ones((grids.shape[0],), jnp.float32) if ts is None else jnp.asarray(ts, jnp.float32)
            tau = config.vision.tokens_per_second * seconds.reshape(-1)
            scale = jnp.where(modality == kind, tau[item], scale)
    grid_h, grid_w = grid[..., 1], grid[..., 2]

    advance = jnp.where(modality == _TEXT, 1, jnp.where(run_start, jnp.maximum(grid_h, grid_w), 0))
    position = _exclusive_cumsum(advance)  # [B, T] running text position p
    block_start = _latest(position, run_start)  # p at the start of the current vision run
    vision_count = jnp.cumsum(is_vision, axis=1)
    local = vision_count - _latest(vision_count, run_start)  # index within the run

    i, rest = jnp.divmod(local, jnp.maximum(grid_h * grid_w, 1))
    j, k = jnp.divmod(rest, jnp.maximum(grid_w, 1))
    temporal = jnp.floor(i.astype(jnp.float32) * scale).astype(jnp.int32)
    vision_pos = jnp.stack([block_start + temporal, block_start + j, block_start + k])  # [3, B, T]
    positions = jnp.where(is_vision[None], vision_pos, position[None])
    positions = jnp.where(valid[None], positions, 0).astype(jnp.int32)

    max_position = jnp.max(jnp.where(valid[None], positions, -1), axis=(0, 2))  # [B]
    deltas = max_position + 1 - jnp.sum(valid, axis=1)
    return positions, deltas[:, None].astype(jnp.int32)
