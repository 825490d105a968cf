"""Compile, without running, the programs of a training run on candidate meshes; print their memory.

    python launch/aot_compile.py --model=qwen2_5_vl_7b --mesh=1,8,1 --mesh=2,2,2 --batch=8 --seq=2048
    python launch/aot_compile.py --model=qwen2_5_vl_3b --mesh=2,2,2 --program=rollout --prompts=16

Each program is lowered with abstract (shape-only) sharded arguments and compiled by XLA's SPMD
partitioner, so nothing is allocated and no accelerator is needed. For each mesh the table gives,
per device, the bytes of the arguments, outputs (minus those aliased to donated arguments),
temporaries and their sum, the FLOPs of one call (`cost_analysis`), and whether the sum fits each
device memory asked for. This is how to pick the mesh and batch before renting machines.

Two compilers:
- by default XLA's CPU compiler, on `--devices` fake CPU devices: an estimate. It fuses and
  schedules otherwise than an accelerator's, and it undoes rematerialisation (its compiled
  program keeps no optimisation barrier; the temporaries stay about those without remat);
- with `--topology` (e.g. v5p:2x2x2), the TPU compiler of libtpu for that slice, on a machine
  without a TPU (pip install 'jax[tpu]'): the memory the TPU run will have.

The programs (`--program`, default all):
- train_step: the SFT step (forward, backward, AdamW) on `--batch` sequences of `--seq` tokens;
- rollout: the GRPO rollout engine (prefill, then decode and tool steps in one `while_loop`) on
  `--prompts` prompts sampled G times each, with the shapes of `configs/grpo.py:<--grpo-config>`
  (prompt and response budgets, calls, crop grid, sampling, G, view and canvas sizes). XLA counts a
  loop body once and a branch at its costlier side, so its FLOPs are those of the prefill plus one
  decode or tool step, whichever costs more, not of a whole rollout;
- grpo_step: the GRPO learner update (`rl.learner.make_update_step`: rewards, advantages, then
  gradient accumulation over M micro-batches and AdamW) on one batch of that config: its
  `data.pipeline.batch_size` prompts x G trajectories (`--learner-prompts` to change it), each of
  the shape the rollout returns (every slot and crop), and the prompts' images, in the config's
  `rl.micro_batches` (`--micro-batches` to change it). Its FLOPs are one micro-batch's forward and
  backward pass (a loop body, counted once).

New programs join `PROGRAMS` (name -> function lowering it for a `Setup`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from pixel_jax import config_validation, sharding
from pixel_jax import train_step as ts
from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.models.layers import REMAT_POLICIES
from pixel_jax.processing import image as image_processing
from pixel_jax.processing.tokenizer import load_tokenizer
from pixel_jax.rl import learner
from pixel_jax.rollout import engine as engine_lib
from pixel_jax.rollout.trajectory import row_axes
from pixel_jax.rollout.tool_step import ToolTables
from pixel_jax.tools.protocols import PROTOCOLS

GRPO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "grpo.py"
PAPER_SCALE = "model=qwen2_5_vl_7b,data=pixelreasoner"  # Pixel Reasoner's RL data at its image budgets
GB = 1e9


@dataclasses.dataclass(frozen=True)
class RolloutShapes:
    """The rollout program of a GRPO config: its static settings and the shapes of its inputs."""

    spec: engine_lib.RolloutSpec
    group_size: int  # G samples per prompt
    prompts: int  # global prompts per rollout batch (G·prompts rows after the prefill)
    prompt_len: int  # left-padded prompt slots (text and the view's visual tokens)
    view_hw: tuple[int, int]  # (H, W) px of the prompt image: the config's largest view bucket
    canvas_hw: tuple[int, int]  # (H, W) px of the padded originals the crops are cut from


@dataclasses.dataclass(frozen=True)
class LearnerShapes:
    """The GRPO update of a config: its coefficients and how many prompts' groups a batch holds."""

    config: learner.LearnerConfig
    prompts: int  # Q: the batch is Q·G trajectories of the rollout's shapes


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
    rollout: RolloutShapes | None = None  # built only when the rollout or the GRPO step is compiled
    learner: LearnerShapes | None = None  # built only when the GRPO step is compiled

    def create_model(self) -> qvl.Qwen2_5_VL:
        return qvl.Qwen2_5_VL(self.config, rngs=nnx.Rngs(0))


