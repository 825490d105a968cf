"""GRPO with the curiosity-driven reward (Pixel Reasoner phase 2, METHOD.md §1 and §3).

    python -m pixel_jax.train --config=configs/grpo.py         the whole method on CPU, in minutes
    python -m pixel_jax.train --config=configs/grpo.py:model=qwen2_5_vl_7b,init=/ckpt/warm_started,data=pixelreasoner

Both phases by default: with no `init`, `warm_start` is on and the run first trains the SFT config
of `configs/sft.py` (section `sft`, written to `<workdir>/sft`, reused when finished there), then
GRPO from it. With `init` (a warm-started HF folder or checkpoint) GRPO starts from it directly;
`--config.warm_start=True` runs the SFT phase from `init` first. The SFT section shares this
config's model, mesh, sharding rules, protocol and tools (one object: an override changes both).

Every coefficient has the reference value of METHOD.md (`rl`: H 0.3, N 1, α 0.5, β 0.05, G 8,
ε_low 0.2, ε_high 0.35, β_KL 0, Dr. GRPO advantages, token-mean loss; `rollout`: T 1.0 / top-p
0.95 / top-k 40, later turns T 0.9, at most 3 calls; 256 prompts a batch; lr 1e-6). Sizes depend
on the scale (configs/common.py): with `model=qwen2_5_vl_3b|7b` the paper's batch of 256 prompts ×
8 samples and Pixel Reasoner's image budgets; with the tiny CPU default 2 prompts × 8 samples,
short responses, 64-token views and crops, and a learning rate of 1e-4 (Adam moves a parameter by
about the learning rate per step: 20 steps at 1e-6 would leave the tiny model where it started).
The number of steps is ours at every scale.
"""

import pathlib
import sys

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])  # `configs` is a folder of the checkout, not installed
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import ml_collections  # noqa: E402
from ml_collections import config_dict  # noqa: E402

from configs import common, sft  # noqa: E402

SHARED_WITH_SFT = ("data_dir", "distributed", "mesh", "sharding_rules", "model", "protocol", "tools")
PAPER_LEARNING_RATE = 1e-6
PAPER_PROMPTS_PER_BATCH = 256


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg)
    config = common.base_config("grpo", args)
    by_scale = lambda cpu, paper, runlocal: common.by_scale(args, cpu=cpu, paper=paper, runlocal=runlocal)
    seed = config.get_ref("seed")

    config.warm_start = not args.init  # run the SFT phase (section `sft`) before GRPO
    config.sft = _warm_start_config(arg, config)
    config.total_steps = by_scale(20, 200, 2)  # rollout batches

    config.data = common.data_config(args, args.data, split=common.DATASETS[args.data].train_split, phase="train",
                                     training=True, batch_size=by_scale(2, PAPER_PROMPTS_PER_BATCH, 1), seed=seed)
    config.rollout = common.rollout_config(args, "train", max_new_tokens=common.max_new_tokens(args), greedy=False)
    config.reward = common.reward_config(args)
    # Groups whose rewards are all equal teach nothing: they are dropped and the batch refilled (the
    # authors' code), from at most `max_rollouts` rollout batches per step (ours).
    config.dynamic_sampling = ml_collections.ConfigDict({"enabled": True, "max_rollouts": 4})

    # r'(x, y_i) = r + α·max(H − RaPR(x), 0)·1[n_vo > 0] + β·min(N − n_vo, 0), then GRPO
    # (the fields of learner.LearnerConfig, with `optimizer` and `frozen`).
    config.rl = ml_collections.ConfigDict({
        "group_size": 8,  # G responses per prompt
        "H": 0.3,  # target RaPR
        "N": 1.0,  # visual operations per response before the penalty
        "alpha": 0.5,  # initial α (curiosity)
        "beta": 0.05,  # initial β (penalty)
        "curiosity_variant": "paper",  # or "official_code" (the authors' bonus formula)
        "count_failed_calls": True,  # n_vo counts failed calls (the authors' code)
        "gate_failed_operation": True,  # r = 0 when the last operation failed and was never repaired
        "eta_alpha": 0.0,  # dual-ascent steps on α, β (0: the papers' fixed multipliers)
        "eta_beta": 0.0,
        "alpha_max": 1.0,
        "beta_max": 1.0,
        "advantage_estimator": "dr_grpo",  # A_i = r_i − mean(r): no division by the std
        "advantage_epsilon": 1e-6,
        "whiten_advantages": False,
        "eps_low": 0.2,  # ρ clipped to [1 − ε_low, 1 + ε_high] ("clip-higher")
        "eps_high": 0.35,
        "dual_clip": config_dict.placeholder(float),
        "kl_coef": 0.0,  # β_KL: no reference policy
        "kl_estimator": "k3",
        "ref_sync_every": 0,
        "entropy_coef": 0.0,
        "aggregation": "token-mean",  # over the assistant tokens of the batch
        "policy_iterations": 1,  # optimizer updates per rollout batch
        "micro_batches": by_scale(1, 16, 1),  # accumulation over whole groups; see aot_compile.py --program=grpo_step
    })
    config.optimizer = common.optimizer_config(
        learning_rate=by_scale(1e-4, PAPER_LEARNING_RATE, 1e-4), warmup_steps=0,
        total_steps=config.get_ref("total_steps") * config.rl.get_ref("policy_iterations"))
    config.frozen = ()  # regexes over parameter paths kept fixed, e.g. (r"^visual\.",) for the ViT

    config.eval = common.evaluation_config(args, every=by_scale(10, 25, 2), num_examples=by_scale(16, 0, 4),
                                           batch_size=by_scale(8, 64, 2), max_new_tokens=config.rollout.get_ref(
                                               "max_new_tokens"), seed=seed)
    config.checkpoint = common.checkpoint_config(every=by_scale(10, 25, 1))
    config.logging = common.logging_config(log_every=1, gallery_every=by_scale(10, 25, 1))
    return config


def _warm_start_config(arg: str | None, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """configs/sft.py for the same arg, sharing this run's placement, model and tools, in <workdir>/sft."""
    warm_start = sft.get_config(arg)
    for key in SHARED_WITH_SFT:
        shared = config[key]
        warm_start[key] = shared if isinstance(shared, ml_collections.ConfigDict) else config.get_ref(key)
    warm_start.seed = config.get_ref("seed")
    warm_start.run_name = config.get_ref("run_name") + "/sft"
    warm_start.workdir = config.get_ref("workdir") + "/sft"
    return warm_start
