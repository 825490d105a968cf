"""Kernels laid out as contiguous panels for CPU decoding: the layout, the product through it, and a
Qwen2.5-VL copy that decodes through panels (tied and untied head) giving the plain model's logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pixel_jax.models import layers
from pixel_jax.models import qwen2_5_vl as qvl

P = layers.PANEL_WIDTH


def test_panel_j_holds_output_columns_j_times_width_onward():
    kernel = jnp.arange(3 * 4 * 2 * P, dtype=jnp.float32).reshape(3, 4, 2 * P)  # [I0, I1, F], 2 input dims
    panels = np.asarray(layers.to_panels(kernel, contracted=2))
    assert panels.shape == (2, 12, P)
    flat = np.asarray(kernel).reshape(12, 2 * P)
    for j in range(2):
        np.testing.assert_array_equal(panels[j], flat[:, j * P:(j + 1) * P])
    assert layers.to_panels(jnp.zeros((8, P + 32))) is None  # not a whole number of panels: stays plain


def test_panel_product_equals_the_plain_product():
    x = jax.random.normal(jax.random.key(0), (2, 3, 48))  # [B, T, D]
    kernel = jax.random.normal(jax.random.key(1), (48, 3 * P))  # [D, F]
    got = layers.panel_product(x, layers.to_panels(kernel))
    np.testing.assert_allclose(np.asarray(got), np.asarray(x @ kernel), rtol=1e-5, atol=1e-5)
    wide = layers.panel_product(x.astype(jnp.bfloat16), layers.to_panels(kernel.astype(jnp.bfloat16)),
                                out_dtype=jnp.float32)
    assert wide.dtype == jnp.float32 and wide.shape == (2, 3, 3 * P)


def test_panels_pay_off_for_few_rows_on_cpu_when_the_copy_is_small(monkeypatch):
    assert jax.default_backend() == "cpu"
    mlp = layers.GatedMLP(64, 128, bias=False, param_dtype=jnp.float32, rngs=nnx.Rngs(0))  # 3 x 32 KiB
    assert layers.panels_pay_off(1, mlp) and layers.panels_pay_off(layers.PANEL_MAX_ROWS, mlp)
    assert not layers.panels_pay_off(layers.PANEL_MAX_ROWS + 1, mlp)
    monkeypatch.setattr(layers, "PANEL_MAX_BYTES", 3 * 32 * 1024 - 1)
    assert not layers.panels_pay_off(1, mlp)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_decoding_copy_gives_the_plain_models_logits(tied):
    """Widths chosen so some projections get panels (q, o, MLP, head: multiples of 64) and one
    keeps its plain kernel (k/v: 2 heads x 16 = 32 wide)."""
    cfg = qvl.Qwen2_5_VLConfig.tiny(tie_word_embeddings=tied)
    model = qvl.Qwen2_5_VL(cfg, rngs=nnx.Rngs(0))
    for layer in model.language_model.layers:  # the decoder's q/k/v biases start at zero: make them count
        layer.self_attn.q_proj.bias[...] = 0.1 * jax.random.normal(jax.random.key(2), layer.self_attn.q_proj.bias.shape)
    copy = model.with_decode_panels()

    attn = copy.language_model.layers[0].self_attn
    assert attn.q_proj.panels.shape == (64 // P, 64, P) and attn.o_proj.panels.shape == (64 // P, 64, P)
    assert attn.k_proj.panels is None and copy.language_model.layers[0].mlp.up_proj.panels.shape == (2, 64, P)
    assert (copy.lm_head is None) == tied and ((copy.head_panels is not None) == tied)
    assert model.language_model.layers[0].self_attn.q_proj.panels is None  # the original is untouched
    assert copy.visual.blocks[0].attn.qkv.panels is None  # the ViT never decodes

    ids = jax.random.randint(jax.random.key(3), (3, 5), 0, 1900)
    positions = jnp.broadcast_to(jnp.arange(5), (3, 3, 5))
    mask = layers.CausalMask(jnp.ones((3, 5), bool))
    expected = model.logits(model.decode(model.embed(ids), positions, mask)[0])
    got = copy.logits(copy.decode(copy.embed(ids), positions, mask)[0])
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
