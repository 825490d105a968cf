"""Reading and writing Hugging Face Qwen2.5-VL checkpoint folders.

One declarative table maps each of our parameters to its Hugging Face tensor and says how the
layout differs. Loading memory-maps the safetensors files and builds each leaf directly with
its target sharding when a mesh is given, every device reading only the rows (and columns) of
its own block; export writes a folder that transformers loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixel_jax import sharding
from pixel_jax.models import safetensors_io
from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from pixel_jax.models.qwen2_5_vl.model import Qwen2_5_VL


@dataclasses.dataclass(frozen=True)
class Rule:
    """Our parameter path (regex) ↔ the HF tensor name (template over the regex groups).

    layout:
      "same"   identical arrays;
      "flat"   HF keeps the array flat (biases), ours splits it into axes (e.g. [3, N, H]);
      "linear" HF [out, in...] (torch Linear / Conv weight) ↔ ours [in..., out...]: the HF array
               flattened to [out, in] and transposed, reshaped to our shape. `in_axes` = how many
               leading axes of ours form the input.
    """

    ours: str
    hf: str
    layout: str = "same"
    in_axes: int = 1


_V, _L = r"visual\.blocks\.(\d+)", r"language_model\.layers\.(\d+)"
RULES = (
    Rule(r"visual\.patch_embed\.kernel", "visual.patch_embed.proj.weight", "linear"),
    Rule(_V + r"\.norm(1|2)\.weight", "visual.blocks.{0}.norm{1}.weight"),
    Rule(_V + r"\.attn\.qkv\.kernel", "visual.blocks.{0}.attn.qkv.weight", "linear"),
    Rule(_V + r"\.attn\.qkv\.bias", "visual.blocks.{0}.attn.qkv.bias", "flat"),
    Rule(_V + r"\.attn\.proj\.kernel", "visual.blocks.{0}.attn.proj.weight", "linear", in_axes=2),
    Rule(_V + r"\.attn\.proj\.bias", "visual.blocks.{0}.attn.proj.bias", "flat"),
    Rule(_V + r"\.mlp\.(gate|up|down)_proj\.kernel", "visual.blocks.{0}.mlp.{1}_proj.weight", "linear"),
    Rule(_V + r"\.mlp\.(gate|up|down)_proj\.bias", "visual.blocks.{0}.mlp.{1}_proj.bias", "flat"),
    Rule(r"visual\.merger\.ln_q\.weight", "visual.merger.ln_q.weight"),
    Rule(r"visual\.merger\.fc1\.kernel", "visual.merger.mlp.0.weight", "linear"),
    Rule(r"visual\.merger\.fc1\.bias", "visual.merger.mlp.0.bias", "flat"),
    Rule(r"visual\.merger\.fc2\.kernel", "visual.merger.mlp.2.weight", "linear"),
    Rule(r"visual\.merger\.fc2\.bias", "visual.merger.mlp.2.bias", "flat"),
    Rule(r"language_model\.embed_tokens", "model.embed_tokens.weight"),
    Rule(_L + r"\.(input_layernorm|post_attention_layernorm)\.weight", "model.layers.{0}.{1}.weight"),
    Rule(_L + r"\.self_attn\.(q|k|v)_proj\.kernel", "model.layers.{0}.self_attn.{1}_proj.weight", "linear"),
    Rule(_L + r"\.self_attn\.(q|k|v)_proj\.bias", "model.layers.{0}.self_attn.{1}_proj.bias", "flat"),
    Rule(_L + r"\.self_attn\.o_proj\.kernel", "model.layers.{0}.self_attn.o_proj.weight", "linear", in_axes=2),
    Rule(_L + r"\.mlp\.(gate|up|down)_proj\.kernel", "model.layers.{0}.mlp.{1}_proj.weight", "linear"),
    Rule(r"language_model\.norm\.weight", "model.norm.weight"),
    Rule(r"lm_head\.kernel", "lm_head.weight", "linear"),
)

# transformers v5 also writes/reads the nested module names; normalise them to the released layout.
_HF_ALIASES = ((re.compile(r"^model\.language_model\."), "model."), (re.compile(r"^model\.visual\."), "visual."))


def hf_name(our_path: str) -> tuple[Rule, str]:
    """The rule and HF tensor name of one of our parameter paths ("a.b.0.c")."""
    for rule in RULES:
        match = re.fullmatch(rule.ours, our_path)
        if match:
            return rule, rule.hf.format(*match.groups())
    raise KeyError(f"no Hugging Face name is known for parameter {our_path!r}")


def read_ours(
        rule: Rule, tensor: safetensors_io.LazyTensor, our_shape: tuple[int, ...], index: tuple[slice, ...]
) -> np.ndarray:
    """Block `index` of our layout of an HF tensor, reading only the HF rows (and columns) it spans.

    "flat" and "linear" arrays are row-major reshapes of the HF array (after the [out, in]
    transpose), so a block whose leading axis is sliced spans one contiguous range of HF rows.
    """
    if rule.layout == "same":
        return tensor.read(index)
    if rule.layout == "flat":
        start, stop, block_shape, rest = _row_range(index, our_shape)
        return tensor.read((slice(start, stop),)).reshape(block_shape)[rest]
    in_index, out_index = index[: rule.in_axes], index[rule.in_axes:]
    in_start, in_stop, in_block, in_rest = _row_range(in_index, our_shape[: rule.in_axes])
    out_start, out_stop, out_block, out_rest = _row_range(out_index, our_shape[rule.in_axes:])
    if len(tensor.shape) == 2:  # [out, in]
        hf = tensor.read((slice(out_start, out_stop), slice(in_start, in_stop)))
    else:  # the patch embedding's Conv3d [E, C, T, p, p]: its input axes are read whole
        hf = tensor.read((slice(out_start, out_stop),)).reshape(out_stop - out_start, -1)[:, in_start:in_stop]
    return hf.T.reshape(in_block + out_block)[in_rest + out_rest]


def _row_range(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...], tuple[slice, ...]]:
    """The flat range [start, stop) of a row-major `shape` that covers the rows of `index`'s first
    axis, the shape of that range, and the rest of `index` to apply to it."""
    start, stop, step = index[0].indices(shape[0])
    if step != 1:
        raise ValueError(f"strided block {index} cannot be read as a contiguous range")
    inner = math.prod(shape[1:])
    return start * inner, stop * inner, (stop - start, *shape[1:]), (slice(None), *index[1:])


def to_hf(rule: Rule, ours: np.ndarray, hf_shape: tuple[int, ...]) -> np.ndarray:
    if rule.layout == "linear":
        return ours.reshape(math.prod(ours.shape[: rule.in_axes]), -1).T.reshape(hf_shape)
    return ours.reshape(hf_shape)


def hf_shape(rule: Rule, name: str, our_shape: tuple[int, ...], config: Qwen2_5_VLConfig) -> tuple[int, ...]:
    """Shape of the HF tensor for one of ours (biases and norms are flat; Linear is [out, in])."""
    if name == "visual.patch_embed.proj.weight":
        v = config.vision
        return (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    if rule.layout == "linear":
        return (math.prod(our_shape[rule.in_axes:]), math.prod(our_shape[: rule.in_axes]))
    if rule.layout == "flat":
        return (math.prod(our_shape),)
    return tuple(our_shape)


def _flat_params(model: nnx.Module) -> dict[str, nnx.Variable]:
    state = nnx.state(model, nnx.Param)
    return {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(state)}


# --------------------------------------------------------------------------- load
def read_config(path: str | Path) -> Qwen2_5_VLConfig:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: checkpoint folder does not exist")
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face checkpoint folder)")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from e
    return Qwen2_5_VLConfig.from_hf_config(hf)


def from_pretrained(
    path: str | Path,
    dtype=jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
    sharding_rules=None,
    compute_dtype=None,
    remat: str = "none",
) -> Qwen2_5_VL:
    """Loads a local HF Qwen2.5-VL folder (config.json + model.safetensors or a sharded index).

    dtype: parameter dtype. compute_dtype: activation dtype (default: dtype). remat: what the
    backward pass recomputes (`Qwen2_5_VLConfig.remat`).
    With a mesh, each leaf is read block by block straight onto its devices (no full copy on
    one device first), placed by `sharding_rules` (default `sharding.make_rules()`).
    Missing, unexpected or mis-shaped tensors raise one error listing them all.
    """
    dtype_name = jnp.dtype(dtype).name
    config = read_config(path).replace(param_dtype=dtype_name, dtype=jnp.dtype(compute_dtype or dtype).name,
                                       remat=remat)
    abstract = nnx.eval_shape(lambda: Qwen2_5_VL(config, rngs=nnx.Rngs(0)))
    tensors = safetensors_io.open_folder(path)
    tensors = {_normalise_name(name): array for name, array in tensors.items()}
    params = _flat_params(abstract)
    shardings = sharding.param_shardings_by_path(abstract, mesh, sharding_rules) if mesh is not None else {}

    missing, wrong_shape, used = [], [], set()
    for our_path, var in params.items():
        rule, name = hf_name(our_path)
        if name not in tensors and rule.hf == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name not in tensors:
            missing.append(name)
            continue
        used.add(name)
        expected = hf_shape(rule, name, var.shape, config)
        if tuple(tensors[name].shape) != expected:
            wrong_shape.append(f"{name}: {tuple(tensors[name].shape)} (expected {expected})")
    unexpected = sorted(set(tensors) - used - _tied_extras(config))
    if missing or wrong_shape or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match its config.json:"
            + (f"\n  missing tensors: {sorted(missing)}" if missing else "")
            + (f"\n  tensors of the wrong shape: {wrong_shape}" if wrong_shape else "")
            + (f"\n  unexpected tensors: {unexpected}" if unexpected else "")
        )

    def load(our_path: str, var: nnx.Variable) -> jax.Array:
        rule, name = hf_name(our_path)
        blocks: dict[tuple, np.ndarray] = {}  # devices that hold the same block (replicas) read it once

        def read(index: tuple[slice, ...]) -> np.ndarray:
            key = tuple(s.indices(n) for s, n in zip(index, var.shape))
            if key not in blocks:
                blocks[key] = read_ours(rule, tensors[name], var.shape, index).astype(dtype)
            return blocks[key]

        if our_path in shardings:
            return jax.make_array_from_callback(var.shape, shardings[our_path], read)
        return jnp.asarray(read((slice(None),) * len(var.shape)))

    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    for path, var in flat.items():
        our_path = ".".join(str(p) for p in path)
        if our_path in params:
            var.set_value(load(our_path, var))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _tied_extras(config: Qwen2_5_VLConfig) -> set[str]:
    # Tied checkpoints may still carry a copy of the head; it is the embedding by definition.
    return {"lm_head.weight"} if config.tie_word_embeddings else set()


def _normalise_name(name: str) -> str:
    for pattern, replacement in _HF_ALIASES:
        name = pattern.sub(replacement, name)
    return name


# ------------------------------------------------------------------------- export
def save_pretrained(model: Qwen2_5_VL, path: str | Path, dtype=None) -> None:
    """Writes config.json + model.safetensors that transformers' from_pretrained loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    tensors: dict[str, np.ndarray] = {}
    for our_path, var in _flat_params(model).items():
        rule, name = hf_name(our_path)
        array = np.asarray(jax.device_get(var[...]))
        if dtype is not None:
            array = array.astype(dtype)
        tensors[name] = np.ascontiguousarray(to_hf(rule, array, hf_shape(rule, name, var.shape, config)))
    hf_config = config.to_hf_config()
    hf_config["dtype"] = str(next(iter(tensors.values())).dtype)
    safetensors_io.save_file(tensors, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