def train_step_inputs(setup: Setup) -> tuple[ts.TrainPlan, dict[str, jax.ShapeDtypeStruct]]:
    """The plan (its abstract state) and the abstract global batch of the train step, all sharded."""
    plan = ts.plan_training(setup.create_model, ts.adamw(1e-5, weight_decay=0.1), setup.mesh, setup.rules)
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


def load_grpo_config(arg: str) -> ml_collections.ConfigDict:
    """`configs/grpo.py:<arg>` (the checkout's configs folder is not an installed package)."""
    spec = importlib.util.spec_from_file_location("grpo_config", GRPO_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def rollout_shapes(run: ml_collections.ConfigDict, config: qvl.Qwen2_5_VLConfig, prompts: int,
                   tokenizer: str | None = None) -> RolloutShapes:
    """The rollout of GRPO config `run` for the architecture `config`, with the tool tables of
    `tokenizer` (a local checkpoint folder; None: the packaged tokenizer, whose ids all lie below
    every preset's vocabulary size, so its tables fit the 3B-72B presets too)."""
    tok = load_tokenizer(tokenizer)
    rollout = run.rollout
    tables = ToolTables.build(PROTOCOLS.get(run.protocol), tok, config, crop_hw=tuple(run.tools.crop_hw),
                              max_calls=rollout.max_calls, window=run.tools.parser_window)
    stop_ids = (tok.special.im_end, tok.special.endoftext)
    largest_id = max(int(tables.chunk_tokens.max()), *stop_ids, *tables.close_ids)
    if largest_id >= config.vocab_size:
        raise ValueError(f"the tokenizer's ids reach {largest_id} but the model's vocabulary has {config.vocab_size} "
                         "tokens: give the tokenizer of the --model checkpoint (--tokenizer)")
    first_turn, later_turns = config_validation.sampling_params(rollout)
    spec = engine_lib.RolloutSpec(max_new_tokens=rollout.max_new_tokens, stop_ids=stop_ids, first_turn=first_turn,
                                  later_turns=later_turns, max_calls=rollout.max_calls, tools=tables)
    view_hw = max(run.data.pipeline.view_sizes, key=math.prod)
    return RolloutShapes(spec, run.rl.group_size, prompts, rollout.max_prompt_len, tuple(view_hw),
                         tuple(run.data.pipeline.canvas_size))


def rollout_inputs(setup: Setup) -> tuple[engine_lib.Engine, nnx.Module, dict[str, jax.ShapeDtypeStruct],
                                          jax.ShapeDtypeStruct]:
    """The engine, and its abstract sharded arguments: model, prompt batch, PRNG key.

    The batch holds one image per prompt (the `Engine.__call__` layout for group sampling), every
    field split by rows (`activation_batch`) as far as the prompt count divides.
    """
    shapes, mesh, rules = setup.rollout, setup.mesh, setup.rules
    model = nnx.merge(*sharding.abstract_sharded(setup.create_model, mesh, rules))  # shape-only, on its shardings
    b, p = shapes.prompts, shapes.prompt_len
    patches = math.prod(image_processing.patch_grid(1, *shapes.view_hw))
    fields = {
        "input_ids": ((b, p), jnp.int32),
        "attention_mask": ((b, p), jnp.int32),
        "pixel_values": ((b, patches, setup.config.vision.patch_dim), jnp.uint8),  # [B, P0, patch_dim] raw patches
        "image_grid_thw": ((b, 3), jnp.int32),
        "original": ((b, *shapes.canvas_hw, 3), jnp.uint8),  # [B, Hc, Wc, 3]
        "original_wh": ((b, 2), jnp.int32),
        "view_wh": ((b, 2), jnp.int32),
    }
    batch = {key: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.rows_sharding(shape, mesh, rules))
             for key, (shape, dtype) in fields.items()}
    key = jax.eval_shape(jax.random.key, 0)
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))
    return engine_lib.Engine(model, shapes.spec, mesh=mesh, rules=rules), model, batch, rng


