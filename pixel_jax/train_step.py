"""The sharded, jitted forward and train step that the SFT and GRPO learners build on.

A run is planned once (`plan_training`: abstract model → parameter and optimizer shardings),
its state built sharded (`init_state`), then stepped by `make_train_step`: one jit with explicit
in/out shardings whose state argument is donated, so parameters and Adam moments are updated in
place. The objective is pluggable: `next_token_loss` is the SFT one,

    L(θ) = − Σ_{b,t} m_{b,t} · log π_θ(x_{b,t} | x_{b,<t}) / Σ_{b,t} m_{b,t},

with m the loss mask over target tokens (1 on assistant tokens); GRPO passes its clipped policy
loss over `token_log_probs` instead.

Batch fields (global arrays, see `sharding.global_batch`):
    input_ids       [B, T] int32
    attention_mask  [B, T] 1 on real tokens
    loss_mask       [B, T] 1 on tokens that are targets (token t is predicted from tokens < t)
    position_ids    [3, B, T] M-RoPE positions (optional; default `get_rope_index`)
    pixel_values    [P, C·2·14·14] patches of all images of the batch, in reading order (optional)
    image_grid_thw  [I, 3] (with pixel_values)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Protocol, Sequence

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from pixel_jax import sharding

BATCH_AXES: dict[str, sharding.LogicalAxes] = {
    "input_ids": ("activation_batch", "activation_length"),
    "attention_mask": ("activation_batch", "activation_length"),
    "loss_mask": ("activation_batch", "activation_length"),
    "position_ids": (None, "activation_batch", "activation_length"),
    "pixel_values": (None, None),  # packed over the whole batch: replicated
    "image_grid_thw": (None, None),
}
TEXT_FIELDS = ("input_ids", "attention_mask", "loss_mask")
IMAGE_FIELDS = TEXT_FIELDS + ("pixel_values", "image_grid_thw")
LOGITS_AXES = ("activation_batch", "activation_length", "activation_vocab")  # [B, T, V]
_MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "position_ids")

Batch = Mapping[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, dict[str, jax.Array]]]


def batch_axes(fields=TEXT_FIELDS, **extra: sharding.LogicalAxes) -> dict[str, sharding.LogicalAxes]:
    """Logical axes of the batch fields a step takes; `extra` adds a learner's own (e.g. advantages)."""
    unknown = sorted(set(fields) - set(BATCH_AXES))
    if unknown:
        raise ValueError(f"unknown batch fields {unknown}; known: {sorted(BATCH_AXES)} (pass others as extra)")
    return {**{field: BATCH_AXES[field] for field in fields}, **extra}


# ---------------------------------------------------------------------- objective
def forward(model: nnx.Module, batch: Batch) -> jax.Array:
    """Logits [B, T, V] (float32) of the model inputs present in `batch`."""
    logits = model(**{key: batch[key] for key in _MODEL_INPUTS if key in batch})
    return sharding.constrain(logits, LOGITS_AXES)


def token_log_probs(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """log π(x_{t+1} | x_{≤t}) for t < T−1: logits [B, T, V], input_ids [B, T] -> [B, T−1] float32."""
    log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)  # [B, T-1, V]
    return jnp.take_along_axis(log_probs, input_ids[:, 1:, None], axis=-1)[..., 0]


def next_token_loss(model: nnx.Module, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy over the target tokens of `loss_mask` (the SFT objective)."""
    log_probs = token_log_probs(forward(model, batch), batch["input_ids"])  # [B, T-1]
    mask = batch["loss_mask"][:, 1:].astype(jnp.float32)  # [B, T-1]
    tokens = jnp.sum(mask)
    return -jnp.sum(log_probs * mask) / jnp.maximum(tokens, 1.0), {"target_tokens": tokens}


def adamw(
        learning_rate: float | optax.Schedule,
        *,
        weight_decay: float = 0.0,
        b1: float = 0.9,
        b2: float = 0.999,
        eps: float = 1e-8,
        max_grad_norm: float | None = None,
) -> optax.GradientTransformation:
    """AdamW (decay on matrices only, not on norms and biases), after optional global-norm clipping."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adam = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    return adam if max_grad_norm is None else optax.chain(optax.clip_by_global_norm(max_grad_norm), adam)


class ScheduleFields(Protocol):
    """The optimizer fields an SFT or GRPO config shares (`sft.trainer.SFTConfig`, `rl.learner.LearnerConfig`)."""

    learning_rate: float  # peak
    warmup_steps: int
    total_steps: int
    end_learning_rate: float
    weight_decay: float
    b1: float
    b2: float
    adam_eps: float
    max_grad_norm: float | None


def optimizer_problems(config: ScheduleFields) -> list[str]:
    """What is wrong with `config`'s optimizer fields, one message each (empty: nothing)."""
    problems = [f"{name}={getattr(config, name)} must be >= 0" for name in ("warmup_steps", "weight_decay")
                if getattr(config, name) < 0]
    if config.learning_rate <= 0:
        problems.append(f"learning_rate={config.learning_rate} must be > 0")
    if config.total_steps <= config.warmup_steps:
        problems.append(f"total_steps={config.total_steps} must exceed warmup_steps={config.warmup_steps}")
    if config.max_grad_norm is not None and config.max_grad_norm <= 0:
        problems.append(f"max_grad_norm={config.max_grad_norm} must be > 0 (or None: no clipping)")
    return problems


def learning_rate_schedule(config: ScheduleFields) -> optax.Schedule:
    """Linear warm-up 0 → learning_rate over `warmup_steps` updates, then cosine to
    `end_learning_rate` at `total_steps`; indexed by optimizer updates applied."""
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                              config.total_steps, config.end_learning_rate)


