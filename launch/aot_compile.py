"""Compile, without running, the programs of a training run on candidate meshes; print their memory.

    python launch/aot_compile.py --model=qwen2_5_vl_7b --mesh=1,8,1 --mesh=2,2,2 --batch=8 --seq=2048

Each program is lowered with abstract (shape-only) sharded arguments on fake CPU devices and
compiled by XLA's SPMD partitioner, so nothing is allocated and no accelerator is needed. For each
mesh the table gives, per device, the bytes of the arguments, outputs (minus those aliased to
donated arguments), temporaries and their sum, the FLOPs of one call (`cost_analysis`), and
whether the sum fits each device memory asked for. This is how to pick the mesh and batch before
renting machines. The numbers come from XLA's CPU compiler: accelerator compilers fuse and
schedule differently, so treat temporaries as an estimate and keep a margin.

New programs join `PROGRAMS` (name -> function lowering it for a `Setup`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pixel_jax import sharding
from pixel_jax import train_step as ts
from pixel_jax.models import qwen2_5_vl as qvl

PRESETS = ("tiny", "qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen2_5_vl_32b", "qwen2_5_vl_72b")
GB = 1e9


@dataclasses.dataclass(frozen=True)
class Setup:
    """What one row of the table compiles: a model on a mesh, with a batch shape."""

    config: qvl.Qwen2_5_VLConfig
    mesh: jax.sharding.Mesh
    rules: sharding.Rules
    batch: int  # sequences per step (global)
    seq: int  # tokens per sequence
    images_per_row: int
    image_grid: tuple[int, int]  # patches (h, w) of each image: h·w/4 visual tokens


def train_step_inputs(setup: Setup) -> tuple[ts.TrainPlan, dict[str, jax.ShapeDtypeStruct]]:
    """The plan (its abstract state) and the abstract global batch of the train step, all sharded."""
    create = lambda: qvl.Qwen2_5_VL(setup.config, rngs=nnx.Rngs(0))
    plan = ts.plan_training(create, ts.adamw(1e-5, weight_decay=0.1), setup.mesh, setup.rules)
    shardings = sharding.batch_shardings(_fields(setup), setup.mesh, setup.rules)
    images = setup.batch * setup.images_per_row
    shapes = {
        "input_ids": ((setup.batch, setup.seq), jnp.int32),
        "attention_mask": ((setup.batch, setup.seq), jnp.int32),
        "loss_mask": ((setup.batch, setup.seq), jnp.int32),
        "pixel_values": ((images * math.prod(setup.image_grid), setup.config.vision.patch_dim), jnp.float32),
        "image_grid_thw": ((images, 3), jnp.int32),
    }
    return plan, {key: jax.ShapeDtypeStruct(*shapes[key], sharding=shardings[key]) for key in shardings}


def lower_train_step(setup: Setup) -> jax.stages.Lowered:
    """The SFT train step (forward, backward, AdamW) of `pixel_jax.train_step`."""
    plan, batch = train_step_inputs(setup)
    return ts.make_train_step(plan, _fields(setup)).lower(plan.abstract_state, batch)


def _fields(setup: Setup) -> dict[str, sharding.LogicalAxes]:
    return ts.batch_axes(ts.IMAGE_FIELDS if setup.images_per_row else ts.TEXT_FIELDS)


# The programs of a run, compiled in this order. The rollout joins here once `pixel_jax.rollout`
# exposes its compiled program with explicit shardings: a function Setup -> Lowered like the above.
PROGRAMS: dict[str, Callable[[Setup], jax.stages.Lowered]] = {"train_step": lower_train_step}


@dataclasses.dataclass(frozen=True)
class Row:
    program: str
    mesh: str
    arguments: float  # bytes per device
    outputs: float  # not aliased to a donated argument
    temporaries: float
    flops: float  # per device, one call
    seconds: float  # lowering + compilation

    @property
    def total(self) -> float:
        return self.arguments + self.outputs + self.temporaries


def measure(program: str, lower: Callable[[Setup], jax.stages.Lowered], setup: Setup) -> Row:
    start = time.perf_counter()
    compiled = lower(setup).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    return Row(
        program=program,
        mesh=",".join(str(setup.mesh.shape[a]) for a in sharding.MESH_AXES),
        arguments=memory.argument_size_in_bytes,
        outputs=memory.output_size_in_bytes - memory.alias_size_in_bytes,
        temporaries=memory.temp_size_in_bytes,
        flops=cost.get("flops", float("nan")),
        seconds=seconds,
    )


def _si(value: float, unit: str) -> str:
    """12.3 GB, 450 MB, 1.2 TFLOP: three significant digits, SI prefixes."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def table(rows: list[Row], memories: dict[str, float]) -> str:
    head = ["program", "mesh (data,fsdp,tensor)", "arguments", "outputs", "temporaries", "total", "FLOPs",
            "compile"]
    head += [f"fits {name} ({size:g} GB)" for name, size in memories.items()]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r.program, r.mesh, _si(r.arguments, "B"), _si(r.outputs, "B"), _si(r.temporaries, "B"),
                 _si(r.total, "B"), _si(r.flops, "FLOP"), f"{r.seconds:.0f} s"]
        cells += [f"{'yes' if r.total <= size * GB else 'no'} ({100 * r.total / (size * GB):.0f}%)"
                  for size in memories.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replicated_by_divisibility(config: qvl.Qwen2_5_VLConfig, mesh, rules) -> list[str]:
    """Parameter axes that their rule's mesh axes do not divide, e.g. "q_heads=28 not divisible by tensor"."""
    abstract = nnx.state(nnx.eval_shape(lambda: qvl.Qwen2_5_VL(config, rngs=nnx.Rngs(0))), nnx.Param)
    notes = set()
    for var in jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        axes = var.get_metadata()["out_sharding"]
        as_written = sharding.logical_spec(axes, mesh, rules)
        fitted = sharding.logical_spec(axes, mesh, rules, var.shape)
        for name, size, want, got in zip(axes, var.shape, as_written, fitted):
            if want != got:
                notes.add(f"{name}={size} not divisible by {want}: "
                          + ("replicated" if got is None else f"split over {got} only"))
    return sorted(notes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=PRESETS, default="qwen2_5_vl_7b")
    parser.add_argument("--mesh", action="append", required=True,
                        help="data,fsdp,tensor sizes (one may be -1); repeat for several meshes")
    parser.add_argument("--devices", type=int, default=8, help="fake CPU devices to compile for")
    parser.add_argument("--batch", type=int, default=8, help="global sequences per step")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--images-per-row", type=int, default=1)
    parser.add_argument("--image-grid", default="32,32", help="patches h,w of each image (32,32 = 448x448 px)")
    parser.add_argument("--param-dtype", default="bfloat16")
    parser.add_argument("--dtype", default="bfloat16", help="activation dtype")
    parser.add_argument("--memory", action="append", default=None,
                        help="name=GB of a device memory to check against (default: v5p=95, H100=80)")
    parser.add_argument("--program", action="append", choices=sorted(PROGRAMS), default=None)
    return parser.parse_args(argv)


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as e:
        raise ValueError(f"--{name}={text!r} must be comma-separated integers") from e


def report(args: argparse.Namespace) -> tuple[list[Row], str]:
    """Compiles every program on every mesh of `args` over `jax.devices()`; the rows and the printout."""
    memories = {}
    for item in args.memory or ["v5p=95", "H100=80"]:
        name, _, size = item.partition("=")
        if not size:
            raise ValueError(f"--memory={item!r} must be name=GB, e.g. v5p=95")
        memories[name] = float(size)
    grid = _ints(args.image_grid, "image-grid")
    if len(grid) != 2 or any(g % 2 for g in grid):
        raise ValueError(f"--image-grid={args.image_grid!r} must be two even patch counts h,w")
    if args.images_per_row * grid[0] * grid[1] // 4 > args.seq:
        raise ValueError(f"{args.images_per_row} images of {grid} patches do not fit in --seq={args.seq} tokens")
    meshes = {text: sharding.make_mesh(_ints(text, "mesh")) for text in args.mesh}
    config = getattr(qvl.Qwen2_5_VLConfig, args.model)(param_dtype=args.param_dtype, dtype=args.dtype)

    rules = sharding.make_rules()
    rows, lines = [], []
    for text, mesh in meshes.items():
        lines += [f"mesh {text}: {note}" for note in replicated_by_divisibility(config, mesh, rules)]
        setup = Setup(config, mesh, rules, args.batch, args.seq, args.images_per_row, grid)
        rows += [measure(name, PROGRAMS[name], setup) for name in args.program or PROGRAMS]
    lines.append(
        f"{args.model}: params {args.param_dtype}, activations {args.dtype}, AdamW; global batch {args.batch} x "
        f"{args.seq} tokens, {args.images_per_row} image(s) of {grid[0]}x{grid[1]} patches per row; "
        f"{len(jax.devices())} devices; bytes and FLOPs per device"
    )
    lines.append(table(rows, memories))
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)
    print(report(args)[1])


if __name__ == "__main__":
    main()
