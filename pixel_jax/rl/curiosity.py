"""The curiosity-driven reward of Pixel Reasoner (METHOD.md §1), vectorised and jit-able.

The constrained problem  max E[r(x, y)]  s.t.  RaPR(x) ≥ H,  n_vo(y) ≤ N  relaxed with
multipliers α, β gives, for response y_i of query x,

    r'(x, y_i) = r(x, y_i) + α·r_curiosity(x, y_i) + β·r_penalty(y_i)
    r_curiosity(x, y_i) = max(H − RaPR(x), 0) · 1[n_vo(y_i) > 0]
    r_penalty(y_i)      = min(N − n_vo(y_i), 0)

RaPR(x), the rate of pixel-space reasoning, is the fraction of the G responses sampled for x in
this step that use at least one visual operation. Inputs are flat arrays of length
num_queries·G with the G responses of a query adjacent. α and β are fixed (paper: 0.5, 0.05) or
adapted by dual ascent (`CuriosityState`, `update_multipliers`).
"""

import numbers
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from pixel_jax.rl.grpo import as_groups

VARIANTS = ("paper", "official_code")


def count_visual_operations(n_calls: jax.Array, n_failed_calls: jax.Array, *,
                            count_failed: bool) -> jax.Array:
    """n_vo(y) per response: every attempted call (`count_failed`, as the authors' code) or the
    valid ones only."""
    n_calls = jnp.asarray(n_calls)
    return n_calls if count_failed else n_calls - jnp.asarray(n_failed_calls)


def rate_of_pixel_reasoning(n_vo: jax.Array, group_size: int) -> jax.Array:
    """RaPR(x) [Q]: the fraction of each query's G responses with n_vo > 0."""
    return (as_groups(n_vo, group_size, "n_vo") > 0).mean(axis=1)


def gate_failed_operation(task_reward: jax.Array, last_call_failed: jax.Array) -> jax.Array:
    """r(x, y) = 0 where the response's last visual operation failed and was never repaired.

    Per sample: `last_call_failed` [Q·G] bool is each response's own flag (the authors' code read
    the flag of the wrong sample for every group but the first; this does not).
    """
    task_reward = jnp.asarray(task_reward)
    last_call_failed = jnp.asarray(last_call_failed, dtype=bool)
    if last_call_failed.shape != task_reward.shape:
        raise ValueError(f"last_call_failed must have the shape of task_reward "
                         f"{task_reward.shape}, got {last_call_failed.shape}")
    return jnp.where(last_call_failed, jnp.zeros_like(task_reward), task_reward)


