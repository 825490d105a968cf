"""launch/aot_compile.py compiles the train step of a small preset on fake devices and prints its table."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "aot_compile.py"
_spec = importlib.util.spec_from_file_location("aot_compile", SCRIPT)
aot = sys.modules["aot_compile"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(aot)

SMALL = ["--model=tiny", "--batch=8", "--seq=64", "--image-grid=4,4", "--param-dtype=float32", "--dtype=float32"]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table_reports_the_compiled_per_device_memory():
    rows, text = aot.report(aot.parse_args(SMALL + ["--mesh=1,2,-1", "--memory=big=1", "--memory=small=0.001"]))
    lines = text.splitlines()
    assert lines[0] == "mesh 1,2,-1: kv_heads=2 not divisible by tensor: replicated"
    header = next(i for i, line in enumerate(lines) if line.startswith("| program"))
    assert cells(lines[header]) == ["program", "mesh (data,fsdp,tensor)", "arguments", "outputs", "temporaries",
                                    "total", "FLOPs", "compile", "fits big (1 GB)", "fits small (0.001 GB)"]
    (row,) = rows
    assert cells(lines[header + 2])[:7] == [
        "train_step", "1,2,4", aot._si(row.arguments, "B"), aot._si(row.outputs, "B"), aot._si(row.temporaries, "B"),
        aot._si(row.total, "B"), aot._si(row.flops, "FLOP")]
    assert cells(lines[header + 2])[-2][:3] == "yes" and cells(lines[header + 2])[-1][:2] == "no"

    # arguments: exactly one device's shards of the parameters, Adam moments, step and batch
    setup = aot.Setup(aot.qvl.Qwen2_5_VLConfig.tiny(), aot.sharding.make_mesh((1, 2, 4)), aot.sharding.make_rules(),
                      8, 64, 1, (4, 4))
    plan, batch = aot.train_step_inputs(setup)
    leaves = jax.tree.leaves((plan.abstract_state, batch))
    assert row.arguments == sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)
    assert row.arguments < sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves) / 2  # sharded state
    assert 0 < row.outputs < row.arguments / 100  # the state is donated: only the metrics are new outputs
    assert row.temporaries > 0 and row.flops > 1e6


def test_the_command_line_compiles_on_the_fake_devices_it_asks_for():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = ["--model=tiny", "--mesh=2,1,-1", "--devices=4", "--batch=2", "--seq=32", "--images-per-row=0"]
    result = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 devices; bytes and FLOPs per device" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| train_step"))
    assert cells(row)[:2] == ["train_step", "2,1,2"]
    assert cells(row)[-2:] == ["yes (0%)", "yes (0%)"]  # default memories: v5p 95 GB, H100 80 GB


@pytest.mark.parametrize("args, message", [
    (["--mesh=3,1,1"], "has 3 devices but 8 are available"),
    (["--mesh=1,1,8", "--memory=v5p"], "--memory='v5p' must be name=GB"),
    (["--mesh=1,1,8", "--image-grid=3,4"], "must be two even patch counts"),
    (["--mesh=1,1,8", "--seq=2"], "do not fit in --seq=2 tokens"),
    (["--mesh=1,x,8"], "--mesh='1,x,8' must be comma-separated integers"),
])
def test_bad_arguments_fail_with_a_clear_message(args, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        aot.report(aot.parse_args(SMALL + args))