def lower_rollout(setup: Setup) -> jax.stages.Lowered:
    """The GRPO rollout of `pixel_jax.rollout.engine`: G samples of every prompt, tools in the loop.

    Lowered through the public call (the engine's own jit is inlined into this one), so the
    program is exactly the one `Engine.__call__` runs.
    """
    engine, model, batch, rng = rollout_inputs(setup)
    rollout = lambda m, b, r: engine(m, b, r, group_size=setup.rollout.group_size)
    return jax.jit(rollout).lower(model, batch, rng)


def grpo_step_inputs(setup: Setup) -> tuple[learner.LearnerPlan, learner.LearnerState, nnx.State,
                                            learner.RolloutBatch]:
    """The learner plan and the abstract sharded arguments of its update: state, frozen parameters
    and a rollout batch of Q·G trajectories shaped as the rollout program returns them, with the Q
    prompt images (`RolloutBatch`, as `rl.loop` assembles it)."""
    plan = learner.plan_learner(setup.create_model, setup.learner.config, setup.mesh, setup.rules)
    state, frozen = jax.eval_shape(lambda: learner.init_learner(plan, setup.create_model()))
    shapes = dataclasses.replace(setup.rollout, prompts=setup.learner.prompts)
    engine, model, prompts, rng = rollout_inputs(dataclasses.replace(setup, rollout=shapes))
    trajectory = jax.eval_shape(lambda m, b, r: engine(m, b, r, group_size=shapes.group_size), model, prompts, rng)
    batch = learner.RolloutBatch(trajectory=trajectory,
                                 task_reward=jax.ShapeDtypeStruct(trajectory.tokens.shape[:1], jnp.float32),  # [Q·G]
                                 prompt_pixel_values=prompts["pixel_values"], prompt_grid_thw=prompts["image_grid_thw"])
    places = jax.tree.map(lambda x, axis: sharding.rows_sharding(x.shape, setup.mesh, setup.rules, axis), batch,
                          row_axes(batch))
    batch = sharding.shape_structs(batch, places)  # as `learner.shard_batch` places it
    return (plan, sharding.shape_structs(state, plan.state_shardings),
            sharding.shape_structs(frozen, plan.frozen_shardings), batch)


def lower_grpo_step(setup: Setup) -> jax.stages.Lowered:
    """The GRPO learner update of `pixel_jax.rl.learner` (the state donated), as `rl.loop` runs it."""
    plan, state, frozen, batch = grpo_step_inputs(setup)
    return learner.make_update_step(plan).lower(state, frozen, batch)


