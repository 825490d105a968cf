"""The vision tower on one image per entry ([I, Q, patch_dim]) against the packed masked path."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.processing import image as image_processing


def test_one_image_per_entry_equals_the_packed_masked_path():
    model = qvl.Qwen2_5_VL(qvl.Qwen2_5_VLConfig.tiny(), rngs=nnx.Rngs(0))
    grids = np.array([[1, 8, 12], [1, 12, 8], [1, 8, 8]])  # windows split each; the last fills 64 of 96 rows
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((int(np.prod(g)), 1176)).astype(np.float32) for g in grids]
    entries = np.zeros((3, 96, 1176), np.float32)
    for entry, image in zip(entries, images):
        entry[: len(image)] = image
    per_entry = np.asarray(model.encode_vision(jnp.asarray(entries), jnp.asarray(grids)))  # [3, 24, 64]
    packed = np.asarray(model.encode_vision(jnp.asarray(np.concatenate(images)), jnp.asarray(grids)))  # [64, 64]
    assert per_entry.shape == (3, 24, 64) and packed.shape == (64, 64)
    np.testing.assert_allclose(per_entry[0], packed[:24], atol=1e-5)
    np.testing.assert_allclose(per_entry[1], packed[24:48], atol=1e-5)
    np.testing.assert_allclose(per_entry[2, :16], packed[48:], atol=1e-5)  # padding rows change nothing


def test_raw_uint8_patches_give_the_tokens_of_their_normalized_floats():
    """uint8 patches (4x smaller in a learner batch) are normalized inside the tower: same tokens."""
    model = qvl.Qwen2_5_VL(qvl.Qwen2_5_VLConfig.tiny(), rngs=nnx.Rngs(0))
    frames = np.random.default_rng(1).integers(0, 256, (2, 1, 112, 168, 3), dtype=np.uint8)  # two images
    raw = np.stack([image_processing.patchify(image) for image in frames])  # [2, 96, 1176] uint8
    floats = np.stack([image_processing.to_pixel_values(image) for image in frames])  # [2, 96, 1176]
    grids = np.array([[1, 8, 12], [1, 8, 12]])
    from_raw = model.encode_vision(jnp.asarray(raw), jnp.asarray(grids))  # [2, 24, 64]
    from_floats = model.encode_vision(jnp.asarray(floats), jnp.asarray(grids))
    np.testing.assert_allclose(np.asarray(from_raw), np.asarray(from_floats), atol=1e-6)
