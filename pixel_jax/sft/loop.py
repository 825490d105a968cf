"""The warm-start SFT phase of a run (configs/sft.py): synthesise once, then train.

    workdir = sft.loop.run(config)      # resumable: a rerun continues where the last one stopped

1. Synthesis: the first `synthesis.num_examples` examples of the training split (one ordered
   pass) are scripted and replayed through the rollout engine (`synthesize.Synthesizer`), batch by
   batch, into `<workdir>/trajectories` (`store.TrajectoryStore`).
2. Training: `total_steps` SFT updates (`trainer.SFTStep`) over the stored batches, epoch e in
   the order drawn from (seed, e), so the batch of step s follows from s alone: a resumed run reads
   exactly the batches the uninterrupted one would have.
3. Every `eval.every` steps and at the end: greedy rollouts of the held-out split
   (`eval.benchmarks.Evaluator`), logged as eval/*; checkpoints every `checkpoint.every` steps,
   ranked by `checkpoint.best_metric` when an evaluation ran at that step.
"""

from __future__ import annotations

import logging

import jax
import ml_collections
from etils import epath
from flax import nnx

from pixel_jax import checkpoint, train_step
from pixel_jax.eval.benchmarks import Evaluator
from pixel_jax.experiment import Experiment
from pixel_jax.metrics import MetricWriter, ProgressBar
from pixel_jax.sft import synthesize, trainer
from pixel_jax.sft.store import TrajectoryStore

TRAJECTORY_DIR = "trajectories"

_LOG = logging.getLogger(__name__)


def sft_config(config: ml_collections.ConfigDict) -> trainer.SFTConfig:
    """The SFT update's settings: `config.optimizer` and `config.aggregation`."""
    return trainer.SFTConfig(**config.optimizer.to_dict(), aggregation=config.aggregation)


def synthesis_config(config: ml_collections.ConfigDict) -> synthesize.SynthesisConfig:
    """The scripts' mix and the replay's shapes: the run's rollout and tools."""
    return synthesize.SynthesisConfig(
        protocol=config.protocol, kind_weights=config.synthesis.kind_weights.to_dict(),
        crop_hw=tuple(config.tools.crop_hw), prompt_len=config.rollout.max_prompt_len,
        max_new_tokens=config.rollout.max_new_tokens, max_calls=config.rollout.max_calls, seed=config.seed)


def synthesise(experiment: Experiment, model: nnx.Module, store: TrajectoryStore) -> None:
    """Replays the scripts of the synthesis examples into `store`, from its first missing batch."""
    config = experiment.config
    if store.complete:
        return
    synthesizer = synthesize.Synthesizer(model, experiment.tok, synthesis_config(config))
    batches = experiment.batches(config.data, num_examples=config.synthesis.num_examples, single_pass=True)
    done = len(store)
    for index, batch in enumerate(batches):
        if index < done:
            continue
        sft_batch, _ = synthesizer(model, batch)
        store.write(index, sft_batch.replace(trajectory=experiment.host_trajectory(sft_batch.trajectory)))
        _LOG.info("synthesised warm-start batch %d (%d examples)", index, int(batch.valid.sum()))
    store.mark_complete()


def run(config: ml_collections.ConfigDict) -> epath.Path:
    """Runs (or resumes, or finds finished) the SFT phase; returns its work directory, whose latest
    checkpoint holds the warm-started parameters."""
    experiment = Experiment.from_config(config)
    workdir = epath.Path(config.workdir)
    plan = trainer.plan_sft(experiment.create_model_fn(), sft_config(config), experiment.mesh, experiment.rules)
    with checkpoint.Checkpoints.for_run(workdir, config.checkpoint) as checkpoints:
        if checkpoints.latest_step() is not None:
            state = checkpoints.restore(plan.abstract_state)
        else:
            state = train_step.init_state(plan, experiment.load_model(config.model.init))
        if int(state.step) < config.total_steps:
            _train(experiment, plan, state, checkpoints)
        else:
            _LOG.info("SFT phase in %s already finished (%d steps)", workdir, int(state.step))
    return workdir


def _train(experiment: Experiment, plan: train_step.TrainPlan, state: train_step.TrainState,
           checkpoints: checkpoint.Checkpoints) -> None:
    """Synthesis if unfinished, then steps `state.step + 1` … `total_steps` (the module docstring)."""
    config, workdir, start = experiment.config, epath.Path(experiment.config.workdir), int(state.step)
    model = nnx.merge(plan.graphdef, state.params)
    store = TrajectoryStore(workdir / TRAJECTORY_DIR)
    synthesise(experiment, model, store)
    evaluator = Evaluator(experiment, model, config.eval.rollout, config.reward.weights.to_dict())
    update = trainer.SFTStep(plan, sft_config(config))
    with MetricWriter(workdir, start_step=start + 1 if start else 0) as writer:  # steps after `start` rerun
        bar = ProgressBar(config.total_steps, initial=start, description="SFT")
        for step in range(start + 1, config.total_steps + 1):
            epoch, position = divmod(step - 1, len(store))
            stored = store.read(int(store.epoch_order(epoch, config.seed)[position]))
            state, metrics = update(state, experiment.place_batch(stored))
            metrics = {f"train/{name}": value for name, value in jax.device_get(metrics).items()}
            last = step == config.total_steps
            if step % config.eval.every == 0 or last:
                held_out = experiment.batches(config.eval.data, num_examples=config.eval.num_examples,
                                              single_pass=True)
                report = evaluator(nnx.merge(plan.graphdef, state.params), held_out)
                metrics.update({f"eval/{name}": value for name, value in report.metrics.items()})
            if step % config.logging.log_every == 0 or last or "eval/accuracy" in metrics:
                writer.write(step, metrics)
            bar.update(step, {name.removeprefix("eval/"): value for name, value in metrics.items()})
            if step % config.checkpoint.every == 0 or last:
                writer.flush()  # the metrics a resume from this checkpoint keeps are on disk
                ranked = {k: v for k, v in metrics.items() if k.startswith("eval/")} or None
                checkpoints.save(step, state, metrics=ranked, force=last)
        bar.close()
