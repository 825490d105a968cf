"""launch/sweep.py expands the curiosity ablation into its runs, checks their keys, and runs or prints them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABLATION = str(REPO / "configs" / "sweeps" / "curiosity_ablation.py")
_spec = importlib.util.spec_from_file_location("sweep", REPO / "launch" / "sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def flags_of(run: list[str]) -> dict[str, str]:
    return dict(flag[len("--config."):].split("=", 1) for flag in run if flag.startswith("--config."))


def test_curiosity_ablation_expands_to_off_fixed_and_adaptive_runs():
    runs = sweep.expand(ABLATION)
    assert len(runs) == 3 * (1 + 2 * 3)  # seeds × (off + {fixed, adaptive} × H)
    assert all(run[0] == f"--config={ABLATION}" for run in runs)
    by_name = {flags_of(run)["run_name"]: flags_of(run) for run in runs}
    assert len(by_name) == len(runs)
    assert by_name["curiosity_ablation/off_seed0"] == {
        "run_name": "curiosity_ablation/off_seed0", "seed": "0", "sft.run_name": "curiosity_ablation/sft_seed0",
        "sft.workdir": "runs/curiosity_ablation/sft_seed0",
        "rl.alpha": "0.0", "rl.beta": "0.0"}
    assert by_name["curiosity_ablation/fixed_H0.1_seed2"] == {
        "run_name": "curiosity_ablation/fixed_H0.1_seed2", "seed": "2",
        "sft.run_name": "curiosity_ablation/sft_seed2",
        "sft.workdir": "runs/curiosity_ablation/sft_seed2", "rl.H": "0.1"}
    assert by_name["curiosity_ablation/adaptive_H0.5_seed1"] == {
        "run_name": "curiosity_ablation/adaptive_H0.5_seed1", "seed": "1",
        "sft.run_name": "curiosity_ablation/sft_seed1",
        "sft.workdir": "runs/curiosity_ablation/sft_seed1", "rl.H": "0.5", "rl.eta_alpha": "0.05", "rl.eta_beta": "0.005"}
    grid = {(name.split("/")[1].split("_H")[0], flags["rl.H"], flags["seed"])
            for name, flags in by_name.items() if "rl.H" in flags}
    assert grid == {(v, h, s) for v in ("fixed", "adaptive") for h in ("0.1", "0.3", "0.5") for s in "012"}


def test_the_overrides_parse_as_the_entry_point_parses_them():
    from absl import flags
    from ml_collections import config_flags

    run = sweep.expand(ABLATION)[-1]
    argv = ["prog", *run]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", lock_config=True, flag_values=values, sys_argv=argv)
    values(argv)
    config = values.config
    assert (config.run_name, config.seed, config.rl.H, config.rl.eta_alpha) == (
        "curiosity_ablation/adaptive_H0.5_seed2", 2, 0.5, 0.05)
    assert config.sft.workdir == "runs/curiosity_ablation/sft_seed2"


def test_a_misspelt_key_fails_the_whole_sweep(tmp_path):
    config = tmp_path / "typo.py"
    config.write_text("import ml_collections\n"
                      "def get_config(arg=None):\n"
                      "    return ml_collections.ConfigDict({'rl': {'H': 0.3}})\n"
                      "def get_sweep():\n"
                      "    return [{'rl.H': 0.1}, {'rl.HH': 0.2}]\n")
    with pytest.raises(ValueError, match=r"sweep run 1 of .*typo.py: 'rl.HH' is not a field"):
        sweep.expand(str(config))


def test_dry_run_and_launcher_print_one_command_per_run(capsys):
    assert sweep.main([f"--config={ABLATION}", "--dry_run", "--", "--config.data_dir=/data/tfds"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 21
    assert lines[0].startswith(f"{sys.executable} -m pixel_jax.train --config={ABLATION} --config.run_name=")
    assert all(line.endswith("--config.data_dir=/data/tfds") for line in lines)

    assert sweep.main([f"--config={ABLATION}:runlocal", "--launcher=launch/tpu_pod.sh pod zone v5p-64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 21
    assert lines[0].startswith(f"launch/tpu_pod.sh pod zone v5p-64 --config={ABLATION}:runlocal --config.")


def test_local_runs_go_on_after_a_failure_and_report_it(capsys):
    commands = []

    def run(command):
        commands.append(command)
        return subprocess.CompletedProcess(command, returncode=1 if len(commands) == 2 else 0)

    assert sweep.main([f"--config={ABLATION}"], run=run) == 1
    assert len(commands) == 21 and commands[0][:3] == [sys.executable, "-m", "pixel_jax.train"]
    assert "20 of 21 runs succeeded; failed: 2" in capsys.readouterr().out
