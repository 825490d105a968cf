"""What the experiment configs share: the arg string, the named variants, the common sections.

Each experiment is one `get_config(arg)` file (`sft.py`, `grpo.py`, `eval.py`) whose arg string
picks variants, as in big_vision's `configs/common.py`:

    --config=configs/grpo.py                         synthetic task, tiny model, CPU, minutes
    --config=configs/grpo.py:runlocal                the smallest shapes: a smoke test
    --config=configs/grpo.py:model=qwen2_5_vl_7b,init=/ckpt/Qwen2.5-VL-7B-Instruct,data=pixelreasoner
    --config=configs/eval.py:model=qwen2_5_vl_7b,init=runs/grpo_pixelreasoner_qwen2_5_vl_7b,data=vstar

Keys (`ARG_DEFAULTS`): model, init, data, protocol, reward, runlocal (a bare word sets a boolean
key). Sizes follow the scale the arg implies (`scale_of`): "cpu" for the tiny model (runs in
minutes on a laptop CPU), "paper" for a Qwen2.5-VL checkpoint (the published batch sizes and image
budgets), "runlocal" for the smallest shapes of either model. Configs hold values only:
`pixel_jax.config_validation.validate` checks them before a run starts.
"""

from __future__ import annotations

import dataclasses
import math
import types

import ml_collections
from ml_collections import config_dict

from pixel_jax import sharding
from pixel_jax.config_validation import TOKEN_PX
from pixel_jax.rl.rewards import REWARD_PRESETS
from pixel_jax.tools import crop as crop_ops
from pixel_jax.tools.protocols import PROTOCOLS

MODELS = ("tiny", "qwen2_5_vl_3b", "qwen2_5_vl_7b")
ARG_DEFAULTS = types.MappingProxyType({
    "model": "tiny", "init": "", "data": "synthetic", "protocol": "hermes", "reward": "pixel_reasoner",
    "runlocal": False,
})


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Where a `data=` name is read from, and the canvas its full-resolution originals are padded to."""

    source: str  # "synthetic" or a TFDS builder of pixel_jax.data.builders ("hr_bench/8k" picks a config)
    train_split: str | None  # None: a benchmark, evaluation only
    eval_split: str | None  # None: held-out evaluation reads `held_out` instead
    canvas_size: tuple[int, int]  # (H, W); larger originals are shrunk to fit (the pipeline records the scale)
    held_out: str | None = None  # the dataset evaluated during training when eval_split is None
    sft_source: str | None = None  # stored warm-start trajectories, when not synthesised from `source`


DATASETS = types.MappingProxyType({
    "synthetic": Dataset("synthetic", "train", "eval", canvas_size=(0, 0)),  # canvas from the view sizes
    "vstar": Dataset("vstar_bench", None, "test", canvas_size=(2560, 2560)),
    "hrbench4k": Dataset("hr_bench/4k", None, "test", canvas_size=(3840, 3840)),
    "hrbench8k": Dataset("hr_bench/8k", None, "test", canvas_size=(4320, 7680)),  # landscape 8K
    "textvqa": Dataset("textvqa", "train", "validation", canvas_size=(1024, 1024)),
    "infovqa": Dataset("infographics_vqa", "train", "validation", canvas_size=(4096, 2048)),  # tall pages
    "tallyqa": Dataset("tallyqa", "train", "test", canvas_size=(640, 640)),
    "pixelreasoner": Dataset("pixel_reasoner_rl", "train", None, canvas_size=(2048, 2048), held_out="vstar",
                             sft_source="pixel_reasoner_sft"),
})


@dataclasses.dataclass(frozen=True)
class ImageBudget:
    """Static image shapes of one scale: the model's view buckets and the crop token budget."""

    view_sizes: tuple[tuple[int, int], ...]  # (H, W) multiples of 28 with distinct aspect ratios
    crop_tokens: int  # visual tokens of one crop (28×28 px each)

    @property
    def max_view_tokens(self) -> int:
        return max(h * w for h, w in self.view_sizes) // TOKEN_PX**2


