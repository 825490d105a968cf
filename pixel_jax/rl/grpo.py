"""GRPO: group-relative advantages, dynamic sampling, and the clipped policy loss (METHOD.md §3).

For a query x the old policy π_old samples G responses y_1..y_G; every token of y_i gets the
advantage A_i (`group_advantages`). The loss per sampled token t is

    −min(ρ_t·A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_i) + β_KL·KL_t − c_ent·H_t,
    ρ_t = π_θ(y_t | ·) / π_old(y_t | ·),

aggregated over the tokens the policy sampled (`policy_loss`). Rewards and advantages are flat
arrays of length num_queries·G, grouped contiguously (the G responses of a query are adjacent).
Letters in shape comments: Q queries, G group size, B sequences (= Q·G), T tokens.
"""

import numbers
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from pixel_jax.registry import Registry


def _is_number(value: Any) -> bool:
    """True for a host-side Python number (validated); traced/array values are not checked."""
    return isinstance(value, numbers.Real)


def as_groups(values: jax.Array, group_size: int, name: str = "rewards") -> jax.Array:
    """[Q·G] → [Q, G], with a clear error when `group_size` does not split `values`."""
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    values = jnp.asarray(values)
    if values.ndim != 1 or values.shape[0] % group_size:
        raise ValueError(f"{name} must be a flat array whose length is a multiple of "
                         f"group_size={group_size}, got shape {values.shape}")
    return values.reshape(-1, group_size)


# ------------------------------------------------------------------ advantages

ADVANTAGE_ESTIMATORS: Registry[Callable[..., jax.Array]] = Registry("advantage estimator")


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(rewards: jax.Array, *, epsilon: float) -> jax.Array:
    """A_i = (r_i − mean(r)) / (std(r) + ε) within each group; std unbiased (ddof = 1)."""
    mean = rewards.mean(axis=1, keepdims=True)  # [Q, 1]
    std = rewards.std(axis=1, ddof=1, keepdims=True)  # [Q, 1]
    return (rewards - mean) / (std + epsilon)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(rewards: jax.Array, *, epsilon: float) -> jax.Array:
    """A_i = r_i − mean(r) (Dr. GRPO; the Pixel Reasoner code). No std, so ε is not used."""
    del epsilon
    return rewards - rewards.mean(axis=1, keepdims=True)


def group_advantages(rewards: jax.Array, group_size: int, *, estimator: str = "grpo",
                     epsilon: float = 1e-6, whiten: bool = False) -> jax.Array:
    """Per-response advantages A_i [Q·G] from rewards r(x, y_i) [Q·G], by estimator name.

    `whiten` then standardises the advantages over the whole batch: (A − mean) / (std + ε).
    """
    if isinstance(group_size, int) and group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group-relative advantages, got {group_size}")
    if _is_number(epsilon) and epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    grouped = as_groups(rewards, group_size).astype(jnp.float32)  # [Q, G]
    advantages = ADVANTAGE_ESTIMATORS.get(estimator)(grouped, epsilon=epsilon).reshape(-1)  # [B]
    if whiten:
        advantages = (advantages - advantages.mean()) / (advantages.std() + epsilon)
    return advantages


def informative_groups(rewards: jax.Array, group_size: int, *, atol: float = 1e-6) -> jax.Array:
    """[Q] bool: False for a group whose rewards are all equal (max − min ≤ atol).

    Such a group has A_i = 0 for every response and teaches nothing.
    """
    grouped = as_groups(rewards, group_size)  # [Q, G]
    return grouped.max(axis=1) - grouped.min(axis=1) > atol


