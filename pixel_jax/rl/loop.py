"""The GRPO phase of a run (configs/grpo.py): rollouts → rewards → advantages → update.

    summary = rl.loop.run(config, init)      # resumable: a rerun continues where the last one stopped

One step (METHOD.md §1, §3):
1. Collect: draw a batch of Q prompts, roll out G samples each on device (`rollout.engine`, the
   learner's current θ), score r(x, y_i) on the host (`rl.scoring`) and shape r' with the state's
   α, β. With dynamic sampling, groups whose r' are all equal are dropped and further batches of
   the same view bucket are rolled out, up to `dynamic_sampling.max_rollouts` per step
   (`rl.dynamic_sampling`); a batch of another bucket is put back in the iterator for the next step.
2. Update: the learner's jitted step (`rl.learner`) on the Q·G chosen rows: advantages, the clipped
   loss, AdamW, the multipliers' dual step.
3. Every `logging.gallery_every` steps a gallery of the step's rollouts; every `eval.every` steps
   and at the end greedy held-out rollouts (eval/*); checkpoints every `checkpoint.every` steps:
   the learner state (θ, Adam moments, α and β, RNG, step) and the data iterator, so that a resumed
   run draws exactly the batches and keys of the uninterrupted one.
Step 0 evaluates the initial model (the warm start) so that the run reports both side by side.
"""

from __future__ import annotations

import collections
import logging
from typing import Iterator

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from pixel_jax import checkpoint, config_validation, distributed, gallery
from pixel_jax.data.pipeline import Batch
from pixel_jax.eval.benchmarks import Evaluator
from pixel_jax.experiment import Experiment
from pixel_jax.metrics import MetricWriter, ProgressBar, read_metrics
from pixel_jax.rl import dynamic_sampling, learner, scoring
from pixel_jax.rollout import inputs as rollout_inputs
from pixel_jax.rollout.engine import Engine, FinishReason

_LOG = logging.getLogger(__name__)
SUMMARY_KEYS = ("accuracy", "reward", "rapr", "mean_calls", "failed_call_rate")  # eval/* of the summary


class Collector:
    """Step 1 of the module docstring: rollouts of the current policy until the batch is full."""

    def __init__(self, experiment: Experiment, engine: Engine, batches: grain.DatasetIterator,
                 config: ml_collections.ConfigDict, learner_config: learner.LearnerConfig):
        self.experiment, self.engine, self.batches = experiment, engine, batches
        self.config, self.learner_config = config, learner_config

    def _draws(self) -> Iterator[Batch]:
        """Batches of the first one's view bucket; a batch of another bucket is put back and ends the draws."""
        first = next(self.batches)
        yield first
        while True:
            position = self.batches.get_state()
            batch = next(self.batches)
            if batch.view.shape != first.view.shape:
                self.batches.set_state(position)
                return
            yield batch

    def __call__(self, state: learner.LearnerState, policy: nnx.Module):
        """(state with its RNG advanced, the learner's batch, the rollouts' metrics, the first rollout
        with its batch and scores for the gallery)."""
        config = self.config
        rollouts, scored = [], []
        limit = config.dynamic_sampling.max_rollouts if config.dynamic_sampling.enabled else 1
        for batch in self._draws():
            state, key = state.split_rng()
            rollout, scores = self._rollout(state, policy, batch, key)
            rollouts.append(rollout)
            scored.append((batch, scores))
            informative = sum(int(r.informative().sum()) for r in rollouts)
            if len(rollouts) >= limit or informative >= config.data.pipeline.batch_size:
                break
        assembled = dynamic_sampling.assemble(rollouts, config.data.pipeline.batch_size)
        metrics = _rollout_metrics(rollouts, [s for _, s in scored])
        metrics["rollout/informative_groups"] = assembled.informative_groups / config.data.pipeline.batch_size
        batch = self.experiment.place_batch(learner.RolloutBatch(
            trajectory=assembled.trajectory, task_reward=assembled.task_reward,
            prompt_pixel_values=assembled.prompt_pixel_values, prompt_grid_thw=assembled.prompt_grid_thw))
        return state, batch, metrics, (rollouts[0], *scored[0])

    def _rollout(self, state: learner.LearnerState, policy: nnx.Module, batch: Batch, key: jax.Array):
        experiment, group_size = self.experiment, self.learner_config.group_size
        host = rollout_inputs.rollout_inputs(batch, experiment.protocol, experiment.tok,
                                             self.config.rollout.max_prompt_len)
        trajectory = self.engine(policy, experiment.place_batch(host), key, group_size=group_size)
        trajectory = experiment.host_trajectory(trajectory)
        scores = scoring.score_rollouts(trajectory, batch.examples, group_size=group_size, tok=experiment.tok,
                                        protocol=experiment.protocol, weights=self.config.reward.weights.to_dict())
        shaped = learner.shape_batch_rewards(self.learner_config, state.curiosity, jnp.asarray(scores.task_reward),
                                             jax.tree.map(jnp.asarray, trajectory))
        rollout = dynamic_sampling.Rollout(
            trajectory=trajectory, task_reward=scores.task_reward, shaped_reward=np.asarray(shaped["reward"]),
            prompt_pixel_values=host["pixel_values"], prompt_grid_thw=host["image_grid_thw"], valid=batch.valid)
        return rollout, scores


