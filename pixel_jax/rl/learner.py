"""The GRPO learner: one jitted update per rollout batch (METHOD.md §3).

One call of the update step consumes a batch of Q·G trajectories (the G responses of a query
adjacent) and their task rewards r(x, y_i):

  1. rewards r'(x, y_i) = r + α·r_curiosity + β·r_penalty with the state's multipliers
     (`shape_batch_rewards`), group advantages A_i, then one dual-ascent step on α, β for the next
     batch (`curiosity.update_multipliers`; fixed multipliers when η = 0);
  2. log π_ref of the sampled tokens, only when kl_coef > 0 (π_ref: a frozen copy of θ,
     re-synced to θ every `ref_sync_every` batches when that is > 0);
  3. μ = `policy_iterations` optimizer updates (`lax.scan`). Each accumulates ∇θ of the clipped
     loss over M micro-batches (`lax.scan`, weighted so that the sum equals the full batch's
     gradient) and applies clip-by-global-norm → AdamW with a warm-up + cosine learning rate; when
     the loss or a gradient is not finite, that update is skipped (θ and the optimizer state
     untouched) and counted.
The step loops over the μ iterations itself (rather than the host calling it μ times) so that
rewards, advantages and log π_ref are computed once per batch and the whole update is one program.
A micro-batch holds whole groups (every M-th one): the G responses of a query share its prompt
image, which the batch carries once ([Q, P0, patch_dim]) and each forward pass encodes once.

Parameters whose path (e.g. "visual.blocks.0.attn.qkv.kernel") matches a `frozen` regex are split
off: the state holds only the trainable part θ (with its Adam moments and its π_ref copy); the
frozen part is an argument of the step that is never differentiated, so it stays bit-identical and
costs no gradient or optimizer memory.

Letters in shape comments: B sequences (= Q·G), S slots, M micro-batches, b = B/M rows each.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from pixel_jax import sharding, train_step
from pixel_jax.rl import curiosity, grpo
from pixel_jax.rollout.trajectory import (Trajectory, place_batch, row_axes, token_logprobs,
                                          token_logprobs_and_entropy)

# What each loss aggregation averages over, counted per micro-batch from its loss mask [M, b, S]:
# Σ_m w_m·L_m / Σ_m w_m is then exactly the aggregated loss of the whole batch.
_AGGREGATION_WEIGHTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "token-mean": lambda mask: mask.sum(axis=(1, 2)),
    "seq-mean-token-mean": lambda mask: (mask.sum(axis=2) > 0).sum(axis=1),
    "seq-mean-token-sum-norm": lambda mask: jnp.full(mask.shape[:1], mask.shape[1]),
}


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Every coefficient of the update. Defaults: the Pixel Reasoner settings (METHOD.md §1)."""

    # rewards r' (curiosity.shape_rewards) and advantages A_i (grpo.group_advantages)
    group_size: int = 8  # G
    H: float = 0.3  # target RaPR
    N: float = 1.0  # visual-operation budget per response
    alpha: float = 0.5  # initial α
    beta: float = 0.05  # initial β
    curiosity_variant: str = "paper"
    count_failed_calls: bool = True  # n_vo counts failed calls too (the authors' code)
    gate_failed_operation: bool = True  # r = 0 when the last operation failed, never repaired
    eta_alpha: float = 0.0  # dual-ascent step sizes η_α, η_β (0: fixed multipliers)
    eta_beta: float = 0.0
    alpha_max: float = 1.0
    beta_max: float = 1.0
    advantage_estimator: str = "dr_grpo"
    advantage_epsilon: float = 1e-6
    whiten_advantages: bool = False
    # the clipped policy loss (grpo.policy_loss)
    eps_low: float = 0.2
    eps_high: float = 0.35
    dual_clip: float | None = None
    kl_coef: float = 0.0  # β_KL; π_ref is only materialised when > 0
    kl_estimator: str = "k3"
    ref_sync_every: int = 0  # batches between π_ref ← θ (0: π_ref stays the initial θ)
    entropy_coef: float = 0.0
    aggregation: str = "token-mean"
    # the update
    policy_iterations: int = 1  # μ optimizer updates per rollout batch
    micro_batches: int = 1  # M gradient-accumulation steps per update
    # optimizer: clip by global norm → AdamW (decay on matrices) with warm-up + cosine
    learning_rate: float = 1e-6  # peak
    warmup_steps: int = 0  # linear from 0 over this many updates
    total_steps: int = 1000  # optimizer updates of the run, warm-up included; cosine to the end
    end_learning_rate: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    frozen: tuple[str, ...] = ()  # regexes over parameter paths, e.g. (r"^visual\.",)

    def __post_init__(self):
        problems = []
        if self.group_size < 2:
            problems.append(f"group_size={self.group_size} must be >= 2 (advantages are group-relative)")
        for name in ("policy_iterations", "micro_batches"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("kl_coef", "entropy_coef", "ref_sync_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        problems += train_step.optimizer_problems(self)
        if self.aggregation not in _AGGREGATION_WEIGHTS:
            problems.append(f"aggregation={self.aggregation!r} is not one of {sorted(_AGGREGATION_WEIGHTS)}")
        for name, registry in (("advantage_estimator", grpo.ADVANTAGE_ESTIMATORS),
                               ("kl_estimator", grpo.KL_ESTIMATORS)):
            if getattr(self, name) not in registry:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {registry.names()}")
        if self.curiosity_variant not in curiosity.VARIANTS:
            problems.append(f"curiosity_variant={self.curiosity_variant!r} is not one of {curiosity.VARIANTS}")
        if isinstance(self.frozen, str):
            problems.append(f"frozen must be a tuple of regexes, got the string {self.frozen!r}")
        else:
            for pattern in self.frozen:
                try:
                    re.compile(pattern)
                except re.error as e:
                    problems.append(f"frozen pattern {pattern!r} is not a valid regex ({e})")
        if problems:
            raise ValueError("Invalid LearnerConfig: " + "; ".join(problems))


# ---------------------------------------------------------------------- parameters
def _path_name(path: Sequence) -> str:
    return ".".join(str(part) for part in path)


def partition_params(model: nnx.Module, frozen: Sequence[str]) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, frozen, trainable): the parameters split by `frozen` regexes (re.search on the
    dotted path). `nnx.merge(graphdef, frozen, trainable)` rebuilds the model."""
    patterns = [re.compile(pattern) for pattern in frozen]
    names = [_path_name(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    for pattern in patterns:
        if not any(pattern.search(name) for name in names):
            raise ValueError(f"frozen pattern {pattern.pattern!r} matches no parameter path "
                             f"(paths look like {names[0]!r})")
    is_frozen = lambda path, _: any(pattern.search(_path_name(path)) for pattern in patterns)
    graphdef, frozen_params, trainable = nnx.split(model, is_frozen, ...)
    if not jax.tree.leaves(trainable):
        raise ValueError(f"frozen patterns {tuple(frozen)} freeze every parameter: nothing to train")
    return graphdef, frozen_params, trainable


# --------------------------------------------------------------------------- state
@flax.struct.dataclass
class LearnerState:
    """Everything a GRPO run updates (a pytree of arrays: checkpoint it as is)."""

    step: jax.Array  # [] int32 rollout batches consumed
    updates: jax.Array  # [] int32 optimizer updates applied (the learning-rate schedule's index)
    skipped: jax.Array  # [] int32 policy iterations skipped for a non-finite loss or gradient
    params: nnx.State  # trainable parameters θ
    opt_state: optax.OptState
    ref_params: nnx.State | None  # trainable part of π_ref (None when kl_coef == 0)
    curiosity: curiosity.CuriosityState  # multipliers α, β
    rng: jax.Array  # [2] uint32, the stream rollout keys are drawn from

    def split_rng(self) -> tuple["LearnerState", jax.Array]:
        """(state, key): a key for the next rollout; the checkpointed stream makes resumes exact."""
        rng, key = jax.random.split(self.rng)
        return self.replace(rng=rng), key


@flax.struct.dataclass
class RolloutBatch:
    trajectory: Trajectory  # B = Q·G rows, the G responses of a query adjacent
    task_reward: jax.Array  # [B] r(x, y_i), e.g. from `rl.rewards` on the decoded answers
    # [Q, P0, patch_dim] each query's prompt image (its G rows'): uint8 raw or float normalized patches
    prompt_pixel_values: jax.Array | None = None
    prompt_grid_thw: jax.Array | None = None  # [Q, 3]


@dataclasses.dataclass(frozen=True)
class LearnerPlan:
    """The static description of a run: the split model, the optimizer and where state lives."""

    config: LearnerConfig
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    mesh: Mesh
    rules: sharding.Rules
    state_shardings: LearnerState  # NamedSharding leaves
    frozen_shardings: nnx.State


def plan_learner(create_model: Callable[[], nnx.Module], config: LearnerConfig, mesh: Mesh,
                 rules: sharding.Rules) -> LearnerPlan:
    """Shardings of the learner state and of the frozen parameters, without allocating either."""
    graphdef, abstract_frozen, abstract_params = partition_params(nnx.eval_shape(create_model), config.frozen)
    optimizer = train_step.make_optimizer(config)
    param_shardings = sharding.state_shardings(abstract_params, mesh, rules)
    scalar = sharding.replicated(mesh)
    state_shardings = LearnerState(
        step=scalar, updates=scalar, skipped=scalar, params=param_shardings,
        opt_state=sharding.optimizer_shardings(optimizer, jax.eval_shape(optimizer.init, abstract_params),
                                               param_shardings, mesh),
        ref_params=param_shardings if config.kl_coef > 0 else None,
        curiosity=curiosity.CuriosityState(alpha=scalar, beta=scalar), rng=scalar,
    )
    return LearnerPlan(config, graphdef, optimizer, mesh, rules, state_shardings,
                       sharding.state_shardings(abstract_frozen, mesh, rules))


def init_learner(plan: LearnerPlan, model: nnx.Module, *, seed: int = 0) -> tuple[LearnerState, nnx.State]:
    """(state, frozen parameters) of `model`, placed on the plan's shardings.

    Parameters already placed there are used, not copied: the update step donates the state, so
    keep using the returned state, not `model`.
    """
    config = plan.config
    _, frozen, params = partition_params(model, config.frozen)
    params = jax.device_put(params, plan.state_shardings.params)
    copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), out_shardings=plan.state_shardings.params)
    state = LearnerState(
        step=jnp.zeros((), jnp.int32), updates=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=jax.jit(plan.optimizer.init, out_shardings=plan.state_shardings.opt_state)(params),
        ref_params=copy(params) if config.kl_coef > 0 else None,
        curiosity=curiosity.CuriosityState.create(config.alpha, config.beta),
        rng=jax.random.PRNGKey(seed),
    )
    return jax.device_put(state, plan.state_shardings), jax.device_put(frozen, plan.frozen_shardings)


# ------------------------------------------------------------------------- batches
def shard_batch(plan: LearnerPlan, batch: RolloutBatch) -> RolloutBatch:
    """`batch` placed with its rows split over the batch mesh axes (rule "activation_batch"): each
    device is given only its rows (`trajectory.place_batch`; the same batch on every process)."""
    return place_batch(batch, plan.mesh, plan.rules)


def _split_groups(x: jax.Array, micro_batches: int, row_axis: int, group_rows: int) -> jax.Array:
    """[..., Q·g, ...] → [M, ..., (Q/M)·g, ...]: the g consecutive rows of group q go to micro-batch
    q mod M. Strided, so every micro-batch spans all the devices that hold rows; whole groups, so a
    micro-batch encodes each of its queries' prompt images once (g = G for rows, 1 for the images)."""
    x = jnp.moveaxis(x, row_axis, 0)  # [Q·g, ...]
    x = x.reshape(-1, micro_batches, group_rows, *x.shape[1:])  # [Q/M, M, g, ...]
    x = jnp.swapaxes(x, 0, 1).reshape(micro_batches, -1, *x.shape[3:])  # [M, (Q/M)·g, ...]
    return jnp.moveaxis(x, 1, row_axis + 1)


def _split_batch(batch: RolloutBatch, config: LearnerConfig) -> RolloutBatch:
    """The batch as M micro-batches of whole groups: leaves [M, ..., b, ...] (b = B/M rows, or Q/M
    prompt images)."""
    prompts = (batch.prompt_pixel_values, batch.prompt_grid_thw)
    rows = batch.replace(prompt_pixel_values=None, prompt_grid_thw=None)
    rows = jax.tree.map(lambda x, axis: _split_groups(x, config.micro_batches, axis, config.group_size), rows,
                        row_axes(rows))
    images, grids = jax.tree.map(lambda x: _split_groups(x, config.micro_batches, 0, 1), prompts)
    return rows.replace(prompt_pixel_values=images, prompt_grid_thw=grids)


def _check_batch(batch: RolloutBatch, config: LearnerConfig) -> None:
    rows = batch.trajectory.tokens.shape[0]
    groups = rows // config.group_size
    if rows % config.group_size or groups % config.micro_batches:
        raise ValueError(f"the batch has {rows} rows, which must be a multiple of group_size={config.group_size}, "
                         f"in a number of groups that is a multiple of micro_batches={config.micro_batches} "
                         "(a micro-batch holds whole groups)")
    if batch.task_reward.shape != (rows,):
        raise ValueError(f"task_reward must be [{rows}] (one per row), got shape {batch.task_reward.shape}")
    if (batch.prompt_pixel_values is None) != (batch.prompt_grid_thw is None):
        raise ValueError("prompt_pixel_values and prompt_grid_thw must be given together (one of them is None)")
    if batch.prompt_pixel_values is not None and batch.prompt_pixel_values.shape[0] != groups:
        raise ValueError(f"prompt_pixel_values must be [{groups}, P0, patch_dim] (one image per query, shared by its "
                         f"group_size={config.group_size} rows), got shape {batch.prompt_pixel_values.shape}")


# ------------------------------------------------------------------------ rewards
def shape_batch_rewards(config: LearnerConfig, multipliers: curiosity.CuriosityState, task_reward: jax.Array,
                        trajectory: Trajectory) -> dict[str, jax.Array]:
    """r'(x, y_i) and its parts ([B] each: reward, bonus, penalty, rapr, n_vo) under α, β."""
    n_vo = curiosity.count_visual_operations(trajectory.n_calls, trajectory.n_errors,
                                             count_failed=config.count_failed_calls)  # [B]
    parts = curiosity.shape_rewards(
        task_reward, n_vo, config.group_size, H=config.H, N=config.N, alpha=multipliers.alpha,
        beta=multipliers.beta, variant=config.curiosity_variant,
        last_call_failed=trajectory.last_call_failed if config.gate_failed_operation else None,
    )
    return {**parts, "n_vo": n_vo}


# --------------------------------------------------------------------- the update
def _micro_batch_loss(params, frozen, plan: LearnerPlan, micro: RolloutBatch, advantages, ref_logprobs):
    """The clipped GRPO loss of one micro-batch and its metrics (grpo.policy_loss)."""
    config, trajectory = plan.config, micro.trajectory
    model = nnx.merge(plan.graphdef, frozen, params)
    logprobs, entropy = token_logprobs_and_entropy(model, trajectory, micro.prompt_pixel_values, micro.prompt_grid_thw,
                                                   group_size=config.group_size)  # [b, S] log π_θ, H_t
    if config.entropy_coef == 0:
        entropy = jax.lax.stop_gradient(entropy)  # a metric only
    loss, metrics = grpo.policy_loss(
        logprobs, trajectory.logprobs, advantages, trajectory.loss_mask, eps_low=config.eps_low,
        eps_high=config.eps_high, dual_clip=config.dual_clip, ref_logprobs=ref_logprobs, kl_coef=config.kl_coef,
        kl_estimator=config.kl_estimator, entropy=entropy, entropy_coef=config.entropy_coef,
        aggregation=config.aggregation,
    )
    log_ratio = jnp.where(trajectory.loss_mask, logprobs - trajectory.logprobs, 0.0)  # [b, S] log ρ
    return loss, {**metrics, "max_abs_log_ratio": jnp.abs(log_ratio).max()}


def _batch_gradient(params, frozen, plan: LearnerPlan, micro: RolloutBatch, advantages, ref_logprobs):
    """(∇θ L, metrics) of the whole batch, accumulated over its M micro-batches ([M, ...] leaves)."""
    mask = micro.trajectory.loss_mask  # [M, b, S]
    loss_weight = _AGGREGATION_WEIGHTS[plan.config.aggregation](mask).astype(jnp.float32)  # [M]
    loss_share = loss_weight / jnp.maximum(loss_weight.sum(), 1.0)
    tokens = mask.sum(axis=(1, 2)).astype(jnp.float32)  # [M]
    token_share = tokens / jnp.maximum(tokens.sum(), 1.0)

    def accumulate(grads, inputs):
        micro_batch, micro_advantages, micro_ref, share = inputs

        def share_of_loss(p):  # this micro-batch's share of the batch loss
            loss, metrics = _micro_batch_loss(p, frozen, plan, micro_batch, micro_advantages, micro_ref)
            return share * loss, {**metrics, "loss": loss}

        (_, metrics), micro_grads = jax.value_and_grad(share_of_loss, has_aux=True)(params)
        return jax.tree.map(jnp.add, grads, micro_grads), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, per_micro = jax.lax.scan(accumulate, zeros, (micro, advantages, ref_logprobs, loss_share))
    metrics = {key: (value * token_share).sum() for key, value in per_micro.items()}  # token means
    metrics["max_abs_log_ratio"] = per_micro["max_abs_log_ratio"].max()
    for key in ("loss", "pg_loss"):
        metrics[key] = (per_micro[key] * loss_share).sum()
    return grads, metrics


def _synced_reference(state: LearnerState, config: LearnerConfig) -> nnx.State:
    """π_ref's trainable parameters for this batch: θ itself every `ref_sync_every` batches."""
    if not config.ref_sync_every:
        return state.ref_params
    sync = (state.step > 0) & (state.step % config.ref_sync_every == 0)
    return jax.tree.map(lambda p, r: jnp.where(sync, p, r), state.params, state.ref_params)


def _reference_logprobs(plan: LearnerPlan, ref_params, frozen, micro: RolloutBatch) -> jax.Array:
    """log π_ref of every slot's token, per micro-batch: [M, b, S]."""
    model = lambda: nnx.merge(plan.graphdef, frozen, ref_params)
    return jax.lax.map(lambda mb: token_logprobs(model(), mb.trajectory, mb.prompt_pixel_values, mb.prompt_grid_thw,
                                                 group_size=plan.config.group_size), micro)


def _policy_iteration(plan: LearnerPlan, frozen, micro: RolloutBatch, advantages, ref_logprobs):
    """The scan body of one policy iteration: one optimizer update on the batch gradient, or, when
    the loss or a gradient is not finite, no change but the skip count."""
    schedule = train_step.learning_rate_schedule(plan.config)

    def iteration(carry, _):
        params, opt_state, updates, skipped = carry
        grads, metrics = _batch_gradient(params, frozen, plan, micro, advantages, ref_logprobs)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

        def apply(operand):
            params, opt_state = operand
            step_updates, opt_state = plan.optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, step_updates), opt_state

        params, opt_state = jax.lax.cond(finite, apply, lambda operand: operand, (params, opt_state))
        metrics.update(grad_norm=grad_norm, learning_rate=schedule(updates))
        return (params, opt_state, updates + finite, skipped + ~finite), metrics

    return iteration


