"""Expands a config's sweep into runs: one after another on this machine, or the commands for a pod.

    python launch/sweep.py --config=configs/sweeps/curiosity_ablation.py             # run them here, in order
    python launch/sweep.py --config=configs/sweeps/curiosity_ablation.py --dry_run   # print the commands
    python launch/sweep.py --config=configs/sweeps/curiosity_ablation.py:model=qwen2_5_vl_7b,init=/ckpt/sft \
        --launcher="launch/tpu_pod.sh pixel-v5p-64 us-east5-a v5p-64"            # print one pod command per run
    python launch/sweep.py --config=... -- --config.data_dir=/data/tfds              # flags every run gets

A sweep is `get_sweep()` in the config file: a list of override dicts ({"rl.H": 0.1, "seed": 2}).
Run i is `python -m pixel_jax.train --config=<file>[:<arg>] --config.<key>=<value> ... <extra flags>`.
Every key is looked up in the file's `get_config(arg)` before anything starts, so a typo fails the
sweep at once rather than at run 17. Local runs continue after a failed run; the exit status is 1
if any failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import ml_collections

DEFAULT_MODULE = "pixel_jax.train"


def load_config_file(path: str) -> ModuleType:
    """The config file as a module (as config_flags loads it)."""
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    if spec is None:
        raise ValueError(f"--config={path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path} has no get_sweep(): it is not a sweep")
    return module


def override_flag(key: str, value: Any) -> str:
    """`--config.<key>=<value>` as config_flags parses it (strings as they are, the rest as literals)."""
    return f"--config.{key}={value if isinstance(value, str) else repr(value)}"


def check_overrides(config: ml_collections.ConfigDict, runs: Sequence[Mapping[str, Any]], path: str) -> None:
    """Every key of every run must name an existing field of `config`."""
    for index, overrides in enumerate(runs):
        for key in overrides:
            section = config
            for part in key.split("."):
                if not isinstance(section, ml_collections.ConfigDict) or part not in section:
                    raise ValueError(f"sweep run {index} of {path}: {key!r} is not a field of its get_config()")
                section = section[part]


def expand(config_flag: str, extra: Sequence[str] = ()) -> list[list[str]]:
    """The flags of each run of the sweep in `config_flag` ("path[:arg]")."""
    path, _, arg = config_flag.partition(":")
    module = load_config_file(path)
    runs = module.get_sweep()
    check_overrides(module.get_config(arg or None), runs, path)
    return [[f"--config={config_flag}", *(override_flag(k, v) for k, v in overrides.items()), *extra]
            for overrides in runs]


def run_locally(commands: Sequence[Sequence[str]], run: Callable[..., subprocess.CompletedProcess] = subprocess.run
                ) -> list[int]:
    """Runs the commands one after another; the indices of those that failed."""
    failed = []
    for index, command in enumerate(commands):
        print(f"[{index + 1}/{len(commands)}] {shlex.join(command)}", flush=True)
        if run(list(command)).returncode != 0:
            failed.append(index)
    return failed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a config file with get_sweep(), optionally :arg")
    parser.add_argument("--dry_run", action="store_true", help="print the local commands instead of running them")
    parser.add_argument("--launcher", default="", help="print '<launcher> <run flags>' per run (e.g. a pod script)")
    parser.add_argument("--module", default=DEFAULT_MODULE, help="the module each run executes")
    parser.add_argument("extra", nargs="*", help="flags every run gets (after --)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    args = parse_args(argv)
    runs = expand(args.config, args.extra)
    if args.launcher:
        for flags in runs:
            print(shlex.join([*shlex.split(args.launcher), *flags]))
        return 0
    commands = [[sys.executable, "-m", args.module, *flags] for flags in runs]
    if args.dry_run:
        for command in commands:
            print(shlex.join(command))
        return 0
    failed = run_locally(commands, run)
    print(f"{len(commands) - len(failed)} of {len(commands)} runs succeeded"
          + (f"; failed: {', '.join(str(i + 1) for i in failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
