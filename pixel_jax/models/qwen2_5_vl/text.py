"""The Qwen2.5-VL text decoder: GQA with qkv bias, SwiGLU, RMSNorm, multimodal rotary (M-RoPE).

Einsum letters: B batch, T query length, S key length (cache slots), N query heads,
K kv heads, H head dim, D model dim, V vocabulary.

The decoder runs in two modes with one code path:
- no cache (training, a prompt prefill): the T tokens attend to each other under `mask` [B, T, T]
  (or a `layers.CausalMask`); each layer also returns the tokens' keys and values, from which
  `start_cache` builds a rollout's cache;
- with a cache (`LayerCache` per layer: the prompts' slots 0 … P − 1, shared by groups of G rows,
  and each row's own slots P … S − 1): the chunk's keys/values are written at slots
  `write_index[b] + arange(T)` (≥ P) of each row, then the chunk attends to all S slots under
  `mask` [B, T, S]. Positions are explicit, so rows may sit at different offsets and the cache
  may hold holes (slots that the mask never opens).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixel_jax import sharding
from pixel_jax.models import layers
from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig


# Logical axes of the activations (mapped to mesh axes by `pixel_jax.sharding` rules).
HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")  # [B, T, D]
Q_AXES = ("activation_batch", "activation_length", "activation_heads", None)  # [B, T, N, H]
KV_AXES = ("activation_batch", "activation_length", "activation_kv_heads", None)  # [B, S, K, H]
K_CACHE_AXES = ("activation_batch", "activation_kv_heads", None, "activation_length")  # [B, K, H, S]
V_CACHE_AXES = ("activation_batch", "activation_kv_heads", "activation_length", None)  # [B, K, S, H]


class LayerCache(NamedTuple):
    """One decoder layer's keys and values during a rollout of B rows in groups of G: slots
    0 … P − 1 hold the prompts, stored once per group (prompt b serves rows b·G … b·G + G − 1),
    slots P … P + R − 1 each row's own tokens. Each array is the [contracted, free] right-hand
    operand of its product in `layers.cached_attention`, a layout the CPU dot kernels stream in
    place at every decode step."""

    prompt_keys: jax.Array  # [B/G, K, H, P]
    prompt_values: jax.Array  # [B/G, K, P, H]
    keys: jax.Array  # [B, K, H, R]
    values: jax.Array  # [B, K, R, H]

    @property
    def prompt_slots(self) -> int:
        return self.prompt_keys.shape[-1]


KVCache = list[LayerCache]
PromptKV = list[tuple[jax.Array, jax.Array]]  # per layer the T tokens' keys and values [B, T, K, H]


def mrope_cos_sin(positions: jax.Array, config: Qwen2_5_VLConfig) -> tuple[jax.Array, jax.Array]:
    """M-RoPE angles from 3-D positions [3, B, T] (t, h, w) -> cos, sin [B, T, H] float32.

    Frequency i of the H/2 rotary frequencies takes its angle from the t, h or w position
    according to `mrope_section` (e.g. 16 | 24 | 24 for H = 128).
    """
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, config.head_dim, 2, dtype=np.float32) / config.head_dim))
    section_of_freq = np.repeat(np.arange(3), config.mrope_section)  # [H/2]
    picks = jnp.asarray(section_of_freq[None, :] == np.arange(3)[:, None], jnp.float32)  # [3, H/2]
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [3, B, T, H/2]
    freqs = jnp.einsum("XBTF,XF->BTF", freqs, picks, precision=jax.lax.Precision.HIGHEST)
    assert freqs.shape[-1] == half
    angles = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, H]
    return jnp.cos(angles), jnp.sin(angles)


def start_cache(prompt_kv: PromptKV, own_slots: int) -> KVCache:
    """The cache after a prompt prefill: the prompts' keys and values (`TextModel` without a
    cache returns them, [B, P, K, H] per layer) and `own_slots` empty slots for each of the B rows
    (G = 1; `repeat_rows` forms groups)."""
    def own(k):  # [B, P, K, H] -> zeros [B, K, H, R] and [B, K, R, H]
        b, _, kv_heads, h = k.shape
        return jnp.zeros((b, kv_heads, h, own_slots), k.dtype), jnp.zeros((b, kv_heads, own_slots, h), k.dtype)

    return [LayerCache(sharding.constrain(k.transpose(0, 2, 3, 1), K_CACHE_AXES),
                       sharding.constrain(v.transpose(0, 2, 1, 3), V_CACHE_AXES), *own(k))
            for k, v in prompt_kv]


def repeat_rows(cache: KVCache, group_size: int) -> KVCache:
    """Every row G times (rows b·G … b·G + G − 1 are copies of row b), the prompts still stored once."""
    repeat = lambda x: jnp.repeat(x, group_size, axis=0)
    return [layer._replace(keys=repeat(layer.keys), values=repeat(layer.values)) for layer in cache]


def write_to_cache(cache: jax.Array, new: jax.Array, write_index: jax.Array, slot_axis: int) -> jax.Array:
    """cache (rows first, slots on `slot_axis`) with new [B, T, K, H] written at slots
    write_index[b] + arange(T). Slots past S are dropped (never wrapped or clamped onto earlier slots).
    """
    b, t = new.shape[:2]
    slots = write_index[:, None] + jnp.arange(t)[None, :]  # [B, T]
    index = (jnp.arange(b)[:, None],) + (slice(None),) * (slot_axis - 1) + (slots,)
    return cache.at[index].set(new.astype(cache.dtype), mode="drop")  # split indices: value dims [B, T, K, H]


class Attention(nnx.Module):
    def __init__(self, config: Qwen2_5_VLConfig, *, rngs: nnx.Rngs):
        d, n, k, h = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        kw = dict(param_dtype=config.weight_dtype, rngs=rngs)
        self.q_proj = layers.Einsum("BTD,DNH->BTNH", (d, n, h), ("embed", "q_heads", "head_dim"),
                                    bias_shape=(n, h), bias_axes=("q_heads", "head_dim"), **kw)
        self.k_proj = layers.Einsum("BTD,DKH->BTKH", (d, k, h), ("embed", "kv_heads", "head_dim"),
                                    bias_shape=(k, h), bias_axes=("kv_heads", "head_dim"), **kw)
        self.v_proj = layers.Einsum("BTD,DKH->BTKH", (d, k, h), ("embed", "kv_heads", "head_dim"),
                                    bias_shape=(k, h), bias_axes=("kv_heads", "head_dim"), **kw)
        self.o_proj = layers.HeadsOutProjection((n, h, d), ("q_heads", "head_dim", "embed"), **kw)

    def __call__(self, x, cos, sin, mask, kv: LayerCache | None = None, write_index=None):
        """Without a cache, returns the tokens' keys and values [B, T, K, H] beside the output;
        with one, the cache with the tokens written at slots write_index + arange(T) (≥ P)."""
        cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
        q = sharding.constrain(layers.apply_rotary(self.q_proj(x), cos, sin), Q_AXES)  # [B, T, N, H]
        k = layers.apply_rotary(self.k_proj(x), cos, sin)  # [B, T, K, H]
        v = self.v_proj(x)  # [B, T, K, H]
        if kv is None:
            k, v = sharding.constrain(k, KV_AXES), sharding.constrain(v, KV_AXES)
            out = layers.dot_product_attention(q, k, v, mask)
            return self.o_proj(sharding.constrain(out, Q_AXES)), (k, v)
        own_index = write_index - kv.prompt_slots
        kv = kv._replace(keys=sharding.constrain(write_to_cache(kv.keys, k, own_index, slot_axis=3), K_CACHE_AXES),
                         values=sharding.constrain(write_to_cache(kv.values, v, own_index, slot_axis=2), V_CACHE_AXES))
        out = layers.cached_attention(q, *(x.astype(q.dtype) for x in kv), mask)
        return self.o_proj(sharding.constrain(out, Q_AXES)), kv


class DecoderLayer(nnx.Module):
    def __init__(self, config: Qwen2_5_VLConfig, *, rngs: nnx.Rngs):
        eps, dtype = config.rms_norm_eps, config.weight_dtype
        self.input_layernorm = layers.RMSNorm(config.hidden_size, eps=eps, param_dtype=dtype)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = layers.RMSNorm(config.hidden_size, eps=eps, param_dtype=dtype)
        self.mlp = layers.GatedMLP(config.hidden_size, config.intermediate_size, bias=False,
                                   param_dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask, kv=None, write_index=None):
        attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv, write_index)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class TextModel(nnx.Module):
    """Token embedding, decoder layers and the final norm (the LM head lives in the full model)."""

    def __init__(self, config: Qwen2_5_VLConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = layers.make_param(
            rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), config.weight_dtype
        )
        self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = layers.RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=config.weight_dtype)

    def embed(self, input_ids: jax.Array) -> jax.Array:  # [B, T] -> [B, T, D]
        table = sharding.constrain(self.embed_tokens[...], ("vocab", None))  # [V, D]: whole D (FSDP-gathered)
        return jnp.take(table, input_ids, axis=0).astype(self.config.compute_dtype)

    def __call__(
        self,
        embeds: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: KVCache | None = None,
        write_index: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | PromptKV]:
        """embeds [B, T, D], positions [3, B, T], mask [B, T, T] or `layers.CausalMask` without a
        cache, [B, T, S] with one -> hidden [B, T, D] and the updated cache (without a cache: each
        layer's keys and values of the T tokens, for `start_cache`)."""
        if (cache is None) != (write_index is None):
            raise ValueError("cache and write_index must be given together")
        cos, sin = mrope_cos_sin(positions, self.config)
        x = sharding.constrain(embeds, HIDDEN_AXES)
        new_cache = []
        call = layers.rematerialised(DecoderLayer.__call__, self.config.remat if cache is None else "none")
        for i, layer in enumerate(self.layers):
            x, kv = call(layer, x, cos, sin, mask, None if cache is None else cache[i], write_index)
            x = sharding.constrain(x, HIDDEN_AXES)
            new_cache.append(kv)
        return self.norm(x), new_cache
