"""A finished rollout, and the training forward pass that replays it exactly.

Nothing is re-tokenised: the learner sees the stored slots (token ids, M-RoPE positions,
validity), the prompt image and the crops the sampler showed, so log π_θ of the sampled tokens
equals the sampler's log π_old at the first update (ratio ρ = 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pixel_jax import sharding
from pixel_jax.models import layers
from pixel_jax.models.qwen2_5_vl.model import Qwen2_5_VL, place_features
from pixel_jax.processing import image as image_processing


@struct.dataclass
class Trajectory:
    tokens: jax.Array  # [B, S] int32 every slot's token (prompt, sampled, injected; 0 in holes)
    positions: jax.Array  # [3, B, S] int32 M-RoPE positions
    slot_valid: jax.Array  # [B, S] bool
    loss_mask: jax.Array  # [B, S] bool: 1 only on tokens the policy sampled
    logprobs: jax.Array  # [B, S] float32 log π_old(token | prefix), 0 where not sampled
    temperature: jax.Array  # [B, S] float32 temperature of each sampled token (1 elsewhere)
    crops: jax.Array  # [B, C·K, h, w, 3] uint8 images shown after successful calls (crops or frames)
    n_crops: jax.Array  # [B] how many of them
    n_calls: jax.Array  # [B] attempted visual operations
    n_errors: jax.Array  # [B] failed ones
    call_errors: jax.Array  # [B, C] ToolError per call
    call_boxes: jax.Array  # [B, C, 4] requested box per call, in the target image's frame
    call_targets: jax.Array  # [B, C] 1-based target image per call
    finish: jax.Array  # [B] FinishReason
    response_length: jax.Array  # [B] sampled tokens
    prompt_len: int = struct.field(pytree_node=False)
    call_frames: jax.Array | None = None  # [B, C, K] frames asked for per select_frames call

    @classmethod
    def from_state(cls, state, prompt_len: int) -> "Trajectory":
        return cls(
            tokens=state.tokens, positions=state.positions, slot_valid=state.slot_valid, loss_mask=state.sampled,
            logprobs=state.logprobs, temperature=jnp.where(state.sampled, state.temperature, 1.0),
            crops=state.images, n_crops=state.n_shown - 1, n_calls=state.n_calls, n_errors=state.n_errors,
            call_errors=state.call_errors, call_boxes=state.call_boxes, call_targets=state.call_targets,
            finish=state.finish, response_length=state.n_sampled, prompt_len=prompt_len,
            call_frames=state.call_frames,
        )

    @property
    def last_call_failed(self) -> jax.Array:
        """[B] the last visual operation failed (and none succeeded after it)."""
        last = jnp.maximum(self.n_calls - 1, 0)
        failed = jnp.take_along_axis(self.call_errors, last[:, None], axis=1)[:, 0] != 0
        return (self.n_calls > 0) & failed


def row_axes(tree):
    """The axis that indexes rows in every array of `tree` (a Trajectory, or any pytree of batch
    arrays holding Trajectories): 1 for a Trajectory's positions [3, B, S], 0 everywhere else."""
    def axes(node):
        return jax.tree.map(lambda _: 0, node).replace(positions=1) if isinstance(node, Trajectory) else 0

    return jax.tree.map(axes, tree, is_leaf=lambda node: isinstance(node, Trajectory))


def place_batch(tree, mesh, rules):
    """Every array of `tree` (host arrays and Trajectories, the same on every process) as a global
    array, each device given only its rows (`sharding.place_rows` on the `row_axes`)."""
    place = lambda value, row_axis: sharding.place_rows(value, mesh, rules, row_axis)
    return jax.tree.map(place, tree, row_axes(tree))


def previous_valid_slot(slot_valid: jax.Array) -> jax.Array:
    """[B, S] -> [B, S]: for each slot, the latest valid slot strictly before it (0 if none)."""
    index = jnp.where(slot_valid, jnp.arange(slot_valid.shape[1])[None], 0)
    latest = jax.lax.cummax(index, axis=1)
    return jnp.concatenate([jnp.zeros_like(latest[:, :1]), latest[:, :-1]], axis=1)


def token_logprobs(
    model: Qwen2_5_VL,
    trajectory: Trajectory,
    prompt_pixel_values: jax.Array | None = None,
    prompt_grid_thw: jax.Array | None = None,
    prompt_video_values: jax.Array | None = None,
    prompt_video_grid_thw: jax.Array | None = None,
    *,
    group_size: int = 1,
) -> jax.Array:
    """log π_θ(token_s | slots before s) / T_s for every response slot: [B, S] float32, 0 on the
    prompt (never sampled: its logits are not computed).

    The logits of slot s predict the next VALID slot (holes are skipped), at the temperature the
    token was sampled with. prompt_pixel_values / prompt_video_values with their grids are the
    prompt images / videos as given to the rollout; the images shown after calls are re-patchified
    from their stored uint8 pixels. With `group_size` G > 1, each G consecutive rows (the G responses
    of a query) share one prompt image / video, given once per group ([B/G, P0, ·], grids [B/G, 3]):
    it is encoded once and its features placed in all G rows.
    """
    return token_logprobs_and_entropy(
        model, trajectory, prompt_pixel_values, prompt_grid_thw, prompt_video_values, prompt_video_grid_thw,
        group_size=group_size,
    )[0]