# The programs of a run, compiled in this order: functions Setup -> Lowered.
PROGRAMS: dict[str, Callable[[Setup], jax.stages.Lowered]] = {"train_step": lower_train_step,
                                                              "rollout": lower_rollout,
                                                              "grpo_step": lower_grpo_step}


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
    """12.3 GB, 450 MB, 1.04 PFLOP: three significant digits, SI prefixes."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
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
    parser.add_argument("--model", choices=config_validation.MODEL_PRESETS, default="qwen2_5_vl_7b")
    parser.add_argument("--mesh", action="append", required=True,
                        help="data,fsdp,tensor sizes (one may be -1); repeat for several meshes")
    parser.add_argument("--devices", type=int, default=8, help="fake CPU devices to compile for")
    parser.add_argument("--topology", default=None,
                        help="compile with the TPU compiler for this slice instead, e.g. v5p:2x2x2 (8 chips); "
                             "needs libtpu (pip install 'jax[tpu]'), not a TPU")
    parser.add_argument("--program", action="append", choices=list(PROGRAMS), default=None,
                        help="a program to compile; repeat for several (default: all)")
    parser.add_argument("--param-dtype", default="bfloat16")
    parser.add_argument("--dtype", default="bfloat16", help="activation dtype")
    parser.add_argument("--remat", choices=list(REMAT_POLICIES), default="full",
                        help="what the train step's backward pass recomputes per layer (configs' paper scale: full)")
    parser.add_argument("--memory", action="append", default=None,
                        help="name=GB of a device memory to check against (default: v5p=95, H100=80)")
    train = parser.add_argument_group("train_step")
    train.add_argument("--batch", type=int, default=8, help="global sequences per step")
    train.add_argument("--seq", type=int, default=2048, help="tokens per sequence")
    train.add_argument("--images-per-row", type=int, default=1)
    train.add_argument("--image-grid", default="32,32", help="patches h,w of each image (32,32 = 448x448 px)")
    rollout = parser.add_argument_group("rollout")
    rollout.add_argument("--grpo-config", default=PAPER_SCALE,
                         help="arg of configs/grpo.py whose rollout shapes are compiled (the architecture is --model)")
    rollout.add_argument("--prompts", type=int, default=None,
                         help="global prompts per rollout batch, each sampled G times (default: one per device)")
    rollout.add_argument("--tokenizer", default=None,
                         help="local checkpoint folder of the tool tables' tokenizer (default: the packaged one)")
    grpo = parser.add_argument_group("grpo_step (rollout shapes from --grpo-config)")
    grpo.add_argument("--learner-prompts", type=int, default=None,
                      help="prompts per learner batch, G trajectories each (default: the config's batch size)")
    grpo.add_argument("--micro-batches", type=int, default=None,
                      help="gradient-accumulation micro-batches (default: the config's rl.micro_batches)")
    return parser.parse_args(argv)


def tpu_devices(topology: str) -> list:
    """The chips of a TPU slice ("v5p:2x2x2"), from libtpu's compiler: programs lowered on a mesh
    of them compile for that TPU (`.compile()`) on a machine without one."""
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except Exception as e:  # no TPU plugin, or a name it does not know
        raise ValueError(f"--topology={topology!r}: no TPU compiler for it ({type(e).__name__}: {e}); "
                         "install libtpu with pip install 'jax[tpu]' and name a slice such as v5p:2x2x2") from e


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
    devices = tpu_devices(args.topology) if args.topology else jax.devices()
    meshes = {text: sharding.make_mesh(_ints(text, "mesh"), devices) for text in args.mesh}
    config = config_validation.model_config(
        ml_collections.ConfigDict({"preset": args.model, "dtype": args.dtype, "param_dtype": args.param_dtype,
                                   "remat": args.remat}))
    programs = args.program or list(PROGRAMS)
    target = (f"TPU compiler, {args.topology} ({len(devices)} chips)" if args.topology
              else f"XLA CPU estimate, {len(devices)} devices")
    lines = [f"{args.model}: params {args.param_dtype}, activations {args.dtype}, remat {args.remat}; {target}; "
             "bytes and FLOPs per device"]
    if "train_step" in programs:
        lines.append(f"train_step: AdamW; global batch {args.batch} x {args.seq} tokens, {args.images_per_row} "
                     f"image(s) of {grid[0]}x{grid[1]} patches per row")
    shapes = learner_shapes = None
    if "rollout" in programs or "grpo_step" in programs:
        prompts = len(jax.devices()) if args.prompts is None else args.prompts
        if prompts < 1:
            raise ValueError(f"--prompts={prompts} must be >= 1")
        run = load_grpo_config(args.grpo_config)
        shapes = rollout_shapes(run, config, prompts, args.tokenizer)
    if "rollout" in programs:
        lines.append(describe_rollout(shapes, args.grpo_config))
    if "grpo_step" in programs:
        learner_shapes = grpo_shapes(run, args.learner_prompts, args.micro_batches)
        lines.append(describe_grpo_step(learner_shapes, shapes, args.grpo_config))

    rules = sharding.make_rules()
    rows, notes = [], []
    for text, mesh in meshes.items():
        notes += [f"mesh {text}: {note}" for note in replicated_by_divisibility(config, mesh, rules)]
        setup = Setup(config, mesh, rules, args.batch, args.seq, args.images_per_row, grid, shapes, learner_shapes)
        rows += [measure(name, PROGRAMS[name], setup) for name in programs]
    return rows, "\n".join(notes + lines + [table(rows, memories)])


def describe_rollout(shapes: RolloutShapes, grpo_arg: str) -> str:
    """The line under the table that says what the rollout row compiled."""
    spec = shapes.spec
    (vh, vw), (ch, cw), (h, w) = shapes.view_hw, shapes.canvas_hw, spec.tools.image_hw
    first, later = spec.first_turn, spec.later_turns
    return (f"rollout (configs/grpo.py:{grpo_arg}): {shapes.prompts} prompts x G={shapes.group_size} samples; "
            f"prompt {shapes.prompt_len} slots with a {vh}x{vw} px view; up to {spec.max_new_tokens} new tokens and "
            f"{spec.max_calls} calls showing {h}x{w} px crops ({spec.tools.chunk_len}-slot results) = "
            f"{spec.cache_slots(shapes.prompt_len)} cache slots per row; originals {ch}x{cw} px; T {first.temperature}"
            f" (later {later.temperature}), top-k {first.top_k}, top-p {first.top_p}; FLOPs: the prefill and one "
            "loop step (XLA counts a loop body once, a branch at its costlier side)")


def grpo_shapes(run: ml_collections.ConfigDict, prompts: int | None, micro_batches: int | None) -> LearnerShapes:
    """The learner update of GRPO config `run`, with its batch (Q prompts) and micro-batch count
    overridden when given."""
    prompts = run.data.pipeline.batch_size if prompts is None else prompts
    if prompts < 1:
        raise ValueError(f"--learner-prompts={prompts} must be >= 1")
    config = config_validation.learner_config(run)
    if micro_batches is not None:
        config = dataclasses.replace(config, micro_batches=micro_batches)
    if prompts % config.micro_batches:
        raise ValueError(f"the {prompts} prompts' groups do not split into {config.micro_batches} micro-batches "
                         "(a micro-batch holds whole groups)")
    return LearnerShapes(config, prompts)


def describe_grpo_step(shapes: LearnerShapes, rollout: RolloutShapes, grpo_arg: str) -> str:
    """The line under the table that says what the grpo_step row compiled."""
    config, rows = shapes.config, shapes.prompts * shapes.config.group_size
    extras = [f"π_ref (KL {config.kl_coef})"] * (config.kl_coef > 0)
    extras += [f"frozen {config.frozen}"] * bool(config.frozen)
    return (f"grpo_step (configs/grpo.py:{grpo_arg}): Q={shapes.prompts} prompts x G={config.group_size} = {rows} "
            f"trajectories of {rollout.spec.cache_slots(rollout.prompt_len)} slots with up to "
            f"{rollout.spec.max_calls} crops, a {rollout.view_hw[0]}x{rollout.view_hw[1]} px prompt image per group; "
            f"M={config.micro_batches} micro-batches of {rows // config.micro_batches} rows, "
            f"μ={config.policy_iterations} policy iterations, AdamW{''.join(', ' + e for e in extras)}; "
            "FLOPs: one micro-batch's forward and backward pass (XLA counts a loop body once)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)
    print(report(args)[1])


if __name__ == "__main__":
    main()