def make_update_step(plan: LearnerPlan) -> Callable[[LearnerState, nnx.State, RolloutBatch],
                                                     tuple[LearnerState, dict[str, jax.Array]]]:
    """jit((state, frozen, batch) -> (state, metrics)); the state is donated.

    Place `batch` with `shard_batch`: its shapes and placement are then the same every call, so one
    compile serves a run (a batch placed otherwise compiles again). Metrics (replicated): per
    policy iteration, [μ] arrays — loss, pg_loss, clip_frac_low, clip_frac_high, approx_kl
    (π_old ‖ π_θ), ratio_mean, max_abs_log_ratio (0 at iteration 0 when the rollout replays
    exactly), entropy, kl (to π_ref, if kl_coef > 0), dual_clip_frac (if dual_clip), grad_norm
    (before clipping), learning_rate; per batch, scalars — reward (mean r'), task_reward, bonus,
    penalty, rapr, n_vo (means over responses), alpha and beta (the multipliers these rewards
    used), skipped (total skipped iterations so far).
    """
    config = plan.config

    def update(state: LearnerState, frozen: nnx.State, batch: RolloutBatch):
        _check_batch(batch, config)
        with sharding.activation_rules(plan.mesh, plan.rules):
            rewards = shape_batch_rewards(config, state.curiosity, batch.task_reward, batch.trajectory)
            advantages = grpo.group_advantages(rewards["reward"], config.group_size,
                                               estimator=config.advantage_estimator,
                                               epsilon=config.advantage_epsilon,
                                               whiten=config.whiten_advantages)  # [B] A_i
            micro = _split_batch(batch, config)  # leaves [M, ..., b, ...]
            ref_params = _synced_reference(state, config) if config.kl_coef > 0 else None
            ref_logprobs = None if ref_params is None else _reference_logprobs(plan, ref_params, frozen, micro)
            advantages = _split_groups(advantages, config.micro_batches, 0, config.group_size)  # [M, b]
            iteration = _policy_iteration(plan, frozen, micro, advantages, ref_logprobs)
            (params, opt_state, updates, skipped), metrics = jax.lax.scan(
                iteration, (state.params, state.opt_state, state.updates, state.skipped),
                length=config.policy_iterations)
        multipliers = curiosity.update_multipliers(
            state.curiosity, rapr=rewards["rapr"], n_vo=rewards["n_vo"], H=config.H, N=config.N,
            eta_alpha=config.eta_alpha, eta_beta=config.eta_beta, alpha_max=config.alpha_max,
            beta_max=config.beta_max)
        new_state = state.replace(step=state.step + 1, updates=updates, skipped=skipped, params=params,
                                  opt_state=opt_state, ref_params=ref_params, curiosity=multipliers)
        metrics.update({key: rewards[key].astype(jnp.float32).mean()
                        for key in ("reward", "bonus", "penalty", "rapr", "n_vo")})
        metrics.update(task_reward=batch.task_reward.mean(), alpha=state.curiosity.alpha,
                       beta=state.curiosity.beta, skipped=skipped)
        return new_state, metrics

    return jax.jit(
        update,
        in_shardings=(plan.state_shardings, plan.frozen_shardings, None),  # None: the batch as placed
        out_shardings=(plan.state_shardings, sharding.replicated(plan.mesh)),
        donate_argnums=0,
    )