def fill_informative_groups(candidates: Iterable[tuple[Any, np.ndarray]], group_size: int,
                            target_groups: int, *, atol: float = 1e-6) -> Any:
    """Dynamic sampling (host side): keep informative groups until `target_groups` are collected.

    `candidates` yields (batch, rewards) pairs: `batch` a pytree whose leaves have a leading axis
    of num_queries·G samples, `rewards` [num_queries·G]. Candidates are drawn lazily, only until
    the target is reached (so a generator can roll out on demand); the result is `batch`'s pytree
    with exactly target_groups·G rows, groups in the order they were drawn.
    """
    if not isinstance(target_groups, int) or target_groups < 1:
        raise ValueError(f"target_groups must be a positive int, got {target_groups!r}")
    kept, collected = [], 0
    for batch, rewards in candidates:
        keep_group = np.asarray(informative_groups(rewards, group_size, atol=atol))  # [Q]
        keep_row = np.repeat(keep_group, group_size)  # [Q·G]
        for leaf in jax.tree.leaves(batch):
            if np.shape(leaf)[:1] != keep_row.shape:
                raise ValueError(f"every batch leaf needs a leading axis of {keep_row.size} "
                                 f"samples (the rewards' length), got shape {np.shape(leaf)}")
        kept.append(jax.tree.map(lambda leaf: np.asarray(leaf)[keep_row], batch))
        collected += int(keep_group.sum())
        if collected >= target_groups:
            return jax.tree.map(lambda *leaves: np.concatenate(leaves)[:target_groups * group_size],
                                *kept)
    raise ValueError(f"candidates ran out with {collected} informative groups of the "
                     f"target_groups={target_groups}")


# ------------------------------------------------------------------ policy loss

KL_ESTIMATORS: Registry[Callable[[jax.Array], jax.Array]] = Registry("KL estimator")
# Each maps the per-token log ratio log(π_ref/π_θ) of sampled tokens to a KL(π_θ‖π_ref) estimate.


@KL_ESTIMATORS.register("k1")
def kl_k1(ref_log_ratio: jax.Array) -> jax.Array:
    """k1 = log π_θ − log π_ref (unbiased, high variance, can be negative)."""
    return -ref_log_ratio


@KL_ESTIMATORS.register("k3")
def kl_k3(ref_log_ratio: jax.Array) -> jax.Array:
    """k3 = π_ref/π_θ − log(π_ref/π_θ) − 1 (unbiased, ≥ 0, low variance)."""
    return jnp.exp(ref_log_ratio) - ref_log_ratio - 1.0