def token_logprobs_and_entropy(
    model: Qwen2_5_VL,
    trajectory: Trajectory,
    prompt_pixel_values: jax.Array | None = None,
    prompt_grid_thw: jax.Array | None = None,
    prompt_video_values: jax.Array | None = None,
    prompt_video_grid_thw: jax.Array | None = None,
    *,
    group_size: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """`token_logprobs` and the entropy H_s = −Σ_v π_θ(v | ·) log π_θ(v | ·) of the (tempered)
    distribution each slot's token was drawn from: two [B, S] float32 (0 on the prompt), one
    forward pass (under jit, the entropy costs nothing when unused)."""
    cfg = model.config
    b, s = trajectory.tokens.shape
    in_prompt = jnp.arange(s)[None] < trajectory.prompt_len
    embeds = model.language_model.embed(trajectory.tokens)
    prompt_ids = jnp.where(in_prompt, trajectory.tokens, -1)
    for values, grid, token_id in ((prompt_pixel_values, prompt_grid_thw, cfg.image_token_id),
                                   (prompt_video_values, prompt_video_grid_thw, cfg.video_token_id)):
        if values is not None:  # as the rollout encodes them: [B, P0, ·] row by row, packed in reading order
            if group_size > 1 and (values.ndim != 3 or values.shape[0] * group_size != b):
                raise ValueError(f"with group_size={group_size}, the prompt's visual inputs must be one per group "
                                 f"of rows, [{b // group_size}, P0, patch_dim] for {b} rows; got shape {values.shape}")
            features = model.encode_vision(values, grid)  # [B/G, P0/m², D] | [Σ tokens, D]
            if group_size > 1:
                features = jnp.repeat(features, group_size, axis=0)  # [B, P0/m², D]: a group's rows share it
            embeds = place_features(embeds, prompt_ids, token_id, features)
    crops = trajectory.crops
    if crops.shape[2] > 1:  # the rollout had tools (a real crop grid): each row's crops in order
        c, h, w = crops.shape[1:4]
        patches = jax.vmap(image_processing.to_pixel_values)(crops.reshape(b * c, 1, h, w, 3).astype(jnp.float32))
        grid = np.tile(np.array([[1, h // 14, w // 14]]), (b * c, 1))  # static: attention image by image
        crop_embeds = model.encode_vision(patches.reshape(-1, patches.shape[-1]), grid).reshape(b, -1, cfg.hidden_size)
        response_ids = jnp.where(in_prompt, -1, trajectory.tokens)
        embeds = place_features(embeds, response_ids, cfg.image_token_id, crop_embeds)
    hidden, _ = model.decode(embeds, trajectory.positions, layers.CausalMask(trajectory.slot_valid))  # [B, S, D]
    response = slice(trajectory.prompt_len, s)  # the R = S − prompt_len slots a token may be sampled in
    source = previous_valid_slot(trajectory.slot_valid)[:, response]  # [B, R]
    hidden = jnp.take_along_axis(hidden, source[..., None], axis=1)  # [B, R, D] the predicting slot
    chosen, entropy = sampled_logprobs_and_entropy(model, hidden, trajectory.tokens[:, response],
                                                   trajectory.temperature[:, response])  # [B, R] each
    on_all_slots = lambda x: jnp.pad(x, ((0, 0), (trajectory.prompt_len, 0)))  # [B, S], 0 on the prompt
    return on_all_slots(chosen), on_all_slots(entropy)


LOGIT_CHUNK = 1024  # response slots whose [B, chunk, V] logits exist at once


def sampled_logprobs_and_entropy(
    model: Qwen2_5_VL, hidden: jax.Array, tokens: jax.Array, temperature: jax.Array, chunk: int = LOGIT_CHUNK
) -> tuple[jax.Array, jax.Array]:
    """hidden [B, R, D] of the predicting slots, their tokens and temperatures [B, R] -> (log π_θ
    of the tokens, entropy H of π_θ), [B, R] float32 each, at most `chunk` slots at a time.

    Only one chunk's logits [B, chunk, V] exist at once, in the forward pass and in the backward
    one (which recomputes them, `jax.checkpoint`): a 7B response's [R, V] float32 logits are
    ~3 GB per row (R ≈ 5000, V = 152,064), their log-softmax as much again.
    """
    b, r, _ = hidden.shape

    def head(hidden, tokens, temperature):  # [B, C, D], [B, C], [B, C] -> [B, C], [B, C]
        logprobs = jax.nn.log_softmax(model.logits(hidden) / temperature[..., None], axis=-1)  # [B, C, V]
        chosen = jnp.take_along_axis(logprobs, tokens[..., None], axis=-1)[..., 0]
        return chosen, -jnp.sum(jnp.exp(logprobs) * logprobs, axis=-1)

    if r <= chunk:
        return head(hidden, tokens, temperature)
    n = -(-r // chunk)

    def to_chunks(x, fill=0):  # [B, R, ...] -> [n, B, chunk, ...], the last chunk padded with `fill`
        x = jnp.pad(x, [(0, 0), (0, n * chunk - r)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)

    # padding at temperature 1: a 0 would put inf·0 = NaN into the gradients of the real slots
    chunks = (to_chunks(hidden), to_chunks(tokens), to_chunks(temperature, fill=1))
    chosen, entropy = jax.lax.map(lambda args: jax.checkpoint(head)(*args), chunks)  # [n, B, chunk] each
    from_chunks = lambda x: x.swapaxes(0, 1).reshape(b, n * chunk)[:, :r]
    return from_chunks(chosen), from_chunks(entropy)
