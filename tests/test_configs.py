"""The experiment configs: loaded as the entry points load them (absl config_flags, locked), their
reference values, their variants, and validation errors that name the field."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from pixel_jax import checkpoint, config_validation
from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from pixel_jax.rl.learner import LearnerConfig
from pixel_jax.tools import crop as crop_ops

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags' loader

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
DEVICES = 8  # tests/conftest.py


def load(name: str, arg: str = "", *overrides: str):
    """`--config=configs/<name>.py:<arg> --config.x=y ...` through config_flags, as pixel_jax.train parses it."""
    argv = ["prog", f"--config={CONFIGS / name}.py" + (f":{arg}" if arg else ""), *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", lock_config=True, flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def problems(config) -> str:
    with pytest.raises(ValueError, match="invalid config") as error:
        config_validation.validate(config, num_devices=DEVICES)
    return str(error.value)


def hf_folder(path: pathlib.Path, config: Qwen2_5_VLConfig) -> pathlib.Path:
    """A Hugging Face folder as far as validation reads it (config.json)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config.to_hf_config()))
    return path


# ------------------------------------------------------------------------ the defaults
@pytest.mark.parametrize("name", ["sft", "grpo", "eval"])
@pytest.mark.parametrize("arg", ["", "runlocal", "protocol=groundlight,reward=groundlight"])
def test_cpu_configs_load_locked_and_validate(name, arg):
    config = load(name, arg)
    assert config.kind == name
    assert config.model.preset == "tiny" and config.data.source == "synthetic"
    config_validation.validate(config, num_devices=DEVICES)
    with pytest.raises(AttributeError):
        config.new_field = 1  # locked: a typo in --config.x=y cannot add a field


def test_an_override_with_a_typo_is_an_error():
    assert load("grpo", "", "--config.rl.H=0.5").rl.H == 0.5
    with pytest.raises(AttributeError, match="HH"):
        load("grpo", "", "--config.rl.HH=0.5")


def test_grpo_holds_the_reference_coefficients():
    config = load("grpo")
    learner = config_validation.learner_config(config)
    assert (learner.group_size, learner.H, learner.N, learner.alpha, learner.beta) == (8, 0.3, 1.0, 0.5, 0.05)
    assert (learner.eps_low, learner.eps_high, learner.kl_coef, learner.entropy_coef) == (0.2, 0.35, 0.0, 0.0)
    assert (learner.advantage_estimator, learner.aggregation, learner.curiosity_variant) == (
        "dr_grpo", "token-mean", "paper")
    assert (learner.eta_alpha, learner.eta_beta) == (0.0, 0.0)  # fixed multipliers, as the paper
    first, later = config_validation.sampling_params(config.rollout)
    assert (first.temperature, first.top_k, first.top_p) == (1.0, 40, 0.95)
    assert later.temperature == 0.9
    assert (config.rollout.max_calls, config.rollout.max_images) == (3, 16)
    evaluation, _ = config_validation.sampling_params(config.eval.rollout)
    assert evaluation.temperature == 0.0  # greedy
    assert dict(config.reward.weights) == {"correct": 1.0}


def test_config_sections_cover_every_learner_field():
    config = load("grpo")
    sections = set(config.rl.keys()) | set(config.optimizer.keys()) | {"frozen"}
    assert sections == {field.name for field in dataclasses.fields(LearnerConfig)}


def test_paper_scale_sets_the_published_sizes(tmp_path):
    init = hf_folder(tmp_path / "qwen7b", Qwen2_5_VLConfig.qwen2_5_vl_7b())
    config = load("grpo", f"model=qwen2_5_vl_7b,init={init}")
    assert config.data.pipeline.batch_size == 256 and config.rl.group_size == 8
    assert config.optimizer.learning_rate == 1e-6
    assert not config.warm_start  # init is a warm-started checkpoint
    assert config.model.param_dtype == "bfloat16"
    assert config.model.remat == "full"  # a 7B step keeps one activation per layer for the backward pass
    # Pixel Reasoner's training budgets: inputs ≤ 2000 visual tokens, crops ≤ 1000.
    assert max(h * w for h, w in config.data.pipeline.view_sizes) // 28**2 <= 2000
    assert config.tools.crop_hw[0] * config.tools.crop_hw[1] // 28**2 <= 1000
    config_validation.validate(config, num_devices=DEVICES)

    cpu = load("grpo")
    assert cpu.data.pipeline.batch_size == 2 and cpu.total_steps < config.total_steps
    assert cpu.rollout.max_new_tokens < config.rollout.max_new_tokens
    assert cpu.model.remat == "none"

    evaluation = load("eval", f"model=qwen2_5_vl_7b,init={init},data=vstar", f"--config.data_dir={tmp_path}")
    assert max(h * w for h, w in evaluation.data.pipeline.view_sizes) // 28**2 <= 8000
    assert evaluation.tools.crop_hw[0] * evaluation.tools.crop_hw[1] // 28**2 <= 5120
    assert evaluation.data.split == "test"
    config_validation.validate(evaluation, num_devices=DEVICES)