def _masked_sum(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Σ of `values` where `mask` is set; unmasked entries (even inf/NaN padding) count 0."""
    return jnp.where(mask, values, 0.0).sum(axis=axis)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return _masked_sum(values, mask) / jnp.maximum(mask.sum(), 1)


LOSS_AGGREGATIONS: Registry[Callable[[jax.Array, jax.Array], jax.Array]] = Registry(
    "loss aggregation")


@LOSS_AGGREGATIONS.register("token-mean")
def token_mean(per_token: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ_{b,t} m·L / Σ_{b,t} m: every sampled token of the batch weighs the same."""
    return _masked_mean(per_token, mask)


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(per_token: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over sequences (with ≥ 1 sampled token) of each sequence's token mean (GRPO paper)."""
    tokens = mask.sum(axis=1)  # [B]
    per_sequence = _masked_sum(per_token, mask, axis=1) / jnp.maximum(tokens, 1)  # [B]
    return _masked_mean(per_sequence, tokens > 0)


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(per_token: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over sequences of Σ_t m·L / T, T the fixed token budget (Dr. GRPO: no length bias)."""
    return _masked_sum(per_token, mask, axis=1).mean() / per_token.shape[1]


def _validate_loss_args(logprobs, old_logprobs, advantages, loss_mask, eps_low, eps_high,
                        dual_clip, ref_logprobs, kl_coef, entropy, entropy_coef) -> None:
    shape = jnp.shape(logprobs)
    if len(shape) != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {shape}")
    for name, value in (("old_logprobs", old_logprobs), ("loss_mask", loss_mask),
                        ("ref_logprobs", ref_logprobs), ("entropy", entropy)):
        if value is not None and jnp.shape(value) != shape:
            raise ValueError(f"{name} must have the shape of logprobs {shape}, "
                             f"got {jnp.shape(value)}")
    if jnp.shape(advantages) != shape[:1]:
        raise ValueError(f"advantages must be per sequence [B] = {shape[:1]}, "
                         f"got {jnp.shape(advantages)}")
    if _is_number(eps_low) and not 0.0 <= eps_low < 1.0:
        raise ValueError(f"eps_low must be in [0, 1), got {eps_low}")
    if _is_number(eps_high) and eps_high < 0.0:
        raise ValueError(f"eps_high must be >= 0, got {eps_high}")
    if dual_clip is not None and _is_number(dual_clip) and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    if _is_number(kl_coef) and kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logprobs")
    if _is_number(entropy_coef) and entropy_coef != 0.0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy")


def policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                loss_mask: jax.Array, *, eps_low: float, eps_high: float,
                dual_clip: Optional[float] = None, ref_logprobs: Optional[jax.Array] = None,
                kl_coef: float = 0.0, kl_estimator: str = "k3",
                entropy: Optional[jax.Array] = None, entropy_coef: float = 0.0,
                aggregation: str = "token-mean") -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped GRPO/PPO loss and its metrics.

    logprobs, old_logprobs, ref_logprobs, entropy, loss_mask: [B, T] per token (log π_θ, log π_old,
    log π_ref, H_t; mask 1 only on tokens the policy sampled). advantages: [B] per sequence A_i,
    broadcast over its tokens. Per token, L_t = max(−ρ_t·A, −clip(ρ_t, 1 − ε_low, 1 + ε_high)·A);
    with `dual_clip` = c (Ye et al. 2020), L_t = min(L_t, −c·A) where A < 0; then
    + kl_coef·KL_t (k1 or k3 against π_ref) − entropy_coef·H_t, aggregated by `aggregation`.

    Metrics (masked means over sampled tokens): pg_loss (the aggregated clipped term alone),
    clip_frac_low (A < 0 and ρ < 1 − ε_low), clip_frac_high (A > 0 and ρ > 1 + ε_high) — the
    tokens whose gradient the clip zeroes —, dual_clip_frac (if dual_clip), approx_kl (k3 of
    π_old vs π_θ: ρ − 1 − log ρ), ratio_mean, kl (if ref_logprobs), entropy (if entropy).
    """
    _validate_loss_args(logprobs, old_logprobs, advantages, loss_mask, eps_low, eps_high,
                        dual_clip, ref_logprobs, kl_coef, entropy, entropy_coef)
    aggregate = LOSS_AGGREGATIONS.get(aggregation)
    mask = loss_mask.astype(bool)  # [B, T]
    adv = advantages.astype(logprobs.dtype)[:, None]  # [B, 1]
    # Unsampled tokens get log ratios of 0 so that padding values never reach exp or the gradient.
    log_ratio = jnp.where(mask, logprobs - old_logprobs, 0.0)  # [B, T] log ρ
    ratio = jnp.exp(log_ratio)  # [B, T]
    clipped_ratio = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)  # [B, T]
    pg = jnp.maximum(-ratio * adv, -clipped_ratio * adv)  # [B, T]

    metrics = {
        "clip_frac_low": _masked_mean((adv < 0) & (ratio < 1.0 - eps_low), mask),
        "clip_frac_high": _masked_mean((adv > 0) & (ratio > 1.0 + eps_high), mask),
        "approx_kl": _masked_mean(ratio - 1.0 - log_ratio, mask),
        "ratio_mean": _masked_mean(ratio, mask),
    }
    if dual_clip is not None:
        cap = -dual_clip * adv  # [B, 1]
        capped = (adv < 0) & (pg > cap)  # [B, T]
        pg = jnp.where(capped, cap, pg)
        metrics["dual_clip_frac"] = _masked_mean(capped, mask)
    metrics["pg_loss"] = aggregate(pg, mask)

    per_token = pg
    if ref_logprobs is not None:
        ref_log_ratio = jnp.where(mask, ref_logprobs - logprobs, 0.0)  # [B, T]
        kl = KL_ESTIMATORS.get(kl_estimator)(ref_log_ratio)  # [B, T]
        per_token = per_token + kl_coef * kl
        metrics["kl"] = _masked_mean(kl, mask)
    if entropy is not None:
        per_token = per_token - entropy_coef * entropy
        metrics["entropy"] = _masked_mean(entropy, mask)
    return aggregate(per_token, mask), metrics