def _rollout_metrics(rollouts, scores) -> dict[str, float]:
    """Means over every sampled response of the step (before the filter): what the policy does."""
    trajectories = [r.trajectory for r in rollouts]
    calls = np.concatenate([t.n_calls for t in trajectories])
    failed = np.concatenate([t.n_errors for t in trajectories])
    finish = collections.Counter(FinishReason(int(f)).name.lower() for t in trajectories for f in t.finish)
    metrics = {
        "accuracy": np.concatenate([s.correct for s in scores]).mean(),
        "rollout/task_reward": np.concatenate([s.task_reward for s in scores]).mean(),
        "rapr": (calls > 0).mean(),
        "rollout/calls": calls.mean(),
        "rollout/failed_call_rate": failed.sum() / max(calls.sum(), 1),
        "rollout/response_length": np.concatenate([t.response_length for t in trajectories]).mean(),
        "rollout/rollouts": len(rollouts),
    }
    metrics.update({f"rollout/finish_{name}": count / len(calls) for name, count in finish.items()})
    return metrics


def _update_metrics(metrics) -> dict[str, float]:
    """The learner's metrics: per policy iteration arrays [μ] averaged (the reward parts are scalars)."""
    return {("reward" if name == "reward" else f"train/{name}"): float(np.mean(value))
            for name, value in jax.device_get(metrics).items()}


def policy_model(plan: learner.LearnerPlan, frozen: nnx.State, state: learner.LearnerState) -> nnx.Module:
    """π_θ of `state` as a model (no copy: the frozen and trainable parameters merged)."""
    return nnx.merge(plan.graphdef, frozen, state.params)


def run(config: ml_collections.ConfigDict, init: str) -> dict:
    """Runs (or resumes) GRPO from `init` (a HF folder, a checkpoint or a run directory, "" =
    random); returns the held-out summary {"initial": {...}, "final": {...}} (eval/* metrics)."""
    experiment = Experiment.from_config(config)
    workdir = epath.Path(config.workdir)
    learner_config = config_validation.learner_config(config)
    plan = learner.plan_learner(experiment.create_model_fn(), learner_config, experiment.mesh, experiment.rules)
    model = experiment.load_model(init)
    state, frozen = learner.init_learner(plan, model, seed=config.seed)
    batches = experiment.batches(config.data)
    with checkpoint.Checkpoints.for_run(workdir, config.checkpoint) as checkpoints:
        if checkpoints.latest_step() is not None:
            state = checkpoints.restore(state, data_iterator=batches)
        if int(state.step) < config.total_steps:
            _train(experiment, plan, model, state, frozen, batches, checkpoints)
        else:
            _LOG.info("GRPO phase in %s already finished (%d steps)", workdir, int(state.step))
    return summary(workdir)


def _train(experiment: Experiment, plan: learner.LearnerPlan, model: nnx.Module, state: learner.LearnerState,
           frozen: nnx.State, batches: grain.DatasetIterator, checkpoints: checkpoint.Checkpoints) -> None:
    """Steps `state.step + 1` … `total_steps` (the module docstring), logging, evaluating,
    drawing galleries and saving as the config says."""
    config, workdir, start = experiment.config, epath.Path(experiment.config.workdir), int(state.step)
    collect = Collector(experiment, experiment.engine(model, config.rollout), batches, config, plan.config)
    evaluator = Evaluator(experiment, model, config.eval.rollout, config.reward.weights.to_dict())

    def evaluate(state: learner.LearnerState) -> dict[str, float]:
        held_out = experiment.batches(config.eval.data, num_examples=config.eval.num_examples, single_pass=True)
        report = evaluator(policy_model(plan, frozen, state), held_out)
        return {f"eval/{name}": value for name, value in report.metrics.items()}

    update = learner.make_update_step(plan)
    with MetricWriter(workdir, start_step=start + 1 if start else 0) as writer:  # steps after `start` rerun
        if start == 0:
            writer.write(0, evaluate(state))
        bar = ProgressBar(config.total_steps, initial=start, description="GRPO")
        for step in range(start + 1, config.total_steps + 1):
            state, batch, metrics, (rollout, first_batch, scores) = collect(state, policy_model(plan, frozen, state))
            state, update_metrics = update(state, frozen, batch)
            metrics.update(_update_metrics(update_metrics))
            last = step == config.total_steps
            if step % config.eval.every == 0 or last:
                metrics.update(evaluate(state))
            if step % config.logging.log_every == 0 or last or "eval/accuracy" in metrics:
                writer.write(step, metrics)
            bar.update(step, metrics)
            if (step % config.logging.gallery_every == 0 or last) and distributed.is_main_process():
                rows = range(min(config.logging.gallery_rows, len(rollout.task_reward)))
                gallery.write_gallery(workdir / gallery.GALLERY_DIR, step, gallery.batch_entries(
                    rollout.trajectory, first_batch, scores, experiment.tables, group_size=plan.config.group_size,
                    rows=rows, extra={"shaped_reward": rollout.shaped_reward}))
            if step % config.checkpoint.every == 0 or last:
                writer.flush()  # the metrics a resume from this checkpoint keeps are on disk
                ranked = {k: v for k, v in metrics.items() if k.startswith("eval/")} or None
                checkpoints.save(step, state, data_iterator=batches, metrics=ranked, force=last)
        bar.close()


def summary(workdir: epath.PathLike) -> dict:
    """The held-out metrics of the initial model (step 0) and of the last evaluation of a run:
    {"initial": {name: value}, "final": {name: value}, "final_step": step}."""
    evaluations = [record for record in read_metrics(workdir) if "eval/accuracy" in record]
    if not evaluations:
        raise ValueError(f"{workdir}: no evaluation in its metrics")
    pick = lambda record: {key: record[f"eval/{key}"] for key in SUMMARY_KEYS if f"eval/{key}" in record}  # noqa: E731
    return {"initial": pick(evaluations[0]), "final": pick(evaluations[-1]), "final_step": evaluations[-1]["step"]}