def test_runlocal_shrinks_steps_batches_and_images():
    small, default = load("grpo", "runlocal"), load("grpo")
    assert (small.total_steps, small.data.pipeline.batch_size) == (2, 1)
    assert (default.total_steps, default.data.pipeline.batch_size) == (20, 2)
    assert (small.tools.crop_hw, default.tools.crop_hw) == ((112, 112), (224, 224))
    assert small.rollout.max_prompt_len < default.rollout.max_prompt_len
    assert small.run_name == "grpo_synthetic_tiny_runlocal"


def test_grpo_warm_starts_from_the_sft_config_sharing_model_and_tools():
    config = load("grpo", "", "--config.model.dtype=bfloat16", "--config.run_name=mine", "--config.seed=3")
    assert config.warm_start and config.sft.kind == "sft"
    assert config.sft.model.dtype == "bfloat16" and config.sft.tools.crop_hw == config.tools.crop_hw
    assert (config.workdir, config.sft.workdir) == ("runs/mine", "runs/mine/sft")
    assert config.sft.seed == 3 and config.data.pipeline.seed == 3
    assert config.optimizer.total_steps == config.total_steps * config.rl.policy_iterations
    replay, rollout = config.sft.rollout, config.rollout  # SFT replays its scripts in the RL layout
    assert (replay.max_prompt_len, replay.max_new_tokens, replay.max_calls) == (
        rollout.max_prompt_len, rollout.max_new_tokens, rollout.max_calls)


def test_groundlight_zooms_are_resized_to_the_input_side():
    config = load("grpo", "protocol=groundlight")
    longest = max(max(hw) for hw in config.data.pipeline.view_sizes)
    assert tuple(config.tools.crop_hw) == crop_ops.groundlight_output_hw(longest, max_pixels=64 * 28**2)


def test_benchmarks_read_their_evaluation_split():
    assert load("eval", "data=hrbench8k").data.source == "hr_bench/8k"
    pixel_reasoner = load("grpo", "data=pixelreasoner")
    assert (pixel_reasoner.data.source, pixel_reasoner.data.split) == ("pixel_reasoner_rl", "train")
    assert pixel_reasoner.sft.data.source == "pixel_reasoner_sft"
    assert (pixel_reasoner.eval.data.source, pixel_reasoner.eval.data.split) == ("vstar_bench", "test")