# Pixel Reasoner's budgets (METHOD.md): training inputs ≤ 2000 tokens and crops ≤ 1000; evaluation
# inputs ≤ 8000 and crops ≤ 5120. Static shapes take the largest buckets within them.
# The CPU scales keep one square view bucket: every bucket is one more compilation of the rollout,
# SFT and GRPO programs, which would dominate a run of minutes.
IMAGE_BUDGETS = types.MappingProxyType({
    ("cpu", "train"): ImageBudget(((224, 224),), crop_tokens=64),
    ("cpu", "eval"): ImageBudget(((224, 224),), crop_tokens=64),
    ("runlocal", "train"): ImageBudget(((112, 112),), crop_tokens=16),
    ("runlocal", "eval"): ImageBudget(((112, 112),), crop_tokens=16),
    ("paper", "train"): ImageBudget(((1232, 1232), (1008, 1512), (1512, 1008)), crop_tokens=961),
    ("paper", "eval"): ImageBudget(((2492, 2492), (2044, 3052), (3052, 2044)), crop_tokens=5041),
})
SYNTHETIC_DOWNSAMPLE_FACTORS = (3, 4)  # canvas = view × f: the sign is legible only after a zoom
MAX_CALLS = 3  # METHOD.md: a response is cut after more than 3 calls
MAX_IMAGES = 16  # … or 16 images
PROMPT_TEXT_TOKENS = 640  # system prompt with the tool schemas + question (packaged tokenizer: ≤ 573 measured)


# ---------------------------------------------------------------------------------- the arg
def parse_arg(arg: str | None) -> ml_collections.ConfigDict:
    """"model=qwen2_5_vl_7b,data=vstar,runlocal" → ConfigDict of every key of ARG_DEFAULTS.

    Values take the type of their default (a bare key sets a boolean to True); an unknown key, a
    value that does not parse or a name that is not one of the choices raises ValueError naming it.
    """
    args = ml_collections.ConfigDict(dict(ARG_DEFAULTS))
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, has_value, value = item.partition("=")
        key = key.strip()
        if key not in ARG_DEFAULTS:
            raise ValueError(f"config arg {key!r} is unknown; known keys: {sorted(ARG_DEFAULTS)}")
        if isinstance(ARG_DEFAULTS[key], bool):
            if has_value and value not in ("True", "False", "true", "false", "1", "0"):
                raise ValueError(f"config arg {key}={value!r} must be a boolean (or the bare word {key!r})")
            args[key] = not has_value or value in ("True", "true", "1")
        elif not has_value:
            raise ValueError(f"config arg {key!r} needs a value ({key}=...)")
        else:
            args[key] = value
    _check_choice(args.model, MODELS, "model")
    _check_choice(args.data, tuple(DATASETS), "data")
    _check_choice(args.protocol, PROTOCOLS.names(), "protocol")
    _check_choice(args.reward, REWARD_PRESETS.names(), "reward")
    return args


def _check_choice(value: str, choices, key: str) -> None:
    if value not in choices:
        raise ValueError(f"config arg {key}={value!r} is unknown; choose one of {sorted(choices)}")


def scale_of(args: ml_collections.ConfigDict) -> str:
    """"runlocal" (smallest shapes), "cpu" (the tiny model) or "paper" (a Qwen2.5-VL checkpoint)."""
    if args.runlocal:
        return "runlocal"
    return "cpu" if args.model == "tiny" else "paper"


def by_scale(args: ml_collections.ConfigDict, *, cpu, paper, runlocal):
    """The value for the arg's scale."""
    return {"cpu": cpu, "paper": paper, "runlocal": runlocal}[scale_of(args)]


