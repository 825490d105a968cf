"""pixel_jax.sharding: meshes from the config, rule resolution, placement of params/batches, sharded loading."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from models import hf_tiny
from pixel_jax import sharding
from pixel_jax.models import safetensors_io
from pixel_jax.models import qwen2_5_vl as qvl

RULES = sharding.make_rules()
TINY = qvl.Qwen2_5_VLConfig.tiny(num_hidden_layers=1, vision=dataclasses.replace(
    qvl.Qwen2_5_VLConfig.tiny().vision, depth=1, fullatt_block_indexes=(0,)))


def create_tiny():
    return qvl.Qwen2_5_VL(TINY, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------------------ mesh
@pytest.mark.parametrize("shape, expected", [
    ({"data": -1}, (8, 1, 1)),
    ({"fsdp": -1, "tensor": 2}, (1, 4, 2)),
    ((2, -1, 2), (2, 2, 2)),
    ({"data": 1, "fsdp": 2, "tensor": 4}, (1, 2, 4)),
])
def test_mesh_shape_fills_the_minus_one_axis(shape, expected):
    assert sharding.mesh_shape(shape, 8) == expected


@pytest.mark.parametrize("shape, message", [
    ({"data": 3}, "has 3 devices but 8 are available"),
    ({"data": -1, "fsdp": 3}, "not divisible by the fixed axes' product 3"),
    ({"data": -1, "tensor": -1}, "at most one -1"),
    ({"model": 8}, "unknown axes \\['model'\\]"),
    ((8, 1), "must give 3 sizes"),
    ({"data": 0}, "sizes must be positive"),
])
def test_mesh_shape_errors_name_the_problem(shape, message):
    with pytest.raises(ValueError, match=message):
        sharding.mesh_shape(shape, 8)


def test_make_mesh_has_auto_axes_over_all_devices():
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": -1})
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 4}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


# ----------------------------------------------------------------------------- rules
def test_rules_overrides_and_errors():
    rules = sharding.make_rules({"embed": None, "mlp": ("fsdp", "tensor")})
    assert rules["embed"] == () and rules["mlp"] == ("fsdp", "tensor") and rules["vocab"] == ("tensor",)
    with pytest.raises(ValueError, match="'embed' .* unknown mesh axes \\['model'\\]"):
        sharding.make_rules({"embed": "model"})
    with pytest.raises(ValueError, match="repeats a mesh axis"):
        sharding.make_rules({"embed": ("fsdp", "fsdp")})


@pytest.mark.parametrize("mesh_shape, axes, shape, expected", [
    ((2, 2, 2), ("embed", "q_heads", "head_dim"), (64, 4, 16), P("fsdp", "tensor", None)),
    ((2, 2, 2), ("vit_mlp", "vit_mlp"), (128, 128), P("tensor", None)),  # a mesh axis is used once
    ((1, 1, 8), ("embed", "q_heads", "head_dim"), (3584, 28, 128), P("fsdp", None, None)),  # 28 % 8 ≠ 0
    ((2, 2, 2), ("activation_batch", "activation_length"), (8, 5), P(("data", "fsdp"), None)),
    ((2, 2, 2), ("activation_batch", "activation_length"), (2, 5), P("data", None)),  # prefix that divides
    ((2, 2, 2), ("activation_batch", "activation_length"), None, P(("data", "fsdp"), None)),
])
def test_logical_spec(mesh_shape, axes, shape, expected):
    assert sharding.logical_spec(axes, sharding.make_mesh(mesh_shape), RULES, shape) == expected


def test_logical_spec_errors():
    mesh = sharding.make_mesh((8, 1, 1))
    with pytest.raises(ValueError, match="logical axis 'experts' has no sharding rule"):
        sharding.logical_spec(("experts", None), mesh, RULES)
    with pytest.raises(ValueError, match="do not match the rank"):
        sharding.logical_spec(("embed",), mesh, RULES, (4, 4))


def test_constrain_is_identity_outside_the_rules_and_shards_inside():
    mesh = sharding.make_mesh((2, 2, 2))
    x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
    assert sharding.constrain(x, ("activation_batch", None)) is x

    def f(x):
        with sharding.activation_rules(mesh, RULES):
            return sharding.constrain(2 * x, ("activation_batch", None))

    y = jax.jit(f)(x)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None)), 2)
    assert y.addressable_shards[0].data.shape == (2, 6)
    np.testing.assert_array_equal(np.asarray(y), 2 * np.asarray(x))


# ------------------------------------------------------------------ model placement
def test_param_shardings_by_path_follow_the_rules():
    mesh = sharding.make_mesh((1, 2, 4))
    got = sharding.param_shardings_by_path(nnx.eval_shape(create_tiny), mesh)
    expected = {  # tiny: D=64, N=4, K=2, H=16, F=128, V=2048; ViT E=32, 2 heads
        "language_model.embed_tokens": P("tensor", "fsdp"),
        "language_model.layers.0.self_attn.q_proj.kernel": P("fsdp", "tensor", None),
        "language_model.layers.0.self_attn.k_proj.kernel": P("fsdp", None, None),  # K=2 on tensor=4
        "language_model.layers.0.mlp.down_proj.kernel": P("tensor", "fsdp"),
        "language_model.norm.weight": P(None),
        "lm_head.kernel": P("fsdp", "tensor"),
        "visual.blocks.0.attn.qkv.kernel": P("fsdp", None, None, None),  # 2 heads on tensor=4
        "visual.merger.fc2.kernel": P("tensor", "fsdp"),
    }
    assert {path: got[path].spec for path in expected} == expected
    assert len(got) == len(nnx.to_flat_state(nnx.state(nnx.eval_shape(create_tiny), nnx.Param)))


def test_create_sharded_equals_the_unsharded_model_and_splits_tensor_weights():
    mesh = sharding.make_mesh((1, 2, 4))
    model = sharding.create_sharded(create_tiny, mesh, RULES)
    reference = create_tiny()
    for (path, got), (_, want) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(reference))):
        # the same draws; jit fuses the 0.02 scaling differently, hence 1 ulp
        np.testing.assert_allclose(np.asarray(got.get_value()), np.asarray(want.get_value()), rtol=3e-7,
                                   err_msg=str(path))
    gate = model.language_model.layers[0].mlp.gate_proj.kernel.get_value()  # [D=64, F=128] on (fsdp, tensor)
    assert gate.sharding.spec == P("fsdp", "tensor")
    assert {shard.data.shape for shard in gate.addressable_shards} == {(32, 32)}
    assert len({(s.index[0].start, s.index[1].start) for s in gate.addressable_shards}) == 8


def test_optimizer_state_is_placed_like_the_parameters():
    mesh = sharding.make_mesh((1, 2, 4))
    abstract = nnx.state(nnx.eval_shape(create_tiny), nnx.Param)
    params = sharding.state_shardings(abstract, mesh, RULES)
    optimizer = optax.adamw(1e-3)
    placed = sharding.optimizer_shardings(optimizer, jax.eval_shape(optimizer.init, abstract), params, mesh)
    adam = placed[0]
    assert adam.count == sharding.replicated(mesh)
    assert adam.mu["lm_head"]["kernel"].get_value().spec == P("fsdp", "tensor")
    assert adam.nu["language_model"]["layers"][0]["mlp"]["up_proj"]["kernel"].get_value().spec == P("fsdp", "tensor")


# -------------------------------------------------------------------------- batches
def test_global_batch_from_a_single_process_slice():
    mesh = sharding.make_mesh((2, 2, 2))
    shardings = sharding.batch_shardings(
        {"input_ids": ("activation_batch", "activation_length"), "pixel_values": (None, None)}, mesh, RULES
    )
    local = {"input_ids": np.arange(8 * 3).reshape(8, 3), "pixel_values": np.ones((5, 7), np.float32)}
    batch = sharding.global_batch(local, shardings)
    assert batch["input_ids"].sharding.spec == P(("data", "fsdp"), None)
    assert {s.data.shape for s in batch["input_ids"].addressable_shards} == {(2, 3)}
    assert batch["pixel_values"].sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(batch["input_ids"]), local["input_ids"])
    with pytest.raises(ValueError, match="batch fields \\['input_ids'\\] differ"):
        sharding.global_batch({"input_ids": local["input_ids"]}, shardings)


# ------------------------------------------------------------------- sharded loading
@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_tiny")
    hf_tiny.build_hf_model(hf_tiny.hf_config()).save_pretrained(folder)
    return folder


def test_from_pretrained_places_each_leaf_on_its_shards_reading_only_its_blocks(hf_checkpoint, monkeypatch):
    unsharded = qvl.from_pretrained(hf_checkpoint)
    read_sizes: dict[str, list[int]] = {}
    original_read = safetensors_io.LazyTensor.read

    def recording_read(self, index):
        block = original_read(self, index)
        read_sizes.setdefault(self.name, []).append(block.size)
        return block

    monkeypatch.setattr(safetensors_io.LazyTensor, "read", recording_read)
    mesh = sharding.make_mesh((2, 2, 2))
    model = qvl.from_pretrained(hf_checkpoint, mesh=mesh)

    expected = sharding.param_shardings_by_path(model, mesh)
    for (path, got), (_, want) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(unsharded))):
        name = ".".join(str(p) for p in path)
        array = got.get_value()
        assert array.sharding == expected[name], name
        np.testing.assert_array_equal(np.asarray(array), np.asarray(want.get_value()), err_msg=name)

    # q_proj [D=64, N=4, H=16] on (fsdp, tensor): 4 distinct blocks (each read once for its 2 data
    # replicas), together exactly the tensor; HF [out, in] is read by rows and columns.
    q = model.language_model.layers[0].self_attn.q_proj.kernel.get_value()
    assert {s.data.shape for s in q.addressable_shards} == {(32, 2, 16)}
    assert read_sizes["model.layers.0.self_attn.q_proj.weight"] == [32 * 2 * 16] * 4
    assert read_sizes["model.layers.0.mlp.gate_proj.weight"] == [64 * 96 // 4] * 4
    assert read_sizes["model.norm.weight"] == [64]  # replicated: read once