# ------------------------------------------------------------------------- the arg string
@pytest.mark.parametrize("arg, message", [
    ("data=imagenet", "config arg data='imagenet' is unknown"),
    ("protocol=xml", "config arg protocol='xml' is unknown"),
    ("reward=bleu", "config arg reward='bleu' is unknown"),
    ("model=qwen2_5_vl_72b", "config arg model='qwen2_5_vl_72b' is unknown"),
    ("modle=tiny", "config arg 'modle' is unknown"),
    ("runlocal=maybe", "must be a boolean"),
    ("data", "needs a value"),
])
def test_bad_args_name_the_key(arg, message):
    with pytest.raises(flags.IllegalFlagValueError, match=message):  # config_flags wraps get_config's ValueError
        load("grpo", arg)


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("override, message", [
    ("--config.rl.H=1.5", "config.rl.H=1.5 must be in [0, 1] (the target RaPR)"),
    ("--config.rl.H=-0.1", "config.rl.H=-0.1 must be in [0, 1]"),
    ("--config.rl.group_size=1", "group_size=1 must be >= 2"),
    ("--config.rl.beta=-1.0", "config.rl.beta=-1.0 must be >= 0"),
    ("--config.rl.eps_low=1.0", "config.rl.eps_low=1.0 must be in [0, 1)"),
    ("--config.rl.micro_batches=3", "config.rl.micro_batches=3 must divide the 2 groups"),
    ("--config.rl.advantage_estimator=ppo", "advantage_estimator='ppo' is not one of"),
    ("--config.mesh.data=3", "config.mesh: mesh={'data': 3, 'fsdp': -1, 'tensor': 1}: 8 devices are not divisible"),
    ("--config.mesh.fsdp=4", "config.mesh: mesh={'data': 1, 'fsdp': 4, 'tensor': 1} has 4 devices but 8"),
    ("--config.tools.crop_hw=(230, 224)", "config.tools.crop_hw=(230, 224) must be two positive multiples of 28"),
    ("--config.protocol=xml", "config.protocol='xml' is not one of ('groundlight', 'hermes')"),
    ("--config.data.source=imagenet", "config.data.source='imagenet' is not 'synthetic' nor a dataset builder"),
    ("--config.data.pipeline.view_sizes=((224, 230),)", "config.data.pipeline: view_sizes must be (H, W) pairs"),
    ("--config.rollout.later_turns.top_k=20", "config.rollout.later_turns.top_k=20 must equal first_turn.top_k=40"),
    ("--config.rollout.first_turn.top_p=0.0", "config.rollout: top_p must be in (0, 1]"),
    ("--config.model.dtype=float8", "config.model: Invalid Qwen2_5_VLConfig: dtype='float8'"),
    ("--config.model.remat=all", "config.model: Invalid Qwen2_5_VLConfig: remat='all' is not one of"),
    ("--config.optimizer.learning_rate=0.0", "config.optimizer.learning_rate=0.0 must be > 0"),
    ("--config.sft.optimizer.warmup_steps=500",
     "config.sft.optimizer.warmup_steps=500 must be in [0, total_steps=100)"),
    ("--config.frozen=('visual[',)", "config.frozen: 'visual[' is not a valid regex"),
    ("--config.sft.aggregation=mean", "config.sft.aggregation='mean' is not one of"),
    ("--config.checkpoint.best_mode=best", "config.checkpoint.best_mode='best' is not one of ('max', 'min')"),
    ("--config.eval.every=0", "config.eval.every=0 must be >= 1"),
    ("--config.distributed=maybe", "config.distributed='maybe' is not one of"),
])
def test_validation_names_the_field(override, message):
    assert message in problems(load("grpo", "", override))


def test_every_problem_is_reported_at_once():
    report = problems(load("grpo", "", "--config.rl.H=2.0", "--config.mesh.tensor=3"))
    assert "config.rl.H=2.0" in report and "config.mesh" in report


def test_unknown_reward_parts_are_named():
    config = load("grpo")
    with config.unlocked():
        config.reward.weights.bleu = 1.0
    assert "config.reward.weights={'bleu': 1.0, 'correct': 1.0} names unknown reward parts ['bleu']" in problems(config)


def test_benchmarks_cannot_be_trained_on_and_need_a_data_dir():
    report = problems(load("grpo", "data=vstar"))
    assert "config.data.split is not set: data=vstar (vstar_bench) is an evaluation benchmark" in report
    assert "config.data_dir is empty: data=vstar" in report
    assert "config.data.split is not set: data=pixelreasoner" in problems(load("eval", "data=pixelreasoner"))


def test_init_must_exist_and_match_the_model(tmp_path):
    assert "config.model.init='/no/such/folder': no such folder" in problems(load("grpo", "init=/no/such/folder"))
    (tmp_path / "empty").mkdir()
    assert "is neither a Hugging Face folder (no config.json) nor a pixel_jax checkpoint" in problems(
        load("eval", f"init={tmp_path / 'empty'}"))
    assert "config.model.init is empty: the qwen2_5_vl_3b model needs weights" in problems(
        load("eval", "model=qwen2_5_vl_3b"))

    wider = hf_folder(tmp_path / "wider", Qwen2_5_VLConfig.tiny(hidden_size=128, num_attention_heads=8))
    assert "fields ['hidden_size', 'num_attention_heads'] differ" in problems(
        load("eval", f"init={wider}"))
    config_validation.validate(load("eval", f"init={hf_folder(tmp_path / 'tiny', Qwen2_5_VLConfig.tiny())}"),
                               num_devices=DEVICES)


def test_init_may_be_a_run_with_checkpoints(tmp_path):
    with checkpoint.Checkpoints(tmp_path / "run" / checkpoint.CHECKPOINT_DIR) as checkpoints:
        checkpoints.save(1, {"params": {"w": 1.0}})
    config = load("grpo", f"init={tmp_path / 'run'}")
    assert not config.warm_start
    config_validation.validate(config, num_devices=DEVICES)
