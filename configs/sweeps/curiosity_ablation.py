"""Ablation of the curiosity-driven reward: off / on (fixed multipliers) / adaptive, × H, × seeds.

    python launch/sweep.py --config=configs/sweeps/curiosity_ablation.py             # one after another
    python launch/sweep.py --config=configs/sweeps/curiosity_ablation.py --dry_run   # the commands only
    python launch/sweep.py --config=configs/sweeps/curiosity_ablation.py:model=qwen2_5_vl_7b,init=/ckpt/sft \
        --launcher="launch/tpu_pod.sh pixel-v5p-64 us-east5-a v5p-64"

The base is configs/grpo.py for the same arg. Variants of its `rl` section:
  off       α = β = 0: plain GRPO, exposed to the learning trap (H plays no part: one run per seed)
  fixed     the paper's fixed multipliers α = 0.5, β = 0.05 (the base config's values)
  adaptive  from those values, α and β follow dual ascent on RaPR ≥ H and n_vo ≤ N with
            η_α = 0.05 and η_β = 0.005 (ours: a unit of constraint violation moves a multiplier by a
            tenth of its initial value per step)
crossed with H ∈ {0.1, 0.3, 0.5} and seeds {0, 1, 2}: 3 + 2·3·3 = 21 runs, named
`curiosity_ablation/<variant>[_H<H>]_seed<seed>`. The runs of a seed warm-start from ONE SFT run,
`curiosity_ablation/sft_seed<seed>` (identical starting points; trained by the first run of the seed
and reused by the others — when launching in parallel, let one run per seed finish its SFT first).
"""

import pathlib
import sys

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])  # `configs` is a folder of the checkout, not installed
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import ml_collections  # noqa: E402

from configs import grpo  # noqa: E402

NAME = "curiosity_ablation"
TARGET_RAPR = (0.1, 0.3, 0.5)  # H
SEEDS = (0, 1, 2)
ADAPTIVE_ETA = {"rl.eta_alpha": 0.05, "rl.eta_beta": 0.005}
VARIANTS = {"fixed": {}, "adaptive": ADAPTIVE_ETA}  # overrides of the base config's paper values


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = grpo.get_config(arg)
    config.run_name = f"{NAME}/base"
    return config


def get_sweep() -> list[dict]:
    """One dict of `--config.<key>=<value>` overrides per run."""
    runs = []
    for seed in SEEDS:
        warm_start = f"{NAME}/sft_seed{seed}"
        shared = {"seed": seed, "sft.run_name": warm_start, "sft.workdir": f"runs/{warm_start}"}
        runs.append({"run_name": f"{NAME}/off_seed{seed}", **shared, "rl.alpha": 0.0, "rl.beta": 0.0})
        for variant, overrides in VARIANTS.items():
            for target in TARGET_RAPR:
                runs.append({"run_name": f"{NAME}/{variant}_H{target}_seed{seed}", **shared, "rl.H": target,
                             **overrides})
    return runs
