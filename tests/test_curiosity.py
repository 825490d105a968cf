"""pixel_jax.rl.curiosity: RaPR, bonus, penalty, the failed-operation gate, the multipliers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixel_jax.rl import curiosity

PAPER = dict(H=0.3, N=1, alpha=0.5, beta=0.05)  # the paper's values, G = 8


def _one_user_group():
    """One query, G = 8: response 0 uses one operation (RaPR = 1/8)."""
    task = jnp.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    n_vo = jnp.array([1, 0, 0, 0, 0, 0, 0, 0])
    return task, n_vo


def test_paper_bonus_at_rapr_one_eighth():
    task, n_vo = _one_user_group()
    out = curiosity.shape_rewards(task, n_vo, 8, **PAPER)
    expected_bonus = np.array([0.5 * (0.3 - 0.125)] + [0.0] * 7)  # 0.0875 for the user only
    np.testing.assert_allclose(out["bonus"], expected_bonus, rtol=1e-6)
    np.testing.assert_allclose(out["rapr"], np.full(8, 0.125))
    np.testing.assert_allclose(out["penalty"], np.zeros(8))
    np.testing.assert_allclose(out["reward"], np.asarray(task) + expected_bonus, rtol=1e-6)
    assert float(out["bonus"][0]) == pytest.approx(0.0875)


@pytest.mark.parametrize("n_users, group_size", [(3, 8), (8, 8), (3, 10)])
def test_no_bonus_once_rapr_reaches_h(n_users, group_size):
    # RaPR = 3/8, 1, and exactly H = 3/10: the bonus fades to 0.
    n_vo = jnp.array([1] * n_users + [0] * (group_size - n_users))
    out = curiosity.shape_rewards(jnp.ones(group_size), n_vo, group_size, **PAPER)
    np.testing.assert_allclose(out["bonus"], np.zeros(group_size), atol=1e-7)
    np.testing.assert_allclose(out["rapr"], np.full(group_size, n_users / group_size), rtol=1e-6)


def test_penalty_charges_operations_beyond_n():
    n_vo = jnp.array([3, 2, 1, 0, 0, 0, 0, 0])  # RaPR = 3/8 >= H: no bonus either
    out = curiosity.shape_rewards(jnp.zeros(8), n_vo, 8, **PAPER)
    np.testing.assert_allclose(out["penalty"], [-0.1, -0.05, 0, 0, 0, 0, 0, 0], rtol=1e-6, atol=0)
    np.testing.assert_allclose(out["reward"], out["penalty"])


def test_official_code_variant():
    # The authors' code: max(H − RaPR, 0)/2 · 0.25/RaPR = 0.0875 · 2 = 0.175, α not applied.
    task, n_vo = _one_user_group()
    out = curiosity.shape_rewards(task, n_vo, 8, variant="official_code", **PAPER)
    np.testing.assert_allclose(out["bonus"], [0.175] + [0.0] * 7, rtol=1e-6)
    np.testing.assert_allclose(out["reward"], np.asarray(task) + np.asarray(out["bonus"]))
    # Video rows divide by 1.5 instead of 2: 0.175 / 1.5 · 2.
    video = curiosity.shape_rewards(task, n_vo, 8, variant="official_code",
                                    is_video=jnp.ones(8, bool), **PAPER)
    assert float(video["bonus"][0]) == pytest.approx(0.175 / 1.5 * 2, rel=1e-6)
    # The penalty is β·min(N − n_vo, 0) in both variants (= the code's −0.05·(n − 1) for N = 1).
    heavy = curiosity.shape_rewards(task, n_vo * 3, 8, variant="official_code", **PAPER)
    assert float(heavy["penalty"][0]) == pytest.approx(-0.1)


def test_official_code_guards_rapr_zero():
    out = curiosity.shape_rewards(jnp.ones(8), jnp.zeros(8, int), 8, variant="official_code",
                                  **PAPER)
    np.testing.assert_array_equal(out["bonus"], np.zeros(8))
    np.testing.assert_array_equal(out["reward"], np.ones(8))


def test_groups_are_contiguous():
    # Two queries, G = 4: the first has one user (RaPR 1/4), the second none.
    n_vo = jnp.array([0, 0, 2, 0, 0, 0, 0, 0])
    out = curiosity.shape_rewards(jnp.zeros(8), n_vo, 4, **PAPER)
    np.testing.assert_allclose(out["rapr"], [0.25] * 4 + [0.0] * 4)
    np.testing.assert_allclose(out["bonus"], [0, 0, 0.5 * 0.05, 0, 0, 0, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(out["penalty"], [0, 0, -0.05, 0, 0, 0, 0, 0], rtol=1e-6)


def test_count_failed_calls_or_only_valid_ones():
    n_calls = jnp.array([1, 2, 0, 0])
    n_failed = jnp.array([1, 1, 0, 0])
    all_calls = curiosity.count_visual_operations(n_calls, n_failed, count_failed=True)
    valid = curiosity.count_visual_operations(n_calls, n_failed, count_failed=False)
    np.testing.assert_array_equal(all_calls, [1, 2, 0, 0])
    np.testing.assert_array_equal(valid, [0, 1, 0, 0])
    np.testing.assert_allclose(curiosity.rate_of_pixel_reasoning(all_calls, 4), [0.5])
    np.testing.assert_allclose(curiosity.rate_of_pixel_reasoning(valid, 4), [0.25])


def _reference_code_gate(task_reward, last_call_failed, group_size):
    """The authors' loop, bug included: it reads the flag at the in-group index iidx."""
    gated = list(task_reward)
    for start in range(0, len(task_reward), group_size):
        for iidx in range(group_size):
            if task_reward[start + iidx] > 0.5 and last_call_failed[iidx]:
                gated[start + iidx] = 0.0
    return gated


