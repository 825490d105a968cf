"""Warm-start SFT (METHOD.md, Phase 1): next-token cross-entropy on the assistant's tokens of
replayed trajectories, through the GRPO learner's own forward.

    plan = plan_sft(create_model, SFTConfig(learning_rate=1e-4, total_steps=500), mesh, rules)
    state = train_step.init_state(plan)        # TrainState(step, params, opt_state): orbax saves it
    step = SFTStep(plan)
    state, metrics = step(state, sft_batch)    # sft_batch from `sft.synthesize.Synthesizer`

Objective, with m = `Trajectory.loss_mask`:

    L(θ) = − Σ_{b,s} m_{b,s} · log π_θ(x_{b,s} | slots before s) / Σ_{b,s} m_{b,s}

(the "token-mean" aggregation of `rl.grpo`; others can be chosen). m is 1 exactly on the tokens
the assistant wrote — reasoning, calls, answer, end-of-turn token — and 0 on the prompt, the
injected tool results and their image tokens, holes and padding rows: the RL learner's mask.
log π_θ is `rollout.trajectory.token_logprobs` at temperature 1, the replay forward of the learner
(the rollout's M-RoPE positions, holes skipped, crops re-patchified), so SFT and GRPO train one
computation on one token layout.

The update is `train_step.make_train_step` (sharded state, donated, AdamW after clipping), fed the
trajectory's arrays as batch fields whose rows lie on the batch mesh axes. Shapes are fixed by the
bucket (prompt length, response budget, calls, crop grid, view size): one compilation per bucket.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from pixel_jax import sharding, train_step
from pixel_jax.rl import grpo
from pixel_jax.rollout.trajectory import Trajectory, row_axes, token_logprobs


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """The optimizer and the loss aggregation of a warm-start run."""

    learning_rate: float = 1e-5  # peak
    warmup_steps: int = 0  # linear from 0 over this many updates
    total_steps: int = 1000  # updates of the run, warm-up included; cosine to the end
    end_learning_rate: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    aggregation: str = "token-mean"  # a name of rl.grpo.LOSS_AGGREGATIONS

    def __post_init__(self):
        problems = train_step.optimizer_problems(self)
        if self.aggregation not in grpo.LOSS_AGGREGATIONS:
            problems.append(f"aggregation={self.aggregation!r} is not one of "
                            f"{grpo.LOSS_AGGREGATIONS.names()}")
        if problems:
            raise ValueError("Invalid SFTConfig: " + "; ".join(problems))


@flax.struct.dataclass
class SFTBatch:
    """Replayed trajectories and the prompt image of each row (as given to the rollout)."""

    trajectory: Trajectory
    prompt_pixel_values: jax.Array  # [B, P0, patch_dim] uint8 raw or float patches
    prompt_grid_thw: jax.Array  # [B, 3]


def sft_loss(model: nnx.Module, batch: SFTBatch,
             aggregation: str = "token-mean") -> tuple[jax.Array, dict[str, jax.Array]]:
    """L(θ) (module docstring) and the number of target tokens."""
    trajectory = batch.trajectory
    at_one = trajectory.replace(temperature=jnp.ones_like(trajectory.temperature))
    logprobs = token_logprobs(model, at_one, batch.prompt_pixel_values,
                              batch.prompt_grid_thw)  # [B, S] log π_θ at T = 1
    mask = trajectory.loss_mask.astype(bool)  # [B, S]
    loss = grpo.LOSS_AGGREGATIONS.get(aggregation)(-logprobs, mask)
    return loss, {"target_tokens": mask.sum().astype(jnp.float32)}


def plan_sft(create_model: Callable[[], nnx.Module], config: SFTConfig, mesh: Mesh,
             rules: sharding.Rules) -> train_step.TrainPlan:
    """Parameter and optimizer shardings of an SFT run (nothing allocated)."""
    return train_step.plan_training(create_model, train_step.make_optimizer(config), mesh, rules)


# ------------------------------------------------------------------------------ the step

_TRAJECTORY_FIELDS = tuple(f.name for f in dataclasses.fields(Trajectory) if f.name != "prompt_len")


def _fields(batch: SFTBatch) -> tuple[dict[str, jax.Array], dict[str, sharding.LogicalAxes]]:
    """The batch as named arrays (the Trajectory's arrays, then the prompt images) and their
    logical axes: each array's row axis (`trajectory.row_axes`) is the batch."""
    row_axis = row_axes(batch.trajectory)
    arrays = {name: (getattr(batch.trajectory, name), getattr(row_axis, name)) for name in _TRAJECTORY_FIELDS
              if getattr(batch.trajectory, name) is not None}
    arrays.update(prompt_pixel_values=(batch.prompt_pixel_values, 0), prompt_grid_thw=(batch.prompt_grid_thw, 0))
    axes = {name: sharding.rows_on_batch(value.ndim, row) for name, (value, row) in arrays.items()}
    return {name: value for name, (value, _) in arrays.items()}, axes


class SFTStep:
    """(state, SFTBatch) → (state, metrics): the jitted `train_step` update of `plan`, compiled
    once per bucket (prompt length and field ranks; jit specialises on the shapes itself).

    The state is donated. Metrics (replicated scalars): loss, grad_norm (before clipping),
    target_tokens, learning_rate (the rate this update used).
    """

    def __init__(self, plan: train_step.TrainPlan, config: SFTConfig):
        self.plan, self.config = plan, config
        self._schedule = train_step.learning_rate_schedule(config)
        self._steps: dict = {}

    def __call__(self, state: train_step.TrainState, batch: SFTBatch):
        fields, axes = _fields(batch)
        shapes = {name: tuple(value.shape) for name, value in fields.items()}
        key = (batch.trajectory.prompt_len, tuple(sorted(shapes.items())))
        if key not in self._steps:
            self._steps[key] = train_step.make_train_step(
                self.plan, train_step.batch_axes((), **axes), self._loss(batch.trajectory.prompt_len), shapes)
        shardings = sharding.batch_shardings(axes, self.plan.mesh, self.plan.rules, shapes)
        placed = jax.device_put(fields, shardings)
        learning_rate = self._schedule(state.step)
        state, metrics = self._steps[key](state, placed)
        return state, {**metrics, "learning_rate": learning_rate}

    def _loss(self, prompt_len: int) -> train_step.LossFn:
        def loss(model: nnx.Module, fields: train_step.Batch):
            arrays = {name: fields[name] for name in _TRAJECTORY_FIELDS if name in fields}
            trajectory = Trajectory(**arrays, prompt_len=prompt_len)
            return sft_loss(model, SFTBatch(trajectory, fields["prompt_pixel_values"],
                                            fields["prompt_grid_thw"]), self.config.aggregation)

        return loss