# ------------------------------------------------------------------------------ sections
def base_config(kind: str, args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What every run has: identity, placement, model, protocol and tools.

    `run_name` names the work directory `runs/<run_name>` (metrics, checkpoints, gallery).
    """
    config = ml_collections.ConfigDict()
    config.kind = kind  # "sft" | "grpo" | "eval": what pixel_jax.train / pixel_jax.evaluate run
    config.run_name = f"{kind}_{args.data}_{args.model}" + ("_runlocal" if args.runlocal else "")
    config.workdir = "runs/" + config.get_ref("run_name")
    config.seed = 0
    config.distributed = "auto"  # pixel_jax.distributed.MODES
    config.compilation_cache_dir = "~/.cache/pixel_jax/xla"  # persistent XLA cache: reruns skip compiling ("" = off)
    config.data_dir = ""  # TFDS root of the prepared datasets (every data= but synthetic)
    # Placement: a (data, fsdp, tensor) mesh, -1 filling the devices; logical axis → mesh axes.
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    config.sharding_rules = ml_collections.ConfigDict(dict(sharding.DEFAULT_RULES))
    config.model = ml_collections.ConfigDict({
        "preset": args.model,  # a Qwen2_5_VLConfig classmethod
        "init": args.init,  # a local HF folder or a pixel_jax checkpoint directory; "" = random (tiny only)
        "param_dtype": by_scale(args, cpu="float32", paper="bfloat16", runlocal="float32"),
        "dtype": by_scale(args, cpu="float32", paper="bfloat16", runlocal="float32"),
        # the backward pass recomputes each decoder layer and ViT block from its input
        # (layers.REMAT_POLICIES): a 7B step's activations would not fit otherwise
        "remat": by_scale(args, cpu="none", paper="full", runlocal="none"),
    })
    config.protocol = args.protocol  # pixel_jax.tools.protocols.PROTOCOLS
    config.tools = tools_config(args, "eval" if kind == "eval" else "train")
    return config


def tools_config(args: ml_collections.ConfigDict, phase: str) -> ml_collections.ConfigDict:
    """The crop grid (static) and the on-device parser's token window.

    Hermes crops fill a square grid of the scale's crop budget; Groundlight zooms are resized to
    the longer side of the input (groundlight_output_hw) within that budget.
    """
    budget = IMAGE_BUDGETS[scale_of(args), phase]
    if args.protocol == "groundlight":
        longest = max(max(hw) for hw in budget.view_sizes)
        crop_hw = crop_ops.groundlight_output_hw(longest, max_pixels=budget.crop_tokens * TOKEN_PX**2)
    else:
        side = math.isqrt(budget.crop_tokens) * TOKEN_PX
        crop_hw = (side, side)
    return ml_collections.ConfigDict({"crop_hw": tuple(crop_hw), "parser_window": 96})


def data_config(args: ml_collections.ConfigDict, name: str, *, split: str | None, phase: str, training: bool,
                batch_size: int, seed: config_dict.FieldReference, source: str | None = None
                ) -> ml_collections.ConfigDict:
    """One dataset read through the grain pipeline (`pixel_jax.data.pipeline`), at the image budget of
    `phase` ("train" | "eval"); a `training` stream is shuffled and repeats, otherwise one ordered pass.

    `pipeline` holds the PipelineConfig fields; `synthetic` the SyntheticConfig ones (synthetic only).
    """
    dataset = DATASETS[name]
    budget = IMAGE_BUDGETS[scale_of(args), phase]
    data = ml_collections.ConfigDict()
    data.name = name  # the arg's name
    data.source = source or dataset.source
    data.split = config_dict.placeholder(str) if split is None else split  # None: no such split (validated)
    data.manual_dir = ""  # raw release files to prepare the TFDS records from, once ("" = prepared already)
    size = 100_000 if training else 1_000
    data.num_examples = by_scale(args, cpu=size, paper=size, runlocal=64)  # of a synthetic split
    data.pipeline = ml_collections.ConfigDict({
        "batch_size": batch_size,  # prompts per batch
        "canvas_size": dataset.canvas_size, "view_sizes": budget.view_sizes,
        "max_frames": 1,  # images only (a video bucket needs the select_frames rollout program)
        "seed": seed, "shuffle": training, "num_epochs": config_dict.placeholder(int) if training else 1,
        "num_threads": 2, "prefetch_buffer_size": 8,
    })
    if data.source == "synthetic":
        factors = SYNTHETIC_DOWNSAMPLE_FACTORS
        data.pipeline.canvas_size = tuple(max(side) * max(factors) for side in zip(*budget.view_sizes))
        data.synthetic = ml_collections.ConfigDict({
            "view_sizes": data.pipeline.get_ref("view_sizes"), "downsample_factors": factors,
            "glyph_scale": 1, "clutter_density": 0.5, "seed": seed,
            # images only: video questions need a select_frames rollout program of their own
            "kind_weights": {"text": 3.0, "colour": 1.0, "count": 1.0, "background": 1.0, "corner": 1.0,
                             "video": 0.0},
        })
    return data


def sampling_config(temperature: float, top_k: int, top_p: float) -> ml_collections.ConfigDict:
    """A `pixel_jax.rollout.sampling.SamplingParams`."""
    return ml_collections.ConfigDict({"temperature": temperature, "top_k": top_k, "top_p": top_p})


def max_new_tokens(args: ml_collections.ConfigDict) -> int:
    """Tokens a response may write: 256 with the packaged tokenizer (a synthesised self-correction,
    two calls, takes ~222); paper scale 2048, Groundlight's completion budget (METHOD.md gives none
    for Pixel Reasoner)."""
    return by_scale(args, cpu=256, paper=2048, runlocal=256)


def rollout_config(args: ml_collections.ConfigDict, phase: str, *, max_new_tokens: int,
                   greedy: bool) -> ml_collections.ConfigDict:
    """A `RolloutSpec`'s settings.

    Sampling (the authors' code): first turn T 1.0, top-k 40, top-p 0.95; later turns T 0.9 (METHOD.md
    gives only the temperature for later turns: top-k and top-p are kept); greedy for evaluation.
    A response is cut after `max_calls` calls, `max_images` images shown by its calls, or its
    `max_new_tokens`.
    """
    budget = IMAGE_BUDGETS[scale_of(args), phase]
    return ml_collections.ConfigDict({
        "max_prompt_len": PROMPT_TEXT_TOKENS + budget.max_view_tokens,  # left-padded prompt slots
        "max_new_tokens": max_new_tokens,
        "max_calls": MAX_CALLS,
        "max_images": MAX_IMAGES,
        "first_turn": sampling_config(0.0, 0, 1.0) if greedy else sampling_config(1.0, 40, 0.95),
        "later_turns": sampling_config(0.0, 0, 1.0) if greedy else sampling_config(0.9, 40, 0.95),
    })


def evaluation_config(args: ml_collections.ConfigDict, *, every: int, num_examples: int, batch_size: int,
                      max_new_tokens: int, seed) -> ml_collections.ConfigDict:
    """Periodic held-out evaluation of a training run: greedy rollouts at the training image budget
    (the shapes the run already compiled), accuracy and RaPR, on the evaluation split of the arg's
    dataset (or of its `held_out` benchmark)."""
    name = args.data if DATASETS[args.data].eval_split is not None else DATASETS[args.data].held_out
    return ml_collections.ConfigDict({
        "every": every,  # steps between evaluations (and at the end)
        "num_examples": num_examples,  # of the held-out split; 0 = all of it
        "data": data_config(args, name, split=DATASETS[name].eval_split, phase="train", training=False,
                            batch_size=batch_size, seed=seed),
        "rollout": rollout_config(args, "train", max_new_tokens=max_new_tokens, greedy=True),
    })


def optimizer_config(*, learning_rate: float, warmup_steps: int, total_steps) -> ml_collections.ConfigDict:
    """Clip by global norm → AdamW (decay on matrices) with a linear warm-up, then cosine to
    `end_learning_rate` at `total_steps` optimizer updates (the fields of learner.LearnerConfig)."""
    return ml_collections.ConfigDict({
        "learning_rate": learning_rate, "warmup_steps": warmup_steps, "total_steps": total_steps,
        "end_learning_rate": 0.0, "weight_decay": 0.0, "b1": 0.9, "b2": 0.999, "adam_eps": 1e-8, "max_grad_norm": 1.0,
    })


def reward_config(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """r(x, y) = Σ_k w_k · part_k (`pixel_jax.rl.rewards`), weights of the named preset (overridable)."""
    return ml_collections.ConfigDict({"preset": args.reward, "weights": dict(REWARD_PRESETS.get(args.reward))})


def checkpoint_config(*, every: int, keep: int = 3, best_metric: str = "eval/accuracy") -> ml_collections.ConfigDict:
    """`pixel_jax.checkpoint.Checkpoints` settings: the latest `keep` steps and the best one by
    `best_metric` ("" = none) are kept; saves are asynchronous."""
    return ml_collections.ConfigDict({"every": every, "keep": keep, "best_metric": best_metric, "best_mode": "max",
                                      "async_save": True})


def logging_config(*, log_every: int, gallery_every: int, gallery_rows: int = 4) -> ml_collections.ConfigDict:
    """Metrics to JSONL + TensorBoard every `log_every` steps; a rollout gallery every `gallery_every`."""
    return ml_collections.ConfigDict({"log_every": log_every, "gallery_every": gallery_every,
                                      "gallery_rows": gallery_rows})
