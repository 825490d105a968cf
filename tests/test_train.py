"""`python -m pixel_jax.train`: the whole method at runlocal scale, its outputs, rerun = resume, and
an exact resume of the GRPO loop after kill -9.

The runs are subprocesses (the entry point as a user starts it) sharing one XLA compilation cache,
so only the first one pays for compiling the rollout, SFT and GRPO programs.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pixel_jax import train
from pixel_jax.metrics import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = ["--config.eval.num_examples=2", "--config.sft.eval.num_examples=2"]


def test_summary_table_puts_initial_and_final_side_by_side():
    table = train.summary_table({"initial": {"accuracy": 0.25, "rapr": 0.5}, "final": {"accuracy": 0.75, "rapr": 1.0},
                                 "final_step": 20})
    assert table.splitlines() == ["| held-out | initial (warm start) | final |", "|---|---|---|",
                                  "| accuracy | 0.250 | 0.750 |", "| rapr | 0.500 | 1.000 |"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("xla_cache"))


def _command(workdir: pathlib.Path, cache_dir: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "pixel_jax.train", "--config=configs/grpo.py:runlocal",
            f"--config.workdir={workdir}", f"--config.compilation_cache_dir={cache_dir}", *FAST, *overrides]


def _run(command: list[str]) -> str:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _final_params(workdir: pathlib.Path, step: int) -> dict:
    """The learner state's parameters saved at `step`, as flat numpy."""
    path, checkpointer = workdir / "checkpoints" / str(step) / "state", ocp.PyTreeCheckpointer()
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),  # host arrays, no sharding
                            checkpointer.metadata(path).item_metadata.tree)
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    flat = {}

    def collect(prefix, tree):
        if isinstance(tree, dict):
            for key, value in tree.items():
                collect(f"{prefix}/{key}", value)
        else:
            flat[prefix] = np.asarray(tree)

    collect("", state["params"])
    return flat


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, cache_dir) -> tuple[pathlib.Path, str]:
    """The main command at runlocal scale, run to its end without interruption: (workdir, output)."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    return workdir, _run(_command(workdir, cache_dir))


@pytest.mark.slow
def test_main_command_runs_both_phases_leaves_outputs_and_a_rerun_resumes(straight_run, cache_dir):
    workdir, output = straight_run
    # both phases, each with metrics and checkpoints; GRPO with its gallery and the side-by-side report
    assert "| held-out | initial (warm start) | final |" in output
    for phase in (workdir / "sft", workdir):
        assert sorted(int(p.name) for p in (phase / "checkpoints").iterdir() if p.name.isdigit())[-1] == 2
        assert list((phase / "tensorboard").iterdir())
    sft_metrics = read_metrics(workdir / "sft")
    assert [r["step"] for r in sft_metrics] == [1, 2] and "eval/accuracy" in sft_metrics[-1]
    assert (workdir / "sft" / "trajectories" / "complete").exists()
    grpo_metrics = read_metrics(workdir)
    assert [r["step"] for r in grpo_metrics] == [0, 1, 2]
    for key in ("reward", "accuracy", "rapr", "train/loss", "rollout/informative_groups"):
        assert np.isfinite(grpo_metrics[-1][key]), key
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["initial"]["accuracy"] == grpo_metrics[0]["eval/accuracy"]
    assert summary["final"]["rapr"] == grpo_metrics[-1]["eval/rapr"] and summary["final_step"] == 2
    pages = sorted(p.name for p in (workdir / "gallery").iterdir() if p.is_dir())
    assert pages == ["step_0000001", "step_0000002"]
    page = (workdir / "gallery" / "step_0000002" / "index.html").read_text()
    assert "gold answer" in page and list((workdir / "gallery" / "step_0000002").glob("*_input.png"))

    rerun = _run(_command(workdir, cache_dir))  # finished: resumes both phases at their end
    assert "SFT phase" in rerun and "already finished" in rerun
    assert read_metrics(workdir) == grpo_metrics and read_metrics(workdir / "sft") == sft_metrics


@pytest.mark.slow
def test_resume_after_kill_9_continues_exactly(straight_run, tmp_path, cache_dir):
    """The run killed (-9) after its first GRPO checkpoint and rerun ends with the parameters of the
    run that never stopped (its SFT phase is found finished, GRPO resumes at step 1)."""
    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(killed, cache_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 1500
        while not (killed / "checkpoints" / "1").is_dir():  # a finished save (orbax renames it into place)
            assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (killed / "checkpoints" / "2").is_dir()
    _run(_command(killed, cache_dir))

    expected, resumed = _final_params(straight_run[0], 2), _final_params(killed, 2)
    assert expected.keys() == resumed.keys()
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
    assert [r["step"] for r in read_metrics(killed)] == [0, 1, 2]