def test_failed_last_operation_gate_is_per_sample():
    # Two groups of 4, every answer correct; only the SECOND group has a failed last call.
    task = [1.0] * 8
    failed = [False] * 5 + [True] + [False] * 2
    expected = [1.0] * 5 + [0.0] + [1.0] * 2
    gated = curiosity.gate_failed_operation(jnp.array(task), jnp.array(failed))
    np.testing.assert_array_equal(gated, expected)
    # The reference code's group-index bug misses it, so this batch tells the two apart.
    assert _reference_code_gate(task, failed, 4) != expected
    # Through shape_rewards: the gate acts on r before the bonus is added.
    out = curiosity.shape_rewards(jnp.array(task), jnp.array([0, 0, 0, 0, 1, 1, 0, 0]), 4,
                                  last_call_failed=jnp.array(failed), **PAPER)
    np.testing.assert_allclose(out["reward"], np.array(expected) + np.asarray(out["bonus"]))
    assert float(out["reward"][5]) == pytest.approx(0.0)  # RaPR 1/2 >= H: no bonus


def test_shape_rewards_jits_with_traced_multipliers():
    task, n_vo = _one_user_group()
    jitted = jax.jit(curiosity.shape_rewards,
                     static_argnames=("group_size", "H", "N", "variant"))
    out = jitted(task, n_vo, group_size=8, H=0.3, N=1, alpha=jnp.float32(0.5),
                 beta=jnp.float32(0.05))
    eager = curiosity.shape_rewards(task, n_vo, 8, **PAPER)
    for key in ("reward", "bonus", "penalty", "rapr"):
        np.testing.assert_allclose(out[key], eager[key], rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(group_size=3), "group_size must be a positive int dividing the number of responses 8"),
    (dict(H=1.5), r"H \(target RaPR\) must be in \[0, 1\]"),
    (dict(N=-1), "N .* must be >= 0"),
    (dict(alpha=-0.1), "alpha must be >= 0"),
    (dict(variant="codebase"), "variant must be one of"),
    (dict(is_video=jnp.ones(4, bool)), r"is_video must be \[8\]"),
])
def test_shape_rewards_validates_inputs(kwargs, message):
    task, n_vo = _one_user_group()
    args = dict(group_size=8, **PAPER)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        curiosity.shape_rewards(task, n_vo, **args)


def test_shape_rewards_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="task_reward and n_vo must be flat arrays of one length"):
        curiosity.shape_rewards(jnp.ones(8), jnp.ones(4, int), 4, **PAPER)
    with pytest.raises(ValueError, match="last_call_failed must have the shape"):
        curiosity.gate_failed_operation(jnp.ones(8), jnp.zeros(4, bool))


UPDATE = dict(H=0.3, N=1, eta_alpha=1.0, eta_beta=0.1, alpha_max=2.0, beta_max=1.0)


def test_dual_ascent_raises_multipliers_under_violation():
    state = curiosity.CuriosityState.create(alpha=0.5, beta=0.05)
    rapr = jnp.full(8, 0.125)  # below H by 0.175
    n_vo = jnp.array([9, 3, 2, 1, 1, 0, 0, 0])  # mean 2, over N by 1
    new = curiosity.update_multipliers(state, rapr=rapr, n_vo=n_vo, **UPDATE)
    assert float(new.alpha) == pytest.approx(0.5 + 1.0 * 0.175)
    assert float(new.beta) == pytest.approx(0.05 + 0.1 * 1.0)


def test_dual_ascent_clips_and_fixed_multipliers():
    state = curiosity.CuriosityState.create(alpha=0.5, beta=0.05)
    satisfied = dict(rapr=jnp.ones(8), n_vo=jnp.zeros(8))  # RaPR 1 > H, n_vo 0 < N
    lowered = curiosity.update_multipliers(state, **satisfied, **UPDATE)
    assert float(lowered.alpha) == 0.0  # 0.5 − 0.7 clipped at 0
    assert float(lowered.beta) == pytest.approx(0.0)  # 0.05 − 0.1 clipped at 0
    capped = curiosity.update_multipliers(state, rapr=jnp.zeros(8), n_vo=jnp.full(8, 50.0),
                                          **{**UPDATE, "alpha_max": 0.6, "beta_max": 0.5})
    assert float(capped.alpha) == pytest.approx(0.6)
    assert float(capped.beta) == pytest.approx(0.5)
    fixed = curiosity.update_multipliers(state, **satisfied,
                                         **{**UPDATE, "eta_alpha": 0.0, "eta_beta": 0.0})
    assert (float(fixed.alpha), float(fixed.beta)) == pytest.approx((0.5, 0.05))


def test_curiosity_state_is_a_jittable_pytree():
    state = curiosity.CuriosityState.create(alpha=0.5, beta=0.05)
    assert len(jax.tree.leaves(state)) == 2
    update = jax.jit(functools.partial(curiosity.update_multipliers, **UPDATE))
    new = update(state, rapr=jnp.full(8, 0.125), n_vo=jnp.ones(8))
    assert float(new.alpha) == pytest.approx(0.675)
    assert float(new.beta) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="eta_alpha must be >= 0"):
        curiosity.update_multipliers(state, rapr=jnp.ones(8), n_vo=jnp.ones(8),
                                     **{**UPDATE, "eta_alpha": -1.0})
