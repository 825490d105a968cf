"""Rematerialisation (`Qwen2_5_VLConfig.remat`): the same loss and gradients under every policy;
with "full", a decoder layer or a ViT block keeps nothing but its input for the backward pass."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals  # what jax.ad_checkpoint.print_saved_residuals prints

import hf_tiny
from pixel_jax.models import qwen2_5_vl as qvl

GRIDS = [(1, 8, 4), (1, 4, 4)]


def tiny_config(**changes) -> qvl.Qwen2_5_VLConfig:
    return qvl.Qwen2_5_VLConfig.tiny(vocab_size=hf_tiny.VOCAB, image_token_id=hf_tiny.IMAGE_PAD,
                                     video_token_id=hf_tiny.VIDEO_PAD, vision_start_token_id=hf_tiny.VISION_START,
                                     vision_end_token_id=hf_tiny.VISION_END, **changes)


def batch() -> dict[str, jnp.ndarray]:
    rng = np.random.default_rng(0)
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, [3, ("image", GRIDS[0]), 4]),
                                  hf_tiny.sample(rng, [9, ("image", GRIDS[1]), 2])])
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
            "pixel_values": jnp.asarray(hf_tiny.pixels(rng, GRIDS)), "image_grid_thw": jnp.asarray(GRIDS)}


def loss_fn(config: qvl.Qwen2_5_VLConfig):
    """(the loss of the parameters: mean log-likelihood of the next tokens, the parameters)."""
    graphdef, state = nnx.split(qvl.Qwen2_5_VL(config, rngs=nnx.Rngs(0)))
    inputs = batch()

    def loss(state):
        logits = nnx.merge(graphdef, state)(**inputs)  # [B, T, V]
        logprobs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.take_along_axis(logprobs, inputs["input_ids"][:, 1:, None], axis=-1).mean()

    return loss, state


def residual_bytes(config: qvl.Qwen2_5_VLConfig) -> int:
    """Bytes the backward pass keeps from the forward pass, besides the parameters."""
    loss, state = loss_fn(config)
    return sum(a.size * a.dtype.itemsize for a, source in saved_residuals(loss, state)
               if "from the argument" not in source)


@pytest.mark.parametrize("policy", ["dots", "full"])
def test_gradients_do_not_depend_on_the_policy(policy):
    reference, state = loss_fn(tiny_config())
    loss, _ = loss_fn(tiny_config(remat=policy))  # the same parameters (same seed and shapes)
    expected_loss, expected_grads = jax.jit(jax.value_and_grad(reference))(state)
    got_loss, got_grads = jax.jit(jax.value_and_grad(loss))(state)
    np.testing.assert_allclose(float(got_loss), float(expected_loss), rtol=1e-6)
    for got, expected in zip(jax.tree.leaves(got_grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-7)


def test_full_remat_keeps_one_input_per_decoder_layer():
    """One more decoder layer costs the backward pass its input [B, T, D] float32 under "full";
    without remat, its attention and MLP activations too (many times more)."""
    b, t = batch()["input_ids"].shape
    layer_input = b * t * tiny_config().hidden_size * 4
    extra = {policy: residual_bytes(tiny_config(num_hidden_layers=3, remat=policy))
             - residual_bytes(tiny_config(num_hidden_layers=2, remat=policy)) for policy in ("none", "dots", "full")}
    assert extra["full"] == layer_input
    assert extra["none"] > extra["dots"] > 4 * layer_input


def test_full_remat_keeps_one_input_per_vision_block():
    """One more ViT block costs its input [P, E] float32 (P patches of both images) under "full"."""
    vision = tiny_config().vision
    block_input = sum(int(np.prod(grid)) for grid in GRIDS) * vision.hidden_size * 4
    extra = {policy: residual_bytes(tiny_config(remat=policy, vision=dataclasses.replace(vision, depth=4)))
             - residual_bytes(tiny_config(remat=policy, vision=dataclasses.replace(vision, depth=3))) for policy in ("none", "full")}
    assert extra["full"] == block_input
    assert extra["none"] > 4 * block_input


def test_unknown_policy_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"remat='everything' is not one of \['dots', 'full', 'none'\]"):
        tiny_config(remat="everything")


def test_a_rematerialised_model_runs_inside_loops():
    """The rollout encodes its crops inside its decode loop: remat reads the blocks, never writes them."""
    inputs = batch()
    models = {policy: qvl.Qwen2_5_VL(tiny_config(remat=policy), rngs=nnx.Rngs(0)) for policy in ("none", "full")}

    @nnx.jit
    def encode_in_a_loop(model):
        return jax.lax.fori_loop(0, 2, lambda _, total: total + model.encode_vision(inputs["pixel_values"],
                                                                                     inputs["image_grid_thw"]),
                                 jnp.zeros((sum(int(np.prod(g)) for g in GRIDS) // 4, 64)))

    np.testing.assert_array_equal(np.asarray(encode_in_a_loop(models["full"])),
                                  np.asarray(encode_in_a_loop(models["none"])))