def _validate(length: int, group_size: int, H: float, N: float, alpha, beta, variant: str,
              is_video) -> None:
    if not isinstance(group_size, int) or group_size < 1 or length % group_size:
        raise ValueError(f"group_size must be a positive int dividing the number of responses "
                         f"{length}, got {group_size!r}")
    if not 0.0 <= H <= 1.0:
        raise ValueError(f"H (target RaPR) must be in [0, 1], got {H}")
    if N < 0:
        raise ValueError(f"N (operation budget) must be >= 0, got {N}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, numbers.Real) and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if is_video is not None and jnp.shape(is_video) != (length,):
        raise ValueError(f"is_video must be [{length}] (one flag per response), "
                         f"got shape {jnp.shape(is_video)}")


def shape_rewards(task_reward: jax.Array, n_vo: jax.Array, group_size: int, *, H: float,
                  N: float, alpha, beta, variant: str = "paper",
                  is_video: Optional[jax.Array] = None,
                  last_call_failed: Optional[jax.Array] = None,
                  official_image_divisor: float = 2.0, official_video_divisor: float = 1.5,
                  official_scale: float = 0.25) -> dict[str, jax.Array]:
    """The modified reward r'(x, y_i) of every response, with its parts.

    task_reward r(x, y_i) [Q·G] float, n_vo(y_i) [Q·G] int (whether failed calls count is the
    caller's choice, see `count_visual_operations`), G = `group_size` (static). H, N, G and
    `variant` are static; α, β may be traced (adaptive multipliers). Optional
    `last_call_failed` [Q·G] first applies `gate_failed_operation` to r.

    Returns [Q·G] arrays: `rapr` = RaPR(x) of the response's group, `penalty` = β·r_penalty(y_i)
    (≤ 0, in both variants), `bonus` = the curiosity term added to r, and
    `reward` = r + bonus + penalty = r'(x, y_i). The bonus depends on `variant`:
      "paper":          bonus = α·max(H − RaPR, 0)·1[n_vo > 0].
      "official_code":  bonus = max(H − RaPR, 0)/d · s/RaPR · 1[n_vo > 0], as the authors' code,
                        d = `official_image_divisor` (2) or `official_video_divisor` (1.5) on
                        `is_video` rows, s = `official_scale` (0.25); α is not used (the code has
                        none: d and s take its place), and the bonus is 0 when RaPR = 0.
    E.g. G = 8, H = 0.3, one response with one operation (RaPR = 1/8): its bonus is
    0.5·(0.3 − 0.125) = 0.0875 ("paper", α = 0.5) or 0.175/2·0.25·8 = 0.175 ("official_code").
    """
    task_reward = jnp.asarray(task_reward)
    n_vo = jnp.asarray(n_vo)
    if task_reward.ndim != 1 or n_vo.shape != task_reward.shape:
        raise ValueError(f"task_reward and n_vo must be flat arrays of one length, got shapes "
                         f"{task_reward.shape} and {n_vo.shape}")
    _validate(task_reward.shape[0], group_size, H, N, alpha, beta, variant, is_video)
    if last_call_failed is not None:
        task_reward = gate_failed_operation(task_reward, last_call_failed)

    reward = task_reward.astype(jnp.float32)  # [Q·G]
    rapr = jnp.repeat(rate_of_pixel_reasoning(n_vo, group_size), group_size)  # [Q·G]
    uses_vo = (n_vo > 0).astype(jnp.float32)  # [Q·G]
    shortfall = jnp.maximum(H - rapr, 0.0) * uses_vo  # [Q·G] r_curiosity
    if variant == "paper":
        bonus = alpha * shortfall
    else:
        video = jnp.zeros_like(uses_vo, bool) if is_video is None else jnp.asarray(is_video, bool)
        divisor = jnp.where(video, official_video_divisor, official_image_divisor)  # [Q·G]
        safe_rapr = jnp.where(rapr > 0, rapr, 1.0)
        bonus = jnp.where(rapr > 0, shortfall / divisor * official_scale / safe_rapr, 0.0)
    penalty = beta * jnp.minimum(N - n_vo.astype(jnp.float32), 0.0)  # [Q·G] β·r_penalty
    return {"reward": reward + bonus + penalty, "bonus": bonus, "penalty": penalty, "rapr": rapr}


class CuriosityState(flax.struct.PyTreeNode):
    """The Lagrange multipliers α (curiosity) and β (penalty): scalars kept in the train state."""

    alpha: jax.Array
    beta: jax.Array

    @classmethod
    def create(cls, alpha: float, beta: float) -> "CuriosityState":
        return cls(alpha=jnp.asarray(alpha, jnp.float32), beta=jnp.asarray(beta, jnp.float32))


def update_multipliers(state: CuriosityState, *, rapr: jax.Array, n_vo: jax.Array, H: float,
                       N: float, eta_alpha: float, eta_beta: float, alpha_max: float,
                       beta_max: float) -> CuriosityState:
    """One dual-ascent step on the two constraints (beyond both papers):

        α ← clip(α + η_α·(H − mean RaPR), 0, α_max),   β ← clip(β + η_β·(mean n_vo − N), 0, β_max)

    rapr, n_vo: [Q·G] per response (means over responses = means over queries for equal G).
    η = 0 keeps a multiplier fixed.
    """
    for name, value in (("eta_alpha", eta_alpha), ("eta_beta", eta_beta),
                        ("alpha_max", alpha_max), ("beta_max", beta_max)):
        if isinstance(value, numbers.Real) and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    rapr_violation = H - jnp.mean(jnp.asarray(rapr, jnp.float32))
    budget_violation = jnp.mean(jnp.asarray(n_vo, jnp.float32)) - N
    return CuriosityState(
        alpha=jnp.clip(state.alpha + eta_alpha * rapr_violation, 0.0, alpha_max),
        beta=jnp.clip(state.beta + eta_beta * budget_violation, 0.0, beta_max))
