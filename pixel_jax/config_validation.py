"""Checks an experiment config (configs/*.py) before a run starts; builds the objects it describes.

    config = FLAGS.config
    config_validation.validate(config)        # one ValueError listing every problem, e.g.
    # invalid config:
    #   config.rl.H=1.5 must be in [0, 1] (the target RaPR)
    #   config.mesh: mesh={'data': 3, 'fsdp': 1, 'tensor': 1} has 3 devices but 8 are available; ...

Every message names the field it is about. Most rules are checked by building what the run will
build — the model config, `learner.LearnerConfig`, the pipeline's `PipelineConfig` and
`SyntheticConfig`, the `SamplingParams`, the mesh and sharding rules — so each rule lives once, in
the library; those builders are public for the entry points. The rest are the config's own:
coefficients the library checks only when it runs (H, N, α, β, ε), an `init` that must exist and
match the model, data that must have the split a run reads, crop grids of whole visual tokens,
step counts and intervals.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import ml_collections
from etils import epath

from pixel_jax import checkpoint, distributed, sharding
from pixel_jax.data import builders
from pixel_jax.data.pipeline import PipelineConfig
from pixel_jax.data.synthetic import VIEW_MULTIPLE as TOKEN_PX  # one visual token covers 28×28 px
from pixel_jax.data.synthetic import SyntheticConfig
from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from pixel_jax.models.qwen2_5_vl.weights import read_config
from pixel_jax.rl.grpo import LOSS_AGGREGATIONS
from pixel_jax.rl.learner import LearnerConfig
from pixel_jax.rl.rewards import REWARD_PARTS
from pixel_jax.rollout.sampling import SamplingParams
from pixel_jax.tools.protocols import PROTOCOLS

KINDS = ("sft", "grpo", "eval")
MODEL_PRESETS = ("tiny", "qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen2_5_vl_32b", "qwen2_5_vl_72b")
RANDOM_INIT_PRESETS = ("tiny",)  # the only model a run may start from random weights


# ---------------------------------------------------------------------------- builders
def model_config(model: ml_collections.ConfigDict) -> Qwen2_5_VLConfig:
    """The architecture of `config.model` (preset, dtypes and remat policy)."""
    if model.preset not in MODEL_PRESETS:
        raise ValueError(f"preset={model.preset!r} is not one of {MODEL_PRESETS}")
    return getattr(Qwen2_5_VLConfig, model.preset)(dtype=model.dtype, param_dtype=model.param_dtype,
                                                   remat=model.remat)


def learner_config(config: ml_collections.ConfigDict) -> LearnerConfig:
    """The GRPO update's coefficients: `config.rl`, `config.optimizer` and `config.frozen`."""
    return LearnerConfig(**config.rl.to_dict(), **config.optimizer.to_dict(), frozen=tuple(config.frozen))


def pipeline_config(data: ml_collections.ConfigDict) -> PipelineConfig:
    return PipelineConfig(**data.pipeline.to_dict())


def synthetic_config(data: ml_collections.ConfigDict) -> SyntheticConfig:
    return SyntheticConfig(**data.synthetic.to_dict())


def sampling_params(rollout: ml_collections.ConfigDict) -> tuple[SamplingParams, SamplingParams]:
    """(first turn, later turns) of `config.rollout`."""
    return SamplingParams(**rollout.first_turn.to_dict()), SamplingParams(**rollout.later_turns.to_dict())


