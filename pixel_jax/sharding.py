"""Meshes, logical axis rules and the placement of parameters, optimizer state and batches.

Every parameter carries logical axis names (`out_sharding` metadata set by
`pixel_jax.models.layers.make_param`, e.g. ("embed", "q_heads", "head_dim")); key activations are
constrained with `constrain(x, ("activation_batch", "activation_length", "activation_embed"))`.
A rules table maps each logical name to mesh axes of a 3-axis mesh:

    data    pure data parallelism (parameters replicated),
    fsdp    data parallelism with parameters and optimizer state sharded (ZeRO-3),
    tensor  tensor parallelism (heads, MLP hidden units and vocabulary split).

The same code runs on 1 CPU, 8 fake CPU devices, a GPU node or a TPU pod: only the mesh shape
(`config.mesh`) and, rarely, the rules (`config.sharding_rules`, overrides of `DEFAULT_RULES`) change.

Resolution is deliberate about two cases the mesh cannot express: a mesh axis already used by an
earlier dimension of the same array is dropped, and a dimension whose size is not divisible by
its mesh axes keeps the longest prefix of them that divides it (e.g. 28 heads on tensor=8 stay
replicated; a batch of 2 on data=2 × fsdp=2 is split over data only). Both keep every mesh valid
for every model; `aot_compile` shows what it costs in memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | Sequence[str] | None
LogicalAxes = Sequence[str | None]
Rules = Mapping[str, tuple[str, ...]]

DEFAULT_RULES: dict[str, MeshAxes] = {
    # parameters of the decoder
    "embed": "fsdp",
    "vocab": "tensor",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    # parameters of the vision tower
    "patch": None,
    "vit_embed": "fsdp",
    "vit_heads": "tensor",
    "vit_mlp": "tensor",
    # activations
    "activation_batch": ("data", "fsdp"),
    "activation_patches": ("data", "fsdp"),  # the vision tower's packed patches [P, E]
    "activation_length": None,
    "activation_embed": None,
    "activation_heads": "tensor",
    "activation_kv_heads": "tensor",
    "activation_vocab": "tensor",
}


# ----------------------------------------------------------------------------- mesh
def mesh_shape(shape: Mapping[str, int] | Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes from `config.mesh`; one entry may be -1 (fills the remaining devices).

    `shape` is a mapping over MESH_AXES (missing axes have size 1) or a sequence of three sizes.
    """
    if hasattr(shape, "items"):
        unknown = sorted(set(shape.keys()) - set(MESH_AXES))
        if unknown:
            raise ValueError(f"mesh has unknown axes {unknown}; the axes are {MESH_AXES}")
        sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    else:
        sizes = [int(s) for s in shape]
        if len(sizes) != len(MESH_AXES):
            raise ValueError(f"mesh={tuple(shape)} must give 3 sizes for the axes {MESH_AXES}")
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ValueError(f"mesh={dict(zip(MESH_AXES, sizes))}: sizes must be positive, with at most one -1")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if num_devices % known:
            raise ValueError(
                f"mesh={dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not divisible by the "
                f"fixed axes' product {known}, so -1 cannot fill the rest"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh={dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but {num_devices} are "
            "available; make the product match or set one axis to -1"
        )
    return tuple(sizes)


def make_mesh(shape: Mapping[str, int] | Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: every device of every process).

    Axes are `Auto` (GSPMD/Shardy propagate shardings between the constraints we set); the device
    order is the topology-aware one of `jax.make_mesh`.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = mesh_shape(shape, len(devices))
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


# ---------------------------------------------------------------------------- rules
def make_rules(overrides: Mapping[str, MeshAxes] | None = None) -> dict[str, tuple[str, ...]]:
    """DEFAULT_RULES updated by `overrides` (`config.sharding_rules`), each value a tuple of mesh axes."""
    merged = {**DEFAULT_RULES, **dict(overrides or {})}
    rules = {}
    for name, axes in merged.items():
        axes = _as_tuple(axes)
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise ValueError(f"sharding rule {name!r} -> {axes} names unknown mesh axes {unknown}; use {MESH_AXES}")
        if len(set(axes)) != len(axes):
            raise ValueError(f"sharding rule {name!r} -> {axes} repeats a mesh axis")
        rules[name] = axes
    return rules


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def logical_spec(axes: LogicalAxes, mesh: Mesh, rules: Rules, shape: Sequence[int] | None = None) -> PartitionSpec:
    """The PartitionSpec of an array whose dimensions have logical names `axes`.

    With `shape`, each dimension keeps the longest prefix of its mesh axes that divides its size;
    without it (batch inputs, whose size is only known later) the rule applies as written.
    """
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {tuple(axes)} do not match the rank of shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(axes):
        if name is not None and name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule (map it to None to replicate)")
        mesh_axes = [a for a in (_as_tuple(rules[name]) if name is not None else ()) if a not in used]
        if shape is not None:
            while mesh_axes and shape[dim] % math.prod(mesh.shape[a] for a in mesh_axes):
                mesh_axes.pop()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else tuple(mesh_axes))
    return PartitionSpec(*spec)


def rows_on_batch(ndim: int, row_axis: int = 0) -> LogicalAxes:
    """Logical axes of an array whose rows (dimension `row_axis`) are the batch: "activation_batch"
    there, replicated elsewhere."""
    return tuple("activation_batch" if d == row_axis else None for d in range(ndim))


def logical_sharding(axes: LogicalAxes, mesh: Mesh, rules: Rules, shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(axes, mesh, rules, shape))


