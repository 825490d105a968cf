"""pixel_jax.rl.grpo: advantages, dynamic sampling, the clipped policy loss, a toy bandit."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pixel_jax.rl import grpo

# ------------------------------------------------------------------ advantages


def test_grpo_advantages_mean_std():
    # Group [1, 0, 0, 0]: mean 1/4, unbiased std sqrt((9/16 + 3/16) / 3) = 1/2.
    rewards = jnp.array([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    advantages = grpo.group_advantages(rewards, 4, estimator="grpo", epsilon=1e-8)
    np.testing.assert_allclose(advantages, [1.5, -0.5, -0.5, -0.5, -1.5, 0.5, 0.5, 0.5],
                               rtol=1e-6)


def test_dr_grpo_advantages_mean_only():
    rewards = jnp.array([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 3.0])
    advantages = grpo.group_advantages(rewards, 4, estimator="dr_grpo")
    np.testing.assert_allclose(advantages, [0.75, -0.25, -0.25, -0.25, 0.0, 0.0, -1.0, 1.0])


def test_uniform_group_has_zero_advantage_without_nan():
    advantages = grpo.group_advantages(jnp.ones(4), 4, estimator="grpo")
    np.testing.assert_array_equal(advantages, np.zeros(4))


def test_batch_whitening():
    rewards = jnp.array([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 3.0])
    advantages = np.asarray(grpo.group_advantages(rewards, 4, estimator="dr_grpo", whiten=True,
                                                  epsilon=1e-8))
    raw = np.array([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, -1.0, 1.0])
    np.testing.assert_allclose(advantages, (raw - raw.mean()) / raw.std(), rtol=1e-5)


def test_advantage_errors():
    with pytest.raises(ValueError, match="length is a multiple of group_size=3"):
        grpo.group_advantages(jnp.ones(8), 3)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo.group_advantages(jnp.ones(8), 1)
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'; known: 'dr_grpo'"):
        grpo.group_advantages(jnp.ones(8), 4, estimator="ppo")


# ------------------------------------------------------------------ dynamic sampling


def test_informative_groups():
    rewards = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5 + 1e-3])
    np.testing.assert_array_equal(grpo.informative_groups(rewards, 3),
                                  [False, True, False, True])
    np.testing.assert_array_equal(grpo.informative_groups(rewards, 3, atol=1e-2),
                                  [False, True, False, False])


def test_fill_informative_groups_draws_lazily_and_keeps_order():
    drawn = []

    def candidates():
        # G = 2. Batch 0: groups [uniform, informative]; batch 1: [informative, informative];
        # batch 2 must never be drawn.
        for index, rewards in enumerate([[1, 1, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]]):
            drawn.append(index)
            ids = np.arange(4) + 10 * index
            yield {"ids": ids, "nested": {"row": np.stack([ids, ids], axis=1)}}, np.array(rewards)

    batch = grpo.fill_informative_groups(candidates(), group_size=2, target_groups=2)
    assert drawn == [0, 1]
    np.testing.assert_array_equal(batch["ids"], [2, 3, 10, 11])
    np.testing.assert_array_equal(batch["nested"]["row"][:, 1], [2, 3, 10, 11])


def test_fill_informative_groups_errors():
    uniform = [({"ids": np.arange(4)}, np.ones(4))]
    with pytest.raises(ValueError, match="ran out with 0 informative groups of the target_gr"):
        grpo.fill_informative_groups(iter(uniform), group_size=2, target_groups=1)
    mismatched = [({"ids": np.arange(3)}, np.array([0.0, 1.0, 0.0, 1.0]))]
    with pytest.raises(ValueError, match="leading axis of 4 samples"):
        grpo.fill_informative_groups(iter(mismatched), group_size=2, target_groups=1)
    with pytest.raises(ValueError, match="target_groups must be a positive int"):
        grpo.fill_informative_groups(iter(uniform), group_size=2, target_groups=0)


# ------------------------------------------------------------------ policy loss
# Two sequences of 3 tokens, π_old = 1 so ρ = exp(logprobs). ε_low = 0.2, ε_high = 0.35.
#   seq 0, A = +1: ρ = [1.5, 0.7, 1.1]       -> L = [-1.35 (clipped high), -0.7, -1.1]
#   seq 1, A = -2: ρ = [0.5, 1.5, masked]    -> L = [1.6 (clipped low), 3.0, —]
RATIOS = np.array([[1.5, 0.7, 1.1], [0.5, 1.5, 1.0]])
LOGPROBS = jnp.log(jnp.asarray(RATIOS, jnp.float32))
OLD = jnp.zeros((2, 3))
ADV = jnp.array([1.0, -2.0])
MASK = jnp.array([[1, 1, 1], [1, 1, 0]])
CLIP = dict(eps_low=0.2, eps_high=0.35)


@pytest.mark.parametrize("aggregation, expected", [
    ("token-mean", (-1.35 - 0.7 - 1.1 + 1.6 + 3.0) / 5),
    ("seq-mean-token-mean", ((-1.35 - 0.7 - 1.1) / 3 + (1.6 + 3.0) / 2) / 2),
    ("seq-mean-token-sum-norm", ((-1.35 - 0.7 - 1.1) + (1.6 + 3.0)) / 2 / 3),
])
def test_policy_loss_aggregations(aggregation, expected):
    loss, metrics = grpo.policy_loss(LOGPROBS, OLD, ADV, MASK, aggregation=aggregation, **CLIP)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["pg_loss"]) == pytest.approx(expected, rel=1e-5)


def test_policy_loss_metrics():
    _, metrics = grpo.policy_loss(LOGPROBS, OLD, ADV, MASK, **CLIP)
    sampled = RATIOS[np.asarray(MASK, bool)]
    assert float(metrics["clip_frac_high"]) == pytest.approx(1 / 5)  # ρ = 1.5 with A > 0
    assert float(metrics["clip_frac_low"]) == pytest.approx(1 / 5)  # ρ = 0.5 with A < 0
    assert float(metrics["ratio_mean"]) == pytest.approx(sampled.mean(), rel=1e-6)
    approx_kl = np.mean([r - 1 - math.log(r) for r in sampled])
    assert float(metrics["approx_kl"]) == pytest.approx(approx_kl, rel=1e-5)
    assert set(metrics) == {"clip_frac_low", "clip_frac_high", "approx_kl", "ratio_mean",
                            "pg_loss"}


def test_policy_loss_gradient_matches_formula():
    # d L / d log π_θ = −A·ρ / Σm on unclipped sampled tokens, 0 on clipped or unsampled ones.
    grad = jax.grad(lambda lp: grpo.policy_loss(lp, OLD, ADV, MASK, **CLIP)[0])(LOGPROBS)
    expected = np.array([[0.0, -1.0 * 0.7, -1.0 * 1.1], [0.0, 2.0 * 1.5, 0.0]]) / 5
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_dual_clip_caps_negative_advantage_losses():
    # A = −2, ρ = [3, 1.5, 0.5], c = 2.5: L = [min(6, 5) = 5, 3.0, 1.6]; A > 0 untouched.
    logprobs = jnp.log(jnp.array([[3.0, 1.5, 0.5], [3.0, 1.0, 1.0]]))
    advantages = jnp.array([-2.0, 1.0])
    loss, metrics = grpo.policy_loss(logprobs, jnp.zeros((2, 3)), advantages,
                                     jnp.array([[1, 1, 1], [0, 0, 0]]), dual_clip=2.5, **CLIP)
    assert float(loss) == pytest.approx((5.0 + 3.0 + 1.6) / 3, rel=1e-5)
    assert float(metrics["dual_clip_frac"]) == pytest.approx(1 / 3)
    grad = jax.grad(lambda lp: grpo.policy_loss(
        lp, jnp.zeros((2, 3)), advantages, jnp.ones((2, 3)), dual_clip=2.5, **CLIP)[0])(logprobs)
    # The capped token has zero gradient; the A > 0 token at ρ = 3 is clipped high: zero too.
    np.testing.assert_allclose(grad[:, 0], [0.0, 0.0], atol=1e-7)
    assert float(grad[0, 1]) == pytest.approx(2.0 * 1.5 / 6, rel=1e-5)


@pytest.mark.parametrize("estimator, per_token", [
    ("k1", [0.5, -1.0]),
    ("k3", [math.exp(-0.5) + 0.5 - 1.0, math.exp(1.0) - 1.0 - 1.0]),
])
def test_kl_estimators_and_coefficient(estimator, per_token):
    logprobs = jnp.array([[-1.0, -2.0]])
    ref = jnp.array([[-1.5, -1.0]])
    loss, metrics = grpo.policy_loss(logprobs, logprobs, jnp.zeros(1), jnp.ones((1, 2)),
                                     ref_logprobs=ref, kl_coef=0.1, kl_estimator=estimator, **CLIP)
    assert float(metrics["kl"]) == pytest.approx(np.mean(per_token), rel=1e-5)
    assert float(loss) == pytest.approx(0.1 * np.mean(per_token), rel=1e-5)


def test_k3_gradient_pulls_towards_the_reference():
    # d k3 / d log π_θ = 1 − π_ref/π_θ: positive above the reference (descent lowers log π_θ).
    logprobs = jnp.array([[-1.0, -2.0]])
    ref = jnp.array([[-1.5, -1.0]])
    grad = jax.grad(lambda lp: grpo.policy_loss(
        lp, jax.lax.stop_gradient(lp), jnp.zeros(1), jnp.ones((1, 2)), ref_logprobs=ref,
        kl_coef=0.1, **CLIP)[0])(logprobs)
    expected = 0.1 * (1.0 - np.exp(np.asarray(ref - logprobs))) / 2
    np.testing.assert_allclose(grad, expected, rtol=1e-5)
    assert float(grad[0, 0]) > 0 > float(grad[0, 1])


def test_entropy_bonus():
    entropy = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    base, _ = grpo.policy_loss(LOGPROBS, OLD, ADV, MASK, **CLIP)
    loss, metrics = grpo.policy_loss(LOGPROBS, OLD, ADV, MASK, entropy=entropy,
                                     entropy_coef=0.01, **CLIP)
    assert float(metrics["entropy"]) == pytest.approx(15.0 / 5)
    assert float(loss) == pytest.approx(float(base) - 0.01 * 3.0, rel=1e-5)


def test_unsampled_tokens_never_leak_into_loss_or_gradient():
    # Padding may hold any value: here inf/NaN log-probs on the one unsampled token.
    junk = dict(logprobs=LOGPROBS.at[1, 2].set(jnp.inf), old=OLD.at[1, 2].set(-jnp.inf),
                ref=jnp.zeros((2, 3)).at[1, 2].set(jnp.nan))

    def loss(lp, old, ref):
        return grpo.policy_loss(lp, old, ADV, MASK, ref_logprobs=ref, kl_coef=0.1, **CLIP)[0]

    clean_args = (LOGPROBS, OLD, jnp.zeros((2, 3)))
    junk_args = (junk["logprobs"], junk["old"], junk["ref"])
    assert float(loss(*junk_args)) == pytest.approx(float(loss(*clean_args)), rel=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(*junk_args), jax.grad(loss)(*clean_args),
                               rtol=1e-6)


def test_policy_loss_jits():
    loss_fn = jax.jit(functools.partial(grpo.policy_loss, aggregation="seq-mean-token-mean",
                                        **CLIP))
    loss, metrics = loss_fn(LOGPROBS, OLD, ADV, MASK)
    eager, _ = grpo.policy_loss(LOGPROBS, OLD, ADV, MASK, aggregation="seq-mean-token-mean",
                                **CLIP)
    assert float(loss) == pytest.approx(float(eager), rel=1e-6)
    assert float(metrics["clip_frac_high"]) == pytest.approx(0.2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(advantages=jnp.zeros((2, 3))), r"advantages must be per sequence \[B\]"),
    (dict(loss_mask=jnp.ones((2, 4))), "loss_mask must have the shape of logprobs"),
    (dict(kl_coef=0.1), "kl_coef=0.1 needs ref_logprobs"),
    (dict(entropy_coef=0.1), "entropy_coef=0.1 needs entropy"),
    (dict(dual_clip=1.0), "dual_clip must be > 1"),
    (dict(eps_low=1.0), r"eps_low must be in \[0, 1\)"),
    (dict(aggregation="sum"), "unknown loss aggregation 'sum'"),
    (dict(ref_logprobs=OLD, kl_coef=0.1, kl_estimator="k2"), "unknown KL estimator 'k2'"),
])
def test_policy_loss_validates_inputs(kwargs, message):
    args = dict(logprobs=LOGPROBS, old_logprobs=OLD, advantages=ADV, loss_mask=MASK, **CLIP)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        grpo.policy_loss(**args)


# ------------------------------------------------------------------ toy bandit


def test_toy_bandit_learns_the_rewarded_action():
    """A softmax policy over 4 actions, reward 1 for action 2 only: GRPO raises π(2) to > 0.95."""
    num_actions, rewarded, group_size, num_groups = 4, 2, 8, 4
    optimizer = optax.adam(0.1)

    def loss_fn(logits, actions, old_logprobs, advantages):
        logprobs = jax.nn.log_softmax(logits)[actions][:, None]  # [B, 1]
        loss, _ = grpo.policy_loss(logprobs, old_logprobs, advantages,
                                   jnp.ones_like(logprobs), eps_low=0.2, eps_high=0.28)
        return loss

    @jax.jit
    def step(logits, opt_state, key):
        actions = jax.random.categorical(key, logits, shape=(num_groups * group_size,))
        old_logprobs = jax.nn.log_softmax(logits)[actions][:, None]  # [B, 1]
        rewards = (actions == rewarded).astype(jnp.float32)  # [B]
        advantages = grpo.group_advantages(rewards, group_size)
        for _ in range(2):  # μ = 2 policy iterations on the same rollout batch
            grads = jax.grad(loss_fn)(logits, actions, old_logprobs, advantages)
            updates, opt_state = optimizer.update(grads, opt_state)
            logits = optax.apply_updates(logits, updates)
        return logits, opt_state

    logits = jnp.zeros(num_actions)
    opt_state = optimizer.init(logits)
    probabilities = []
    for key in jax.random.split(jax.random.key(0), 20):
        logits, opt_state = step(logits, opt_state, key)
        probabilities.append(float(jax.nn.softmax(logits)[rewarded]))
    assert probabilities[0] > 0.25  # from uniform, the first update already moves towards it
    assert np.all(np.diff(probabilities[:10]) > 0)  # and every early update raises it further
    assert probabilities[-1] > 0.95