def make_optimizer(config: ScheduleFields) -> optax.GradientTransformation:
    """Clip by global norm → AdamW (decay on matrices) with `learning_rate_schedule`."""
    return adamw(learning_rate_schedule(config), weight_decay=config.weight_decay, b1=config.b1, b2=config.b2,
                 eps=config.adam_eps, max_grad_norm=config.max_grad_norm)


# -------------------------------------------------------------------------- state
@flax.struct.dataclass
class TrainState:
    step: jax.Array  # [] int32: updates applied so far
    params: nnx.State
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """The static description of a sharded run: what the state is and where each piece lives."""

    create_model: Callable[[], nnx.Module]
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    mesh: Mesh
    rules: sharding.Rules
    state_shardings: TrainState  # NamedSharding leaves
    abstract_state: TrainState  # ShapeDtypeStruct leaves carrying those shardings (for AOT lowering)


def plan_training(
        create_model: Callable[[], nnx.Module], optimizer: optax.GradientTransformation, mesh: Mesh,
        rules: sharding.Rules,
) -> TrainPlan:
    """Shapes and shardings of the parameters and optimizer state, without allocating either."""
    graphdef, abstract_params, other = nnx.split(nnx.eval_shape(create_model), nnx.Param, ...)
    if jax.tree.leaves(other):
        raise ValueError(f"the model holds non-parameter state {other}; a train step updates parameters only")
    param_shardings = sharding.state_shardings(abstract_params, mesh, rules)
    abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
    shardings = TrainState(
        step=sharding.replicated(mesh),
        params=param_shardings,
        opt_state=sharding.optimizer_shardings(optimizer, abstract_opt_state, param_shardings, mesh),
    )
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                          opt_state=abstract_opt_state)
    abstract = sharding.shape_structs(abstract, shardings)
    return TrainPlan(create_model, graphdef, optimizer, mesh, rules, shardings, abstract)


def init_state(plan: TrainPlan, model: nnx.Module | None = None) -> TrainState:
    """The state of `model` (e.g. `from_pretrained(path, mesh=plan.mesh)`), or of a fresh sharded one."""
    if model is None:
        model = sharding.create_sharded(plan.create_model, plan.mesh, plan.rules)
    params = jax.device_put(nnx.state(model), plan.state_shardings.params)  # no-op when already placed
    opt_state = jax.jit(plan.optimizer.init, out_shardings=plan.state_shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), plan.state_shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state)


# ------------------------------------------------------------------ jitted programs
def make_train_step(
        plan: TrainPlan, fields: Mapping[str, sharding.LogicalAxes], loss_fn: LossFn = next_token_loss,
        shapes: Mapping[str, Sequence[int]] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """jit((state, batch) -> (state, metrics)); `fields` = `batch_axes(...)`; the state is donated.
    With the fields' `shapes`, rows that the batch mesh axes do not divide are replicated instead.

    metrics: loss, grad_norm and the loss function's own, replicated scalars.
    """

    def step(state: TrainState, batch: Batch):
        with sharding.activation_rules(plan.mesh, plan.rules):
            def loss_of(params):
                return loss_fn(nnx.merge(plan.graphdef, params), batch)

            (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
            updates, opt_state = plan.optimizer.update(grads, state.opt_state, state.params)
        new_state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                               opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

    return jax.jit(
        step,
        in_shardings=(plan.state_shardings, sharding.batch_shardings(fields, plan.mesh, plan.rules, shapes)),
        out_shardings=(plan.state_shardings, sharding.replicated(plan.mesh)),
        donate_argnums=0,
    )


def make_forward(plan: TrainPlan, fields: Mapping[str, sharding.LogicalAxes]) -> Callable[[nnx.State, Batch], jax.Array]:
    """jit((params, batch) -> logits [B, T, V]), logits sharded by LOGITS_AXES."""

    def run(params: nnx.State, batch: Batch) -> jax.Array:
        with sharding.activation_rules(plan.mesh, plan.rules):
            return forward(nnx.merge(plan.graphdef, params), batch)

    return jax.jit(
        run,
        in_shardings=(plan.state_shardings.params, sharding.batch_shardings(fields, plan.mesh, plan.rules)),
        out_shardings=sharding.logical_sharding(LOGITS_AXES, plan.mesh, plan.rules),
    )
