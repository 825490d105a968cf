"""Warm-start instruction tuning (Pixel Reasoner phase 1, METHOD.md §1).

    python -m pixel_jax.train --config=configs/sft.py                 tiny model, synthetic task, CPU
    python -m pixel_jax.train \
        --config=configs/sft.py:model=qwen2_5_vl_7b,init=/ckpt/Qwen2.5-VL-7B-Instruct,data=pixelreasoner

Next-token loss on the assistant turns of trajectories that zoom on each example's visual target:
single-pass, error-induced self-correction, and textual ones for questions that need no zoom
(`synthesis.kind_weights`, among the kinds an example fits; `pixel_jax.sft.synthesize`). The
scripts are replayed through the rollout engine with the RL rollout's shapes (`rollout`: prompt
slots, response budget, calls; `tools`: the crop grid), so SFT and GRPO see one token layout.
With data=pixelreasoner the stored release trajectories are used instead of synthesised ones.
METHOD.md gives no SFT hyperparameters: every number here is ours. The default (tiny model, random
init) trains from scratch, so its learning rate is large (1e-2: on the stored warm-start batches the
token loss after 100 steps is 0.43 at 1e-2, 0.59 at 5e-3, 3.6 at 1e-3); a Qwen2.5-VL checkpoint gets 1e-5.
`configs/grpo.py` runs this phase first when it has no `init`.
"""

import pathlib
import sys

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])  # `configs` is a folder of the checkout, not installed
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import ml_collections  # noqa: E402

from configs import common  # noqa: E402


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg)
    config = common.base_config("sft", args)
    by_scale = lambda cpu, paper, runlocal: common.by_scale(args, cpu=cpu, paper=paper, runlocal=runlocal)
    dataset = common.DATASETS[args.data]
    seed = config.get_ref("seed")

    config.total_steps = by_scale(100, 180, 2)  # paper scale: 3 epochs of the ~7.85k release trajectories
    config.batch_size = by_scale(8, 128, 2)  # sequences per step
    config.data = common.data_config(args, args.data, split=dataset.train_split, phase="train", training=True,
                                     batch_size=config.get_ref("batch_size"), seed=seed,
                                     source=dataset.sft_source)
    config.synthesis = ml_collections.ConfigDict({
        "kind_weights": {"single_pass": 2.0, "self_correction": 1.0, "textual": 1.0},
        # examples of the training split scripted and replayed once into <workdir>/trajectories,
        # the warm-start set the steps cycle over (0 = the whole split)
        "num_examples": by_scale(128, 0, 8),
    })
    config.rollout = common.rollout_config(args, "train", max_new_tokens=common.max_new_tokens(args), greedy=True)

    config.optimizer = common.optimizer_config(learning_rate=by_scale(1e-2, 1e-5, 1e-2),
                                               warmup_steps=by_scale(10, 10, 0),
                                               total_steps=config.get_ref("total_steps"))
    config.aggregation = "token-mean"  # of the loss over the assistant tokens (rl.grpo.LOSS_AGGREGATIONS)
    config.frozen = ()  # regexes over parameter paths kept fixed, e.g. (r"^visual\.",) for the ViT

    config.reward = common.reward_config(args)  # scores the held-out rollouts
    config.eval = common.evaluation_config(args, every=by_scale(100, 50, 2), num_examples=by_scale(16, 0, 4),
                                           batch_size=by_scale(8, 64, 2),
                                           max_new_tokens=common.max_new_tokens(args), seed=seed)
    config.checkpoint = common.checkpoint_config(every=by_scale(50, 50, 1))
    config.logging = common.logging_config(log_every=by_scale(1, 10, 1), gallery_every=config.eval.get_ref("every"))
    return config
