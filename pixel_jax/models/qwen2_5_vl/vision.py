"""The Qwen2.5-VL vision tower (ViT with window attention and a 2x2 patch merger).

Einsum letters: P patches (all images packed), E vision width, N heads, H head dim,
X the q/k/v triple, F MLP hidden dim, O output width (= the decoder's D).

Static shapes: `pixel_values` is the packed [P, patch_dim] array of the processor (it may be
padded with extra rows), `grid_thw` may be traced; or [I, Q, patch_dim], one image (or video)
per entry. Instead of reordering patches into windows as the reference does, every patch gets a
frame id and window coordinates, and attention is masked to equal ids: the same function
(attention is permutation-equivariant), no reordering, no data-dependent shapes. Attention runs
image by image (cost I·Q² instead of (I·Q)²) whenever the image boundaries are static: one image
per entry, or packed images of one host-known size.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixel_jax import sharding
from pixel_jax.models import layers
from pixel_jax.models.qwen2_5_vl.config import VisionConfig
from pixel_jax.processing import image as image_processing

# Patches [P, E] are split over the data-parallel devices like a batch (each device attends from
# its patches to all keys); the merged visual tokens [P/m², O] are gathered whole, ready to be
# placed into the batch-sharded decoder input.
PATCH_AXES = ("activation_patches", "activation_embed")
VISUAL_TOKEN_AXES = (None, "activation_embed")


class PatchLayout(NamedTuple):
    """Where every packed patch sits: [P] int32 each; frame_id is -1 on padding rows."""

    frame_id: jax.Array  # one id per (image, temporal patch): full attention stays within it
    row: jax.Array  # patch row in its image
    col: jax.Array  # patch column in its image
    window_row: jax.Array  # attention-window coordinates (window attention stays within one)
    window_col: jax.Array

    def full_attention_mask(self) -> jax.Array:  # [..., P, P]
        return _same(self.frame_id)

    def window_attention_mask(self) -> jax.Array:  # [..., P, P]
        return self.full_attention_mask() & _same(self.window_row) & _same(self.window_col)


def _same(ids: jax.Array) -> jax.Array:
    """[..., P] -> [..., P, P]: patch pairs with equal ids."""
    return ids[..., :, None] == ids[..., None, :]


def patch_layout(grid_thw: jax.Array, num_patches: int, config: VisionConfig) -> PatchLayout:
    """Frame, row/column and window of each of the `num_patches` packed patches.

    The processor lays patches out per image as (t, h/m, w/m, m, m): each m×m merge block is
    contiguous (m = spatial_merge_size). Windows are `window_merged_size` merged units wide.
    """
    grid = jnp.asarray(grid_thw, jnp.int32).reshape(-1, 3)  # [I, 3]
    t, h, w = grid[:, 0], grid[:, 1], grid[:, 2]
    m = config.spatial_merge_size
    ends = jnp.cumsum(t * h * w)  # [I]
    index = jnp.arange(num_patches, dtype=jnp.int32)  # [P]
    image = jnp.searchsorted(ends, index, side="right")  # [P]
    valid = image < grid.shape[0]
    image = jnp.minimum(image, grid.shape[0] - 1)
    local = index - (ends - t * h * w)[image]
    frame, within_frame = jnp.divmod(local, (h * w)[image])
    block, within_block = jnp.divmod(within_frame, m * m)
    block_row, block_col = jnp.divmod(block, w[image] // m)
    first_frame_of_image = (jnp.cumsum(t) - t)[image]
    frame_id = jnp.where(valid, first_frame_of_image + frame, -1)
    window = config.window_merged_size
    return PatchLayout(
        frame_id=frame_id,
        row=block_row * m + within_block // m,
        col=block_col * m + within_block % m,
        window_row=block_row // window,
        window_col=block_col // window,
    )


def vision_rotary(layout: PatchLayout, config: VisionConfig) -> tuple[jax.Array, jax.Array]:
    """2-D rotary angles: the first half of each head rotates with the row, the second with the column.

    Returns cos, sin [..., P, H] in float32 (layout fields [..., P]).
    """
    quarter = config.head_dim // 4
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, 2 * quarter, 2, dtype=jnp.float32) / (2 * quarter)))
    freqs = jnp.concatenate(
        [layout.row[..., None] * inv_freq, layout.col[..., None] * inv_freq], axis=-1
    )  # [..., P, H/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)  # [..., P, H]
    return jnp.cos(angles), jnp.sin(angles)


class VisionAttention(nnx.Module):
    def __init__(self, config: VisionConfig, *, param_dtype, rngs: nnx.Rngs):
        e, n, h = config.hidden_size, config.num_heads, config.head_dim
        self.qkv = layers.Einsum(
            "PE,EXNH->PXNH", (e, 3, n, h), ("vit_embed", None, "vit_heads", "head_dim"),
            bias_shape=(3, n, h), bias_axes=(None, "vit_heads", "head_dim"), param_dtype=param_dtype, rngs=rngs,
        )
        self.proj = layers.Einsum(
            "PNH,NHE->PE", (n, h, e), ("vit_heads", "head_dim", "vit_embed"),
            bias_shape=(e,), bias_axes=("vit_embed",), param_dtype=param_dtype, rngs=rngs,
        )

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
        """x [I·Q, E]: I images of Q patches, attended image by image under cos, sin [I, Q, H] and
        mask [I, Q, Q], each either per image or shared by all ([1, Q, ...])."""
        num_patches, per_image = x.shape[0], mask.shape[-1]
        qkv = self.qkv(x).reshape(-1, per_image, 3, *self.qkv.kernel.shape[2:])  # [I, Q, 3, N, H]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [I, Q, N, H]
        q = layers.apply_rotary(q.astype(jnp.float32), cos, sin).astype(x.dtype)
        k = layers.apply_rotary(k.astype(jnp.float32), cos, sin).astype(x.dtype)
        out = layers.dot_product_attention(q, k, v, mask)  # [I, Q, N, H]
        return self.proj(out.reshape(num_patches, *out.shape[2:]))


class VisionBlock(nnx.Module):
    def __init__(self, config: VisionConfig, *, param_dtype, rngs: nnx.Rngs):
        self.norm1 = layers.RMSNorm(config.hidden_size, eps=1e-6, param_dtype=param_dtype)
        self.norm2 = layers.RMSNorm(config.hidden_size, eps=1e-6, param_dtype=param_dtype)
        self.attn = VisionAttention(config, param_dtype=param_dtype, rngs=rngs)
        self.mlp = layers.GatedMLP(
            config.hidden_size, config.intermediate_size, bias=True, param_dtype=param_dtype, rngs=rngs,
            axes=("vit_embed", "vit_mlp"),
        )

    def __call__(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """RMSNorm, then each m×m block of patches (contiguous rows) → one token of width O."""

    def __init__(self, config: VisionConfig, *, param_dtype, rngs: nnx.Rngs):
        self.merged_width = config.hidden_size * config.spatial_merge_size**2
        w, out = self.merged_width, config.out_hidden_size
        self.ln_q = layers.RMSNorm(config.hidden_size, eps=1e-6, param_dtype=param_dtype)
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.fc1 = layers.Einsum("PE,EF->PF", (w, w), ("vit_mlp", "vit_mlp"), bias_shape=(w,),
                                 bias_axes=("vit_mlp",), **kw)
        self.fc2 = layers.Einsum("PF,FO->PO", (w, out), ("vit_mlp", "embed"), bias_shape=(out,),
                                 bias_axes=("embed",), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = sharding.constrain(self.ln_q(x).reshape(-1, self.merged_width), PATCH_AXES)  # [P/m², m²·E]
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))  # [P/m², O]


class VisionTransformer(nnx.Module):
    """pixel_values [P, C·tp·p·p], grid_thw [I, 3] -> merged visual tokens [P/m², O]; or
    pixel_values [I, Q, C·tp·p·p] (image i in the first t·h·w of its Q rows) -> [I, Q/m², O].
    pixel_values are normalized floats (transformers' convention) or raw uint8 patches
    (`image_processing.patchify`), normalized here."""

    def __init__(self, config: VisionConfig, *, param_dtype, dtype, rngs: nnx.Rngs, remat: str = "none"):
        self.config = config
        self.dtype = dtype
        self.remat = remat  # layers.REMAT_POLICIES name, per block
        self.patch_embed = layers.Einsum(
            "PC,CE->PE", (config.patch_dim, config.hidden_size), ("patch", "vit_embed"),
            param_dtype=param_dtype, rngs=rngs,
        )
        self.blocks = nnx.List(
            [VisionBlock(config, param_dtype=param_dtype, rngs=rngs) for _ in range(config.depth)]
        )
        self.merger = PatchMerger(config, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array, grid_thw: jax.Array) -> jax.Array:
        *entries, per_entry, patch_dim = pixel_values.shape
        num_patches = int(np.prod(entries, dtype=int)) * per_entry
        if patch_dim != self.config.patch_dim:
            raise ValueError(
                f"pixel_values has rows of length {patch_dim}; this vision tower expects "
                f"{self.config.patch_dim} (= channels·temporal_patch·patch²)"
            )
        merge_unit = self.config.spatial_merge_size**2
        if per_entry % merge_unit:
            raise ValueError(f"pixel_values has {per_entry} rows per image, not a multiple of {merge_unit} "
                             "(merge blocks)")
        if entries:  # one image per entry: each its own layout
            layout = jax.vmap(lambda grid: patch_layout(grid[None], per_entry, self.config))(
                jnp.asarray(grid_thw).reshape(-1, 3))  # fields [I, Q]
        else:
            images = _equal_images(grid_thw, num_patches)
            layout = patch_layout(grid_thw[:1] if images > 1 else grid_thw, num_patches // images, self.config)
            layout = jax.tree.map(lambda field: field[None], layout)  # fields [1, Q]: shared by all images
        if pixel_values.dtype == jnp.uint8:
            pixel_values = image_processing.normalize_patches(jnp.asarray(pixel_values))
        cos, sin = vision_rotary(layout, self.config)  # [I | 1, Q, H]
        full_mask, window_mask = layout.full_attention_mask(), layout.window_attention_mask()  # [I | 1, Q, Q]
        x = self.patch_embed(pixel_values.reshape(num_patches, patch_dim).astype(self.dtype))
        x = sharding.constrain(x, PATCH_AXES)  # [P, E]
        call = layers.rematerialised(VisionBlock.__call__, self.remat)
        for i, block in enumerate(self.blocks):
            x = call(block, x, cos, sin, full_mask if i in self.config.fullatt_block_indexes else window_mask)
            x = sharding.constrain(x, PATCH_AXES)
        tokens = sharding.constrain(self.merger(x), VISUAL_TOKEN_AXES)  # [P/m², O]
        return tokens.reshape(*entries, -1, tokens.shape[-1])


def _equal_images(grid_thw, num_patches: int) -> int:
    """How many images to attend to one by one: their count when `grid_thw` is a concrete (host)
    array of identical grids filling all patches (e.g. the rollout's crops), else 1 (one masked
    attention over all patches). Attention cost falls from (I·Q)² to I·Q²."""
    if not isinstance(grid_thw, np.ndarray) or len(grid_thw) < 2 or (grid_thw != grid_thw[0]).any():
        return 1
    return len(grid_thw) if len(grid_thw) * int(np.prod(grid_thw[0])) == num_patches else 1
