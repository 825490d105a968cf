"""pixel_jax.train_step: the objective, and sharded == single-device on 8 fake CPU devices."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pixel_jax import sharding
from pixel_jax import train_step as ts
from pixel_jax.models import qwen2_5_vl as qvl

TOL = 1e-5
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]
CONFIG = qvl.Qwen2_5_VLConfig.tiny(num_hidden_layers=1, vision=dataclasses.replace(
    qvl.Qwen2_5_VLConfig.tiny().vision, depth=2, fullatt_block_indexes=(1,)))  # D=64, N=4, K=2, F=128, V=2048
FIELDS = ts.batch_axes(ts.IMAGE_FIELDS)
B, T = 8, 24


def create_model():
    return qvl.Qwen2_5_VL(CONFIG, rngs=nnx.Rngs(0))


def image_batch() -> dict[str, np.ndarray]:
    """Every row: text, one 4×4-patch image (4 visual tokens), text; a random loss mask."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1900, (B, T)).astype(np.int32)
    ids[:, 2], ids[:, 3:7], ids[:, 7] = CONFIG.vision_start_token_id, CONFIG.image_token_id, CONFIG.vision_end_token_id
    attention = np.ones((B, T), np.int32)
    attention[0, :5] = 0  # one left-padded row
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "loss_mask": ((rng.random((B, T)) > 0.3) & attention.astype(bool)).astype(np.int32),
        "pixel_values": rng.standard_normal((B * 16, CONFIG.vision.patch_dim)).astype(np.float32),
        "image_grid_thw": np.array([[1, 4, 4]] * B, np.int32),
    }


# ------------------------------------------------------------------------ objective
def test_token_log_probs_and_loss_match_a_hand_computation():
    logits = jnp.array([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])  # [1, 3, V=3]
    ids = jnp.array([[0, 2, 1]])
    log_z = [np.log(1 + np.e + np.e**2), np.log(np.e**2 + 2)]
    expected = np.array([[2.0 - log_z[0], 0.0 - log_z[1]]])  # log π(x1=2 | x0), log π(x2=1 | x0, x1)
    np.testing.assert_allclose(ts.token_log_probs(logits, ids), expected, rtol=1e-6)

    class FixedLogits(nnx.Module):
        def __call__(self, input_ids, attention_mask):
            return logits

    batch = {"input_ids": ids, "attention_mask": jnp.ones((1, 3)), "loss_mask": jnp.array([[1, 0, 1]])}
    loss, metrics = ts.next_token_loss(FixedLogits(), batch)
    np.testing.assert_allclose(loss, -expected[0, 1], rtol=1e-6)  # only token 2 is a target
    assert metrics["target_tokens"] == 1


def test_batch_axes_rejects_unknown_fields_and_takes_extras():
    assert ts.batch_axes(("input_ids",), advantages=("activation_batch",)) == {
        "input_ids": ("activation_batch", "activation_length"), "advantages": ("activation_batch",)}
    with pytest.raises(ValueError, match="unknown batch fields \\['advantages'\\]"):
        ts.batch_axes(("input_ids", "advantages"))


def test_adamw_decays_matrices_only():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    optimizer = ts.adamw(0.1, weight_decay=0.5)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)))
    np.testing.assert_allclose(updates["bias"], np.zeros(2))


# --------------------------------------------------------------- sharded == 1 device
def run_two_steps(model: nnx.Module, mesh_shape, devices=None):
    mesh = sharding.make_mesh(mesh_shape, devices)
    # Adam divides by √v + ε: with the default ε = 1e-8 it would turn the float32 rounding noise
    # (~1e-9) of near-zero gradients into parameter noise of order lr; ε = 1e-6 keeps that below 1e-7.
    optimizer = ts.adamw(1e-4, weight_decay=0.1, eps=1e-6)
    plan = ts.plan_training(create_model, optimizer, mesh, sharding.make_rules())
    state = ts.init_state(plan, model)
    batch = sharding.global_batch(image_batch(), sharding.batch_shardings(FIELDS, mesh, plan.rules))
    logits = ts.make_forward(plan, FIELDS)(state.params, batch)
    step = ts.make_train_step(plan, FIELDS)
    metrics = []
    for _ in range(2):
        previous = state
        state, step_metrics = step(state, batch)
        metrics.append({k: float(v) for k, v in step_metrics.items()})
    donated = previous.params["lm_head"]["kernel"].get_value().is_deleted()
    return plan, logits, state, metrics, donated


@pytest.fixture(scope="module")
def model():
    """The initial model with host (numpy) values: every run places its own copy, then donates it."""
    graphdef, state = nnx.split(create_model())
    return nnx.merge(graphdef, jax.tree.map(np.asarray, state))


@pytest.fixture(scope="module")
def single_device(model):
    _, logits, state, metrics, _ = run_two_steps(model, (1, 1, 1), jax.devices()[:1])
    return np.asarray(logits), _host(state.params), metrics


def _host(params: nnx.State) -> dict[str, np.ndarray]:
    return {".".join(map(str, path)): np.asarray(var.get_value()) for path, var in nnx.to_flat_state(params)}


@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_train_step_equals_single_device(mesh_shape, model, single_device):
    ref_logits, ref_params, ref_metrics = single_device
    plan, logits, state, metrics, donated = run_two_steps(model, mesh_shape)
    data, fsdp, tensor = mesh_shape

    # values
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=TOL, rtol=0)
    params = _host(state.params)
    worst = max(np.max(np.abs(params[k] - ref_params[k])) for k in ref_params)
    assert worst <= TOL, f"max |Δparam| = {worst:.2e}"
    moved = max(np.max(np.abs(params[k] - v)) for k, v in _host(nnx.state(model)).items())
    assert moved > 10 * TOL  # the two steps changed the parameters far beyond the tolerance
    for got, want in zip(metrics, ref_metrics):
        assert got == pytest.approx(want, rel=1e-5)
    assert donated

    # placement: the plan's shardings, which are the rules' (tiny: D=64, N=4, K=2, H=16, F=128, V=2048)
    for (path, var), (_, want) in zip(nnx.to_flat_state(state.params), nnx.to_flat_state(plan.state_shardings.params)):
        assert var.get_value().sharding == want.get_value(), path
    layer = state.params["language_model"]["layers"][0]
    q = layer["self_attn"]["q_proj"]["kernel"].get_value()  # [D, N, H] on (fsdp, tensor, -)
    assert q.sharding.spec == P("fsdp", "tensor" if 4 % tensor == 0 else None, None)
    gate = layer["mlp"]["gate_proj"]["kernel"].get_value()  # [D, F] on (fsdp, tensor)
    assert gate.sharding.spec == P("fsdp", "tensor")
    assert {s.data.shape for s in gate.addressable_shards} == {(64 // fsdp, 128 // tensor)}
    blocks = {tuple((sl.start, sl.stop) for sl in s.index) for s in gate.addressable_shards}
    assert len(blocks) == fsdp * tensor  # distinct blocks: really split
    for shard in gate.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), params["language_model.layers.0.mlp.gate_proj.kernel"][shard.index])
    assert logits.sharding.is_equivalent_to(NamedSharding(plan.mesh, P(("data", "fsdp"), None, "tensor")), 3)
    assert {s.data.shape for s in logits.addressable_shards} == {(B // (data * fsdp), T, 2048 // tensor)}