# -------------------------------------------------------------------------- validation
class _Report:
    """Collects problems, once each; each names a field."""

    def __init__(self):
        self.problems: list[str] = []

    def add(self, message: str) -> None:
        if message not in self.problems:  # shared fields (data_dir) are met from several sections
            self.problems.append(message)

    def require(self, ok: bool, path: str, value: Any, rule: str) -> None:
        if not ok:
            self.add(f"{path}={value!r} {rule}")

    def attempt(self, path: str, build: Callable[[], Any]) -> None:
        """Builds a library object; its ValueError becomes a problem of `path`."""
        try:
            build()
        except ValueError as error:
            self.add(f"{path}: {error}")


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Raises ValueError listing every problem of `config` (a configs/{sft,grpo,eval}.py config);
    the mesh is checked against `num_devices` (default: every device of every process)."""
    report = _Report()
    report.require(config.kind in KINDS, "config.kind", config.kind, f"is not one of {KINDS}")
    if config.kind in KINDS:
        _check_run(report, config, jax.device_count() if num_devices is None else num_devices)
        _check_phase(report, config, "config")
        if config.kind == "grpo":
            _check_rl(report, config)
            if config.warm_start:
                _check_phase(report, config.sft, "config.sft")
    if report.problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(report.problems))


def _check_run(report: _Report, config: ml_collections.ConfigDict, num_devices: int) -> None:
    """What every run shares: placement, model and its weights, protocol, tools."""
    report.require(config.distributed in distributed.MODES, "config.distributed", config.distributed,
                   f"is not one of {distributed.MODES}")
    report.attempt("config.mesh", lambda: sharding.mesh_shape(config.mesh.to_dict(), num_devices))
    report.attempt("config.sharding_rules", lambda: sharding.make_rules(config.sharding_rules.to_dict()))
    report.attempt("config.model", lambda: model_config(config.model))
    _check_init(report, config.model)
    report.require(config.protocol in PROTOCOLS, "config.protocol", config.protocol,
                   f"is not one of {PROTOCOLS.names()}")
    crop_hw = tuple(config.tools.crop_hw)
    report.require(len(crop_hw) == 2 and all(side > 0 and side % TOKEN_PX == 0 for side in crop_hw),
                   "config.tools.crop_hw", crop_hw,
                   f"must be two positive multiples of {TOKEN_PX} (a crop is whole {TOKEN_PX}×{TOKEN_PX} px tokens)")
    report.require(config.tools.parser_window >= 1, "config.tools.parser_window", config.tools.parser_window,
                   "must be >= 1")


def _check_init(report: _Report, model: ml_collections.ConfigDict) -> None:
    """`init` is empty (random weights: tiny only), a Hugging Face folder of the same architecture,
    or a pixel_jax checkpoint directory (or a run's work directory holding one)."""
    path = model.init
    if not path:
        if model.preset not in RANDOM_INIT_PRESETS:
            report.add(f"config.model.init is empty: the {model.preset} model needs weights (a local Hugging Face "
                       f"folder or a pixel_jax checkpoint); only {RANDOM_INIT_PRESETS} may start from random weights")
        return
    folder = epath.Path(path)
    if not folder.is_dir():
        report.add(f"config.model.init={path!r}: no such folder")
    elif (folder / "config.json").is_file():
        report.attempt("config.model.init", lambda: _check_architecture(folder, model))
    elif checkpoint.checkpoint_directory(folder) is None:
        report.add(f"config.model.init={path!r} is neither a Hugging Face folder (no config.json) nor a pixel_jax "
                   f"checkpoint (no finished step in it or in its {checkpoint.CHECKPOINT_DIR}/)")


def _check_architecture(folder: epath.Path, model: ml_collections.ConfigDict) -> None:
    ours = model_config(model)
    theirs = read_config(folder).replace(dtype=ours.dtype, param_dtype=ours.param_dtype, remat=ours.remat)
    differing = [f.name for f in dataclasses.fields(ours) if getattr(ours, f.name) != getattr(theirs, f.name)]
    if differing:
        raise ValueError(f"{folder} holds another architecture than preset={model.preset!r} "
                         f"(fields {differing} differ); pick the preset of the checkpoint")


def _check_phase(report: _Report, config: ml_collections.ConfigDict, root: str) -> None:
    """A phase's own sections: data, rollouts, reward; for training, steps, optimizer and intervals."""
    data_dir = config.data_dir
    training = config.kind != "eval"
    _check_data(report, config.data, f"{root}.data", data_dir, training=training)
    if "rollout" in config:
        _check_rollout(report, config.rollout, f"{root}.rollout")
    unknown = sorted(set(config.reward.weights.keys()) - set(REWARD_PARTS.names()))
    report.require(not unknown, f"{root}.reward.weights", config.reward.weights.to_dict(),
                   f"names unknown reward parts {unknown}; known: {REWARD_PARTS.names()}")
    if not training:
        report.require(config.num_examples >= 0, f"{root}.num_examples", config.num_examples, "must be >= 0 (0 = all)")
        return
    report.require(config.total_steps >= 1, f"{root}.total_steps", config.total_steps, "must be >= 1")
    _check_optimizer(report, config.optimizer, f"{root}.optimizer")
    if "aggregation" in config:  # SFT (GRPO's is in `rl`, checked by LearnerConfig)
        report.require(config.aggregation in LOSS_AGGREGATIONS, f"{root}.aggregation", config.aggregation,
                       f"is not one of {LOSS_AGGREGATIONS.names()}")
    for pattern in config.frozen:
        report.attempt(f"{root}.frozen", lambda: _compile(pattern))
    evaluation = config.eval
    report.require(evaluation.every >= 1, f"{root}.eval.every", evaluation.every, "must be >= 1")
    report.require(evaluation.num_examples >= 0, f"{root}.eval.num_examples", evaluation.num_examples,
                   "must be >= 0 (0 = all)")
    _check_data(report, evaluation.data, f"{root}.eval.data", data_dir, training=False)
    _check_rollout(report, evaluation.rollout, f"{root}.eval.rollout")
    saving = config.checkpoint
    for name in ("every", "keep"):
        report.require(saving[name] >= 1, f"{root}.checkpoint.{name}", saving[name], "must be >= 1")
    report.require(saving.best_mode in checkpoint.BEST_MODES, f"{root}.checkpoint.best_mode", saving.best_mode,
                   f"is not one of {checkpoint.BEST_MODES}")
    for name in ("log_every", "gallery_every"):
        report.require(config.logging[name] >= 1, f"{root}.logging.{name}", config.logging[name], "must be >= 1")


def _compile(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"{pattern!r} is not a valid regex ({error})") from None


def _check_data(report: _Report, data: ml_collections.ConfigDict, path: str, data_dir: str, *,
                training: bool) -> None:
    """A known source with the split the phase reads, where it can be read from."""
    synthetic = data.source == "synthetic"
    known = synthetic or data.source.split("/")[0] in builders.BUILDERS
    report.require(known, f"{path}.source", data.source,
                   f"is not 'synthetic' nor a dataset builder of {builders.BUILDERS.names()}")
    if data.split is None:
        use = ("is an evaluation benchmark (no training split): train on another data= and evaluate it with "
               "configs/eval.py" if training else "has no evaluation split: set the split to evaluate")
        report.add(f"{path}.split is not set: data={data.name} ({data.source}) {use}")
    if synthetic:
        report.require(data.num_examples >= 1, f"{path}.num_examples", data.num_examples, "must be >= 1")
        report.attempt(f"{path}.synthetic", lambda: synthetic_config(data))
    elif known:
        if not data_dir:
            report.add(f"config.data_dir is empty: data={data.name} is read from prepared TFDS records; set "
                       "--config.data_dir=<folder> (and the data section's manual_dir=<release files> to prepare "
                       "them once)")
        if data.manual_dir and not epath.Path(data.manual_dir).is_dir():
            report.add(f"{path}.manual_dir={data.manual_dir!r}: no such folder")
    report.attempt(f"{path}.pipeline", lambda: pipeline_config(data))


def _check_rollout(report: _Report, rollout: ml_collections.ConfigDict, path: str) -> None:
    report.attempt(path, lambda: sampling_params(rollout))
    top_k = (rollout.first_turn.top_k, rollout.later_turns.top_k)
    report.require(top_k[0] == top_k[1] or 0 in top_k, f"{path}.later_turns.top_k", top_k[1],
                   f"must equal first_turn.top_k={top_k[0]} or one of them be 0 (top-k is a static shape)")
    for name, minimum in (("max_prompt_len", 1), ("max_new_tokens", 1), ("max_calls", 0),
                          ("max_images", 0)):
        report.require(rollout[name] >= minimum, f"{path}.{name}", rollout[name], f"must be >= {minimum}")


def _check_optimizer(report: _Report, optimizer: ml_collections.ConfigDict, path: str) -> None:
    report.require(optimizer.learning_rate > 0, f"{path}.learning_rate", optimizer.learning_rate, "must be > 0")
    report.require(0 <= optimizer.warmup_steps < optimizer.total_steps, f"{path}.warmup_steps",
                   optimizer.warmup_steps, f"must be in [0, total_steps={optimizer.total_steps})")
    report.require(optimizer.weight_decay >= 0, f"{path}.weight_decay", optimizer.weight_decay, "must be >= 0")
    report.require(optimizer.max_grad_norm is None or optimizer.max_grad_norm > 0, f"{path}.max_grad_norm",
                   optimizer.max_grad_norm, "must be > 0 (or None: no clipping)")


def _check_rl(report: _Report, config: ml_collections.ConfigDict) -> None:
    """The curiosity and clipping coefficients the library checks only when it runs, the batch
    against the micro-batches, then everything else through `learner.LearnerConfig`."""
    rl = config.rl
    report.require(0.0 <= rl.H <= 1.0, "config.rl.H", rl.H, "must be in [0, 1] (the target RaPR)")
    for name in ("N", "alpha", "beta", "eta_alpha", "eta_beta", "alpha_max", "beta_max", "eps_high"):
        report.require(rl[name] >= 0, f"config.rl.{name}", rl[name], "must be >= 0")
    report.require(0.0 <= rl.eps_low < 1.0, "config.rl.eps_low", rl.eps_low, "must be in [0, 1)")
    groups = config.data.pipeline.batch_size
    report.require(groups % rl.micro_batches == 0, "config.rl.micro_batches", rl.micro_batches,
                   f"must divide the {groups} groups of a batch (config.data.pipeline.batch_size; a micro-batch "
                   "holds whole groups)")
    report.require(config.dynamic_sampling.max_rollouts >= 1, "config.dynamic_sampling.max_rollouts",
                   config.dynamic_sampling.max_rollouts, "must be >= 1")
    learner_fields = ("config.rl", "config.optimizer", "config.frozen")
    if not any(problem.startswith(learner_fields) for problem in report.problems):  # else repeated by LearnerConfig
        report.attempt("config.rl / config.optimizer / config.frozen", lambda: learner_config(config))