def rows_sharding(shape: Sequence[int], mesh: Mesh, rules: Rules, row_axis: int = 0) -> NamedSharding:
    """Where an array of `shape` whose rows (`row_axis`) are the batch lives: its rows split over
    the batch mesh axes that divide them, the rest replicated."""
    return logical_sharding(rows_on_batch(len(shape), row_axis), mesh, rules, shape)


def place_rows(value, mesh: Mesh, rules: Rules, row_axis: int = 0) -> jax.Array:
    """`value` (a host array, the same on every process) as a global array on `rows_sharding`: each
    device is given only its rows."""
    value = np.asarray(value)
    target = rows_sharding(value.shape, mesh, rules, row_axis)
    return jax.make_array_from_callback(value.shape, target, lambda index: value[index])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# ------------------------------------------------------------ activation constraints
@dataclasses.dataclass(frozen=True)
class _Active:
    mesh: Mesh
    rules: Rules


_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar("pixel_jax_sharding", default=None)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Within this context (around tracing a jitted function), `constrain` shards activations."""
    token = _ACTIVE.set(_Active(mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, axes: LogicalAxes) -> jax.Array:
    """`with_sharding_constraint` of x to its logical axes under the active rules; identity outside them."""
    active = _ACTIVE.get()
    if active is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_sharding(axes, active.mesh, active.rules, x.shape))


# ------------------------------------------------------------------- model state
def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """The NamedSharding of every Variable (same tree), from its `out_sharding` logical axes."""

    def place(var: nnx.Variable) -> nnx.Variable:
        axes = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
        return var.replace(logical_sharding(axes, mesh, rules, var.shape))

    return jax.tree.map(place, abstract_state, is_leaf=_is_variable)


def shape_structs(abstract: Any, shardings: Any) -> Any:
    """Shape-only arrays (`jax.ShapeDtypeStruct`) of `abstract`, placed as `shardings` (the same
    tree): arguments to lower or restore into without allocating anything."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def abstract_sharded(
        create_model: Callable[[], nnx.Module], mesh: Mesh, rules: Rules
) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state) of the model, its state as shape-only arrays on their parameter shardings."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(create_model))
    return graphdef, shape_structs(abstract_state, state_shardings(abstract_state, mesh, rules))


def param_shardings_by_path(
        abstract_model: nnx.Module, mesh: Mesh, rules: Rules | None = None
) -> dict[str, jax.sharding.Sharding]:
    """{"language_model.layers.0.self_attn.q_proj.kernel": NamedSharding, ...} for every parameter."""
    shardings = state_shardings(nnx.state(abstract_model, nnx.Param), mesh, make_rules() if rules is None else rules)
    return {".".join(str(p) for p in path): var.get_value() for path, var in nnx.to_flat_state(shardings)}


def create_sharded(create_model: Callable[[], nnx.Module], mesh: Mesh, rules: Rules) -> nnx.Module:
    """Builds the model inside one jit whose outputs are the parameter shardings: no full copy anywhere."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(create_model))
    shardings = state_shardings(abstract_state, mesh, rules)
    state = jax.jit(lambda: nnx.split(create_model())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def optimizer_shardings(
        optimizer: optax.GradientTransformation, abstract_opt_state: Any, param_shardings: nnx.State, mesh: Mesh
) -> Any:
    """Optimizer state placed like the parameters it mirrors (Adam's μ, ν); scalars replicated."""
    return optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, abstract_opt_state, param_shardings,
        transform_non_params=lambda _: replicated(mesh), is_leaf=_is_variable,
    )


# ------------------------------------------------------------------------- batches
def batch_shardings(batch_axes: Mapping[str, LogicalAxes], mesh: Mesh, rules: Rules,
                    shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, NamedSharding]:
    """One NamedSharding per batch field from its logical axes (e.g. input_ids: activation_batch, _length);
    with `shapes`, each dimension keeps only the mesh axes that divide it (`logical_spec`)."""
    return {key: logical_sharding(axes, mesh, rules, None if shapes is None else shapes[key])
            for key, axes in batch_axes.items()}


def process_rows(batch_sharding: NamedSharding, global_rows: int) -> slice:
    """The rows of a global batch (axis 0) that this process loads and passes to `global_batch`.

    Rows follow the mesh: the process owns the rows its devices hold (all of them when the batch
    is replicated across processes).
    """
    rows = NamedSharding(batch_sharding.mesh, PartitionSpec(*batch_sharding.spec[:1]))
    blocks = {index[0].indices(global_rows)[:2] for index in rows.addressable_devices_indices_map((global_rows,)).values()}
    start, stop = min(b[0] for b in blocks), max(b[1] for b in blocks)
    if sum(b[1] - b[0] for b in blocks) != stop - start:
        raise ValueError(f"the rows of process {jax.process_index()} are not contiguous ({sorted(blocks)}); "
                         "order the mesh so that each process holds one range of the batch axis")
    return slice(start, stop)


def global_batch(local_batch: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
    """The global batch from this process's slice of it (multi-host data loading).

    Every process passes its own rows (the slices are concatenated in process order along the
    sharded dimensions); a replicated field must be passed whole and equal by every process.
    """
    if set(local_batch) != set(shardings):
        raise ValueError(
            f"batch fields {sorted(local_batch)} differ from the fields the step expects {sorted(shardings)}"
        )
    return {
        key: jax.make_array_from_process_local_data(shardings[key], np.asarray(value))
        for key, value in local_batch.items()
    }
