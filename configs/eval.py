"""A benchmark through the rollout engine with greedy decoding (`python -m pixel_jax.evaluate`).

    python -m pixel_jax.evaluate --config=configs/eval.py:init=runs/grpo_synthetic_tiny
    python -m pixel_jax.evaluate \
        --config=configs/eval.py:model=qwen2_5_vl_7b,init=/ckpt/PixelReasoner-RL-v1,data=vstar \
        --config.data_dir=/data/tfds

`init` is a local HF folder or a pixel_jax run's checkpoint directory; without it the tiny model is
evaluated at its random initialisation (a smoke test). The split is the dataset's evaluation one
(V* and HR-Bench: test; synthetic: eval; data=pixelreasoner has none: evaluate its held-out V*).
At the paper scale, Pixel Reasoner's evaluation image budgets apply: inputs up to 8000 visual
tokens, crops up to 5120.
Reports accuracy per sub-task, RaPR, mean calls and the failed-call rate, as JSON and a table in
`<workdir>`.
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
    config = common.base_config("eval", args)
    by_scale = lambda cpu, paper, runlocal: common.by_scale(args, cpu=cpu, paper=paper, runlocal=runlocal)

    config.data = common.data_config(args, args.data, split=common.DATASETS[args.data].eval_split, phase="eval",
                                     training=False, batch_size=by_scale(8, 8, 2), seed=config.get_ref("seed"))
    config.num_examples = by_scale(64, 0, 4)  # of the split; 0 = all of it
    config.rollout = common.rollout_config(args, "eval", max_new_tokens=common.max_new_tokens(args), greedy=True)
    config.reward = common.reward_config(args)
    return config
