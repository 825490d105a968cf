"""Single-turn generation with the rollout engine (no tools): the transformers-style entry point."""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pixel_jax.models.qwen2_5_vl.model import Qwen2_5_VL
from pixel_jax.rollout import engine as engine_lib
from pixel_jax.rollout import sampling
from pixel_jax.rollout.trajectory import Trajectory


class GenerateOutput(NamedTuple):
    tokens: jax.Array  # [B, max_new_tokens] int32 new tokens (0 after a stop token)
    logprobs: jax.Array  # [B, max_new_tokens] float32 log π of each sampled token
    lengths: jax.Array  # [B] number of sampled tokens (a stop token included)


_ENGINES: dict = {}


def generate(
    model: Qwen2_5_VL,
    input_ids,
    attention_mask,
    *,
    max_new_tokens: int | Sequence[int],
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: jax.Array | None = None,
    pixel_values=None,
    image_grid_thw=None,
    stop_token_ids: tuple[int, ...] = (),
) -> GenerateOutput:
    """Samples up to max_new_tokens after left-padded prompts (greedy when temperature == 0).

    max_new_tokens: one budget for every row, or one per row ([B]; the outputs are as wide as the
    largest). pixel_values [Σ t·h·w, patch_dim] and image_grid_thw [I, 3] follow transformers'
    conventions. The compiled program is cached per (model graph, settings) and reused across calls.
    Unlike transformers, no row ever writes a vision placeholder (image/video pad, vision start/end).
    """
    budgets = np.asarray(max_new_tokens)
    rows = np.shape(input_ids)[0]
    if budgets.ndim > 1 or (budgets.ndim == 1 and budgets.shape[0] != rows):
        raise ValueError(f"max_new_tokens must be an int or one int per row ({rows}), got shape {budgets.shape}")
    if not np.issubdtype(budgets.dtype, np.integer) or budgets.size == 0 or budgets.min() < 1:
        raise ValueError(f"max_new_tokens must be integers ≥ 1, got {max_new_tokens}")
    max_new_tokens = int(budgets.max())
    params = sampling.SamplingParams(temperature, top_k or 0, 1.0 if top_p is None else top_p)
    spec = engine_lib.RolloutSpec(max_new_tokens=max_new_tokens, stop_ids=tuple(stop_token_ids),
                                  first_turn=params, later_turns=params)
    key = (model.config, spec)
    if key not in _ENGINES:
        _ENGINES[key] = engine_lib.Engine(model, spec)
    batch = {"input_ids": jnp.asarray(input_ids), "attention_mask": jnp.asarray(attention_mask)}
    if budgets.ndim:
        batch["max_new_tokens"] = jnp.asarray(budgets, jnp.int32)
    if pixel_values is not None:
        batch.update(pixel_values=jnp.asarray(pixel_values), image_grid_thw=jnp.asarray(image_grid_thw))
    trajectory = _ENGINES[key](model, batch, jax.random.key(0) if rng is None else rng)
    return _response(trajectory, batch["input_ids"].shape[1], max_new_tokens)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _response(trajectory: Trajectory, prompt_len: int, max_new_tokens: int) -> GenerateOutput:
    """The response slots of a trajectory, zero where the policy wrote nothing (one dispatch: the
    half-dozen eager slices it replaces cost ~0.5 ms a call)."""
    response = slice(prompt_len, prompt_len + max_new_tokens)
    sampled = trajectory.loss_mask[:, response]
    return GenerateOutput(
        tokens=jnp.where(sampled, trajectory.tokens[:, response], 0),
        logprobs=jnp.where(sampled, trajectory.logprobs[:, response], 0.0),
        lengths=trajectory.response_length,
    )
