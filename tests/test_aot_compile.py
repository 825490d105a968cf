"""launch/aot_compile.py compiles the train step, the rollout and the GRPO update of a small preset on
fake devices and prints their table."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "aot_compile.py"
_spec = importlib.util.spec_from_file_location("aot_compile", SCRIPT)
aot = sys.modules["aot_compile"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(aot)

SMALL = ["--model=tiny", "--batch=8", "--seq=64", "--image-grid=4,4", "--param-dtype=float32", "--dtype=float32",
         "--grpo-config=runlocal", "--prompts=4"]
MESH = (1, 2, 4)  # rows split over fsdp=2, heads over tensor=4 (the tiny model's 2 kv heads stay whole)


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def shard_bytes(leaves) -> int:
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)


def full_bytes(leaves) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)


@pytest.fixture(scope="module")
def small_report():
    """Every program (the default) of the tiny model on MESH, with the runlocal GRPO rollout and update."""
    rows, text = aot.report(aot.parse_args(SMALL + ["--mesh=1,2,-1", "--memory=big=1", "--memory=small=0.001"]))
    return {row.program: row for row in rows}, text.splitlines()


def small_setup(rollout=None, learner=None):
    return aot.Setup(aot.qvl.Qwen2_5_VLConfig.tiny(), aot.sharding.make_mesh(MESH), aot.sharding.make_rules(),
                     8, 64, 1, (4, 4), rollout, learner)


def table_row(lines: list[str], program: str) -> list[str]:
    return cells(next(line for line in lines if line.startswith(f"| {program} ")))


def test_table_has_a_row_per_program(small_report):
    rows, lines = small_report
    assert lines[:2] == ["mesh 1,2,-1: kv_heads=2 not divisible by tensor: replicated",
                         "mesh 1,2,-1: vit_heads=2 not divisible by tensor: replicated"]
    header = next(i for i, line in enumerate(lines) if line.startswith("| program"))
    assert cells(lines[header]) == ["program", "mesh (data,fsdp,tensor)", "arguments", "outputs", "temporaries",
                                    "total", "FLOPs", "compile", "fits big (1 GB)", "fits small (0.001 GB)"]
    assert [cells(line)[:2] for line in lines[header + 2:]] == [["train_step", "1,2,4"], ["rollout", "1,2,4"],
                                                                ["grpo_step", "1,2,4"]]
    for program, row in rows.items():
        assert table_row(lines, program)[2:7] == [aot._si(row.arguments, "B"), aot._si(row.outputs, "B"),
                                                  aot._si(row.temporaries, "B"), aot._si(row.total, "B"),
                                                  aot._si(row.flops, "FLOP")]
        assert table_row(lines, program)[-2][:3] == "yes" and table_row(lines, program)[-1][:2] == "no"


def test_train_step_row_is_the_sharded_donated_state(small_report):
    row = small_report[0]["train_step"]
    # arguments: exactly one device's shards of the parameters, Adam moments, step and batch
    plan, batch = aot.train_step_inputs(small_setup())
    leaves = jax.tree.leaves((plan.abstract_state, batch))
    assert row.arguments == shard_bytes(leaves)
    assert row.arguments < full_bytes(leaves) / 2  # sharded state
    assert 0 < row.outputs < row.arguments / 100  # the state is donated: only the metrics are new outputs
    assert row.temporaries > 0 and row.flops > 1e6


def test_rollout_row_is_the_engine_program_at_the_configs_shapes(small_report):
    rows, lines = small_report
    row = rows["rollout"]
    run = aot.load_grpo_config("runlocal")  # the shapes are the config's, whatever its sizes
    view_h, view_w = max(run.data.pipeline.view_sizes, key=math.prod)  # the largest view bucket
    crop_h, crop_w = run.tools.crop_hw
    assert next(line for line in lines if line.startswith("rollout")).startswith(
        f"rollout (configs/grpo.py:runlocal): 4 prompts x G={run.rl.group_size} samples; prompt "
        f"{run.rollout.max_prompt_len} slots with a {view_h}x{view_w} px view; up to {run.rollout.max_new_tokens} new "
        f"tokens and {run.rollout.max_calls} calls showing {crop_h}x{crop_w} px crops")
    shapes = aot.rollout_shapes(run, aot.qvl.Qwen2_5_VLConfig.tiny(), prompts=4)
    engine, model, batch, rng = aot.rollout_inputs(small_setup(shapes))

    # arguments: exactly one device's shards of the parameters, the prompt batch and the key
    arguments = jax.tree.leaves((model, batch, rng))
    assert row.arguments == shard_bytes(arguments) < full_bytes(arguments)
    canvas_h, canvas_w = run.data.pipeline.canvas_size
    assert batch["original"].sharding.shard_shape(batch["original"].shape) == (2, canvas_h, canvas_w, 3)  # over fsdp

    # outputs: the trajectory of the 4·8 rows, no smaller than split over the 2 row shards, no larger than whole
    rollout = lambda m, b, r: engine(m, b, r, group_size=8)
    trajectory = jax.eval_shape(rollout, model, batch, rng)
    slots = run.rollout.max_prompt_len + run.rollout.max_new_tokens + run.rollout.max_calls * shapes.spec.tools.chunk_len
    assert trajectory.tokens.shape == (4 * 8, slots)
    assert full_bytes(jax.tree.leaves(trajectory)) / 2 <= row.outputs <= full_bytes(jax.tree.leaves(trajectory))

    # temporaries hold at least this device's KV cache: 2 layers x (k, v) of 16 rows x S slots x 2 heads x 16
    cache = 2 * 2 * 16 * trajectory.tokens.shape[1] * 2 * 16 * np.dtype(np.float32).itemsize
    assert row.temporaries >= cache

    # FLOPs: at least the decoder's matmuls over the prompt tokens, split over all 8 devices
    decoder = nnx.state(nnx.eval_shape(lambda: aot.qvl.Qwen2_5_VL(aot.qvl.Qwen2_5_VLConfig.tiny(), rngs=nnx.Rngs(0)))
                        .language_model.layers, nnx.Param)
    matmul_params = sum(math.prod(v.shape) for path, v in nnx.to_flat_state(decoder) if path[-1] == "kernel")
    assert row.flops >= 2 * matmul_params * 4 * run.rollout.max_prompt_len / 8


def test_grpo_step_row_is_the_learner_update_on_the_rollouts_trajectories(small_report):
    rows, lines = small_report
    row = rows["grpo_step"]
    run = aot.load_grpo_config("runlocal")
    q, g = run.data.pipeline.batch_size, run.rl.group_size  # the config's learner batch: Q groups of G
    shapes = aot.rollout_shapes(run, aot.qvl.Qwen2_5_VLConfig.tiny(), prompts=4)
    slots = shapes.spec.cache_slots(shapes.prompt_len)
    assert next(line for line in lines if line.startswith("grpo_step")).startswith(
        f"grpo_step (configs/grpo.py:runlocal): Q={q} prompts x G={g} = {q * g} trajectories of {slots} slots")
    plan, state, frozen, batch = aot.grpo_step_inputs(small_setup(shapes, aot.grpo_shapes(run, None, None)))

    # the batch is what the rollout returns for Q prompts, with their images, rows split over fsdp
    engine, model, prompts, rng = aot.rollout_inputs(small_setup(dataclasses.replace(shapes, prompts=q)))
    trajectory = jax.eval_shape(lambda m, b, r: engine(m, b, r, group_size=g), model, prompts, rng)
    assert jax.tree.map(lambda x: x.shape, batch.trajectory) == jax.tree.map(lambda x: x.shape, trajectory)
    assert batch.prompt_pixel_values.shape == prompts["pixel_values"].shape  # [Q, P0, patch_dim]: once per group
    assert batch.trajectory.tokens.sharding.shard_shape((q * g, slots)) == (q * g // 2, slots)
    assert batch.trajectory.positions.sharding.shard_shape((3, q * g, slots)) == (3, q * g // 2, slots)

    # arguments: one device's shards of θ, its Adam moments, the counters and the batch (XLA drops the
    # trajectory's bookkeeping that the update never reads); the state is donated
    unread = ("n_crops", "n_errors", "call_boxes", "call_targets", "call_frames", "finish", "response_length")
    read = batch.replace(trajectory=batch.trajectory.replace(**dict.fromkeys(unread)))
    leaves = jax.tree.leaves((state, frozen, read))
    assert row.arguments == shard_bytes(leaves) < full_bytes(leaves)
    assert 0 < row.outputs < 10_000  # the metrics only
    assert row.temporaries > shard_bytes(jax.tree.leaves(state.params))  # at least the gradient accumulator

    # FLOPs: at least forward and backward (2 + 4 per parameter and token) of the decoder's matmuls over
    # one micro-batch's slots, split over all 8 devices
    decoder = nnx.state(nnx.eval_shape(lambda: aot.qvl.Qwen2_5_VL(aot.qvl.Qwen2_5_VLConfig.tiny(), rngs=nnx.Rngs(0)))
                        .language_model.layers, nnx.Param)
    matmul_params = sum(math.prod(v.shape) for path, v in nnx.to_flat_state(decoder) if path[-1] == "kernel")
    micro_rows = q * g // run.rl.micro_batches
    assert row.flops >= 6 * matmul_params * micro_rows * slots / 8


def test_paper_scale_grpo_step_is_the_configs_batch_unless_overridden():
    run = aot.load_grpo_config(aot.PAPER_SCALE)
    paper = aot.grpo_shapes(run, None, None)
    assert (paper.prompts, paper.config.group_size, paper.config.micro_batches) == (256, 8, 16)
    assert paper.config == aot.config_validation.learner_config(run)
    smaller = aot.grpo_shapes(run, 32, 8)
    assert (smaller.prompts, smaller.config.micro_batches) == (32, 8)


@pytest.mark.parametrize("value, unit, text", [(1.04e15, "FLOP", "1.04 PFLOP"), (70.6e9, "B", "70.6 GB"),
                                               (18_600, "B", "18.6 kB"), (12, "B", "12 B")])
def test_sizes_print_with_three_digits_and_an_si_prefix(value, unit, text):
    assert aot._si(value, unit) == text


def test_packaged_tokenizer_tables_fit_the_7b_vocabulary():
    config = aot.qvl.Qwen2_5_VLConfig.qwen2_5_vl_7b()
    shapes = aot.rollout_shapes(aot.load_grpo_config(aot.PAPER_SCALE), config, prompts=8)
    tables = shapes.spec.tools
    # paper scale: 640 text slots + the 1008x1512 px view's 1944 tokens; 961-token (31x31) crops of 868x868 px
    assert (shapes.prompt_len, shapes.view_hw, tables.image_hw) == (640 + 1008 * 1512 // 28**2, (1008, 1512),
                                                                    (31 * 28, 31 * 28))
    assert (shapes.group_size, shapes.spec.max_new_tokens, shapes.spec.max_calls) == (8, 2048, 3)
    pads = (tables.chunk_tokens == config.image_token_id).sum(axis=-1)  # [call, shown, outcome]
    assert set(np.unique(pads)) == {0, 31 * 31}  # error texts have none, a crop result the 7B's own pad id
    assert max(tables.chunk_tokens.max(), *shapes.spec.stop_ids, *tables.close_ids) < config.vocab_size


def test_the_command_line_compiles_on_the_fake_devices_it_asks_for():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = ["--model=tiny", "--mesh=2,1,-1", "--devices=4", "--batch=2", "--seq=32", "--images-per-row=0",
            "--program=train_step"]
    result = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 devices; bytes and FLOPs per device" in result.stdout
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| ") and "program" not in line]
    assert cells(row)[:2] == ["train_step", "2,1,2"]
    assert cells(row)[-2:] == ["yes (0%)", "yes (0%)"]  # default memories: v5p 95 GB, H100 80 GB


def test_a_tokenizer_beyond_the_models_vocabulary_is_refused():
    small_vocabulary = aot.qvl.Qwen2_5_VLConfig.tiny(vocab_size=1990)  # the packaged tokenizer has 2,000 ids
    with pytest.raises(ValueError, match="the tokenizer's ids reach 1999 but the model's vocabulary has 1990"):
        aot.rollout_shapes(aot.load_grpo_config("runlocal"), small_vocabulary, prompts=1)


@pytest.mark.parametrize("args, message", [
    (["--mesh=3,1,1"], "has 3 devices but 8 are available"),
    (["--mesh=1,1,8", "--memory=v5p"], "--memory='v5p' must be name=GB"),
    (["--mesh=1,1,8", "--image-grid=3,4"], "must be two even patch counts"),
    (["--mesh=1,1,8", "--seq=2"], "do not fit in --seq=2 tokens"),
    (["--mesh=1,x,8"], "--mesh='1,x,8' must be comma-separated integers"),
    (["--mesh=1,1,8", "--prompts=0"], "--prompts=0 must be >= 1"),
    (["--mesh=1,1,8", "--learner-prompts=0"], "--learner-prompts=0 must be >= 1"),
    (["--mesh=1,1,8", "--micro-batches=3"], "the 1 prompts' groups do not split into 3 micro-batches"),
    (["--mesh=1,1,8", "--micro-batches=0"], "micro_batches=0 must be >= 1"),
])
def test_bad_arguments_fail_with_a_clear_message(args, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        aot.report(aot.parse_args(SMALL + args))


def test_topology_compiles_for_that_tpu_or_names_what_is_missing():
    """--topology compiles with libtpu's TPU compiler (no TPU needed); without libtpu it says so."""
    args = aot.parse_args(SMALL + ["--mesh=1,2,2", "--program=train_step", "--topology=v5p:2x2x1"])
    if importlib.util.find_spec("libtpu") is None:
        with pytest.raises(ValueError, match=r"--topology='v5p:2x2x1': no TPU compiler .* pip install 'jax\[tpu\]'"):
            aot.report(args)
    else:
        rows, text = aot.report(args)
        assert "TPU compiler, v5p:2x2x1 (4 chips)" in text
        assert [row.mesh for row in rows] == ["1,2,2"] and rows[0].temporaries > 0
