"""Qwen2.5-VL: the vision tower, the text decoder and the LM head, composed.

The full forward (`__call__`) follows transformers' argument conventions. Its pieces are public
for the rollout engine and the learners, which keep their own positions and masks:
`encode_vision` → `embed` → `decode` (optionally against a KV cache) → `logits`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pixel_jax.models import layers
from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from pixel_jax.models.qwen2_5_vl.rope_index import get_rope_index
from pixel_jax.models.qwen2_5_vl.text import KVCache, PromptKV, TextModel
from pixel_jax.models.qwen2_5_vl.vision import VisionTransformer


def place_features(embeds: jax.Array, input_ids: jax.Array, token_id: int, features: jax.Array) -> jax.Array:
    """Replaces the embeddings of `token_id` tokens by `features`, in reading order.

    embeds [B, T, D], input_ids [B, T]. features [M, D]: one sequence over the whole batch (the
    transformers convention); or [B, M, D]: each row's own features. M ≥ the number of slots.
    """
    is_slot = input_ids == token_id  # [B, T]
    if features.ndim == 3:
        order = jnp.cumsum(is_slot, axis=1) - 1  # [B, T]
        gathered = jnp.take_along_axis(features, jnp.clip(order, 0, features.shape[1] - 1)[..., None], axis=1)
    else:
        order = (jnp.cumsum(is_slot.reshape(-1)) - 1).reshape(is_slot.shape)
        gathered = jnp.take(features, jnp.clip(order, 0, features.shape[0] - 1), axis=0)  # [B, T, D]
    return jnp.where(is_slot[..., None], gathered.astype(embeds.dtype), embeds)


def causal_padding_mask(attention_mask: jax.Array) -> jax.Array:
    """[B, T] validity -> [B, T, T]: query t sees valid keys s ≤ t."""
    t = attention_mask.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    return causal[None] & attention_mask.astype(bool)[:, None, :]


class Qwen2_5_VL(nnx.Module):
    head_panels = None  # [V / P, D, P]: the tied LM head as panels (see `with_decode_panels`), or None

    def __init__(self, config: Qwen2_5_VLConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.visual = VisionTransformer(
            config.vision, param_dtype=config.weight_dtype, dtype=config.compute_dtype, rngs=rngs, remat=config.remat
        )
        self.language_model = TextModel(config, rngs=rngs)
        self.lm_head = nnx.data(None if config.tie_word_embeddings else layers.Einsum(
            "BTD,DV->BTV", (config.hidden_size, config.vocab_size), ("embed", "vocab"),
            param_dtype=config.weight_dtype, rngs=rngs,
        ))

    # ------------------------------------------------------------------ pieces
    def encode_vision(self, pixel_values: jax.Array, grid_thw: jax.Array) -> jax.Array:
        """Flattened patches [P, patch_dim] and grids [I, 3] -> visual tokens [P/4, D]; or patches
        [I, Q, patch_dim], one image per entry (its first t·h·w rows) -> [I, Q/4, D]."""
        return self.visual(pixel_values, grid_thw)

    def embed(
        self,
        input_ids: jax.Array,
        image_embeds: jax.Array | None = None,
        video_embeds: jax.Array | None = None,
    ) -> jax.Array:
        """Token embeddings [B, T, D] with visual tokens placed at the image/video pad tokens."""
        embeds = self.language_model.embed(input_ids)
        if image_embeds is not None:
            embeds = place_features(embeds, input_ids, self.config.image_token_id, image_embeds)
        if video_embeds is not None:
            embeds = place_features(embeds, input_ids, self.config.video_token_id, video_embeds)
        return embeds

    def decode(
        self,
        embeds: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: KVCache | None = None,
        write_index: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | PromptKV]:
        """The decoder over embeds [B, T, D] at positions [3, B, T] (see `text.TextModel`)."""
        return self.language_model(embeds, positions, mask, cache, write_index)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [B, T, D] -> logits [B, T, V] in float32."""
        if self.head_panels is not None:
            return layers.panel_product(hidden, self.head_panels, out_dtype=jnp.float32)
        if self.lm_head is None:
            table = self.language_model.embed_tokens[...].astype(hidden.dtype)
            return jnp.einsum("BTD,VD->BTV", hidden, table, preferred_element_type=jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def with_decode_panels(self) -> Qwen2_5_VL:
        """A copy whose decoder projections and LM head multiply through kernels laid out as
        contiguous panels (`layers.add_panels`): the same model, for decode steps of a few rows
        on CPU (`layers.panels_pay_off`), where it streams its weights ~2x faster. Make it inside
        the jitted program, outside the decode loop."""
        copy = nnx.clone(self)
        dtype = self.config.compute_dtype
        layers.add_panels(copy.language_model, dtype)
        if copy.lm_head is not None:
            layers.add_panels(copy.lm_head, dtype)
        else:  # tied: the head is the embedding table [V, D]
            copy.head_panels = nnx.data(layers.to_panels(copy.language_model.embed_tokens[...].astype(dtype).T))
        return copy

    # ------------------------------------------------------------ full forward
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        pixel_values: jax.Array | None = None,
        image_grid_thw: jax.Array | None = None,
        pixel_values_videos: jax.Array | None = None,
        video_grid_thw: jax.Array | None = None,
        second_per_grid_ts: jax.Array | None = None,
        position_ids: jax.Array | None = None,
    ) -> jax.Array:
        """input_ids [B, T] (left- or right-padded by `attention_mask`) -> logits [B, T, V].

        pixel_values [Σ t·h·w, C·2·14·14] with image_grid_thw [I, 3]; likewise for videos.
        position_ids [3, B, T] default to `get_rope_index` of the inputs.
        """
        _check_pairs(pixel_values, image_grid_thw, "pixel_values", "image_grid_thw")
        _check_pairs(pixel_values_videos, video_grid_thw, "pixel_values_videos", "video_grid_thw")
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        image_embeds = None if pixel_values is None else self.encode_vision(pixel_values, image_grid_thw)
        video_embeds = None if pixel_values_videos is None else self.encode_vision(pixel_values_videos, video_grid_thw)
        embeds = self.embed(input_ids, image_embeds, video_embeds)
        if position_ids is None:
            position_ids, _ = get_rope_index(
                self.config, input_ids, attention_mask, image_grid_thw, video_grid_thw, second_per_grid_ts
            )
        hidden, _ = self.decode(embeds, position_ids, causal_padding_mask(attention_mask))
        return self.logits(hidden)


def _check_pairs(values, grid, values_name: str, grid_name: str) -> None:
    if (values is None) != (grid is None):
        raise ValueError(f"{values_name} and {grid_name} must be given together (one of them is None)")
