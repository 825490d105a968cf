"""The GRPO learner step on the tiny Qwen2.5-VL and trajectories from the rollout engine.

Toy task: 2 queries (a prompt with one image) × G = 4 responses of 4 tokens, teacher-forced through
the engine so that log π_old is the sampler's own. Responses starting with token A are rewarded,
those starting with token C are not. Three learner steps are compiled in all (one per fixture:
each compile costs ~10 s on a CPU core) and shared by the tests.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from pixel_jax import sharding
from pixel_jax.models.qwen2_5_vl import Qwen2_5_VL, Qwen2_5_VLConfig
from pixel_jax.rl import learner
from pixel_jax.rollout import engine as engine_lib
from pixel_jax.rollout.trajectory import token_logprobs_and_entropy
from pixel_jax.tools.errors import ToolError

CONFIG = Qwen2_5_VLConfig.tiny()
G, QUERIES, RESPONSE, PROMPT = 4, 2, 4, 10
ROWS = G * QUERIES
A, C = 100, 200  # first response token: rewarded / not
FORCED = np.array([[A, 7, 8, 9], [A, 9, 8, 7], [C, 7, 8, 9], [C, 9, 8, 7]] * QUERIES, np.int32)  # [B, 4]
TASK_REWARD = (FORCED[:, 0] == A).astype(np.float32)  # [B]
REWARDED = FORCED[:, 0] == A
TOY = learner.LearnerConfig(group_size=G, advantage_estimator="grpo", learning_rate=1e-3, total_steps=100,
                            policy_iterations=2, adam_eps=1e-6, eta_alpha=1.0, eta_beta=1.0)
FROZEN_VISION_KL = dataclasses.replace(TOY, micro_batches=2, frozen=(r"^visual\.",), kl_coef=1.0,
                                       ref_sync_every=3)
# (log π_θ, entropy) [B, S] of a trajectory whose G rows per query share the query's image
replay = jax.jit(functools.partial(token_logprobs_and_entropy, group_size=G))


def new_model() -> Qwen2_5_VL:
    return Qwen2_5_VL(CONFIG, rngs=nnx.Rngs(0))


@functools.cache
def initial_model() -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.jit(new_model)())  # one compile instead of one per parameter shape


def create_model() -> Qwen2_5_VL:
    """A fresh copy of the same initial model (the learner donates the buffers it is given)."""
    graphdef, state = initial_model()
    return nnx.merge(graphdef, jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))(state))


def prompts() -> dict[str, jax.Array]:
    """input_ids [B, 10] with 4 image tokens, attention_mask, pixel values [B, 16, 1176], grids [B, 3]."""
    ids = [10, 11, CONFIG.vision_start_token_id] + [CONFIG.image_token_id] * 4 + [CONFIG.vision_end_token_id, 12, 13]
    images = np.random.default_rng(0).normal(size=(QUERIES, 16, CONFIG.vision.patch_dim)).astype(np.float32)
    return {
        "input_ids": jnp.tile(jnp.array(ids, jnp.int32), (ROWS, 1)),
        "attention_mask": jnp.ones((ROWS, PROMPT), jnp.int32),
        "pixel_values": jnp.repeat(images, G, axis=0),  # the G responses of a query share its image
        "image_grid_thw": jnp.tile(jnp.array([[1, 4, 4]], jnp.int32), (ROWS, 1)),
        "forced_tokens": jnp.asarray(FORCED),
    }


@pytest.fixture(scope="module")
def rollout():
    """model -> RolloutBatch of the toy task, sampled (teacher-forced) by the engine under model."""
    engine = engine_lib.Engine(create_model(), engine_lib.RolloutSpec(max_new_tokens=RESPONSE, stop_ids=()))
    batch = prompts()

    def run(model: Qwen2_5_VL, task_reward=TASK_REWARD) -> learner.RolloutBatch:
        graphdef, state = nnx.split(model)
        model = nnx.merge(graphdef, jax.device_put(state, jax.devices()[0]))  # one placement: one compile
        return learner.RolloutBatch(trajectory=engine(model, batch, jax.random.key(0)),
                                    task_reward=jnp.asarray(task_reward),
                                    prompt_pixel_values=batch["pixel_values"][::G],  # once per query
                                    prompt_grid_thw=batch["image_grid_thw"][::G])

    return run


class Learner:
    """A compiled update step and fresh states for it (one compile per fixture)."""

    def __init__(self, config: learner.LearnerConfig, mesh_shape=(1, 1, 1)):
        devices = jax.devices()[: int(np.prod(mesh_shape))]
        self.plan = learner.plan_learner(new_model, config, sharding.make_mesh(mesh_shape, devices),
                                         sharding.make_rules())
        self.step = learner.make_update_step(self.plan)

    def init(self):
        return learner.init_learner(self.plan, create_model())

    def update(self, state, frozen, batch: learner.RolloutBatch):
        return self.step(state, frozen, learner.shard_batch(self.plan, batch))

    def policy(self, state, frozen) -> Qwen2_5_VL:
        return nnx.merge(self.plan.graphdef, frozen, state.params)


@pytest.fixture(scope="module")
def toy():
    return Learner(TOY)


@pytest.fixture(scope="module")
def frozen_vision_kl():
    return Learner(FROZEN_VISION_KL)


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.array(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_equal(actual, expected):
    actual, expected = flat(actual), flat(expected)
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def first_response_logprob(batch: learner.RolloutBatch) -> np.ndarray:
    """log π_old of each row's first response token (A or C), as the engine sampled it: [B]."""
    return np.asarray(batch.trajectory.logprobs[:, PROMPT])


def with_old_logprobs(batch: learner.RolloutBatch, shift_per_row: np.ndarray) -> learner.RolloutBatch:
    """log π_old + shift on every sampled token of each row."""
    trajectory = batch.trajectory
    shifted = trajectory.logprobs + jnp.where(trajectory.loss_mask, jnp.asarray(shift_per_row)[:, None], 0.0)
    return batch.replace(trajectory=trajectory.replace(logprobs=shifted))


# ----------------------------------------------------------------- learning signal
def test_updates_raise_the_probability_of_the_rewarded_token(toy, rollout):
    state, frozen = toy.init()
    rewarded, unrewarded = [], []
    for _ in range(5):
        batch = rollout(toy.policy(state, frozen))
        logprob = first_response_logprob(batch)
        rewarded.append(logprob[REWARDED].mean())
        unrewarded.append(logprob[~REWARDED].mean())
        logprobs, entropy = replay(toy.policy(state, frozen), batch.trajectory, batch.prompt_pixel_values,
                                   batch.prompt_grid_thw)
        state, metrics = toy.update(state, frozen, batch)
        # Iteration 0 replays the sampler exactly (ρ = 1); iteration 1 is off-policy.
        assert float(metrics["max_abs_log_ratio"][0]) <= 1e-5
        assert float(metrics["approx_kl"][0]) <= 1e-10
        assert float(metrics["max_abs_log_ratio"][1]) > 1e-3
        mask = np.asarray(batch.trajectory.loss_mask)
        np.testing.assert_allclose(float(metrics["entropy"][0]), np.asarray(entropy)[mask].mean(), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(logprobs)[mask], np.asarray(batch.trajectory.logprobs)[mask],
                                   atol=1e-5)
    assert np.all(np.diff(rewarded) > 0) and np.all(np.diff(unrewarded) < 0)
    assert np.exp(rewarded[-1]) > 2 * np.exp(rewarded[0])
    assert int(state.step) == 5 and int(state.updates) == 10 and int(state.skipped) == 0
    assert toy.step._cache_size() == 1  # one compile serves the whole run


# --------------------------------------------------------------------- the clip
def test_tokens_clipped_in_the_direction_of_their_advantage_give_no_gradient(toy, rollout):
    batch = rollout(create_model())
    # ρ = e^0.5 > 1 + ε_high where A > 0 and ρ = e^-0.5 < 1 − ε_low where A < 0: every token clipped.
    state, frozen = toy.init()
    before = flat(state.params)
    state, metrics = toy.update(state, frozen, with_old_logprobs(batch, np.where(REWARDED, -0.5, 0.5)))
    assert float(metrics["grad_norm"][0]) == 0.0
    assert float(metrics["clip_frac_high"][0]) == float(metrics["clip_frac_low"][0]) == 0.5
    assert_trees_equal(flat(state.params), before)  # Adam moves nothing on zero gradients

    # Only the rewarded rows clipped: their tokens add a constant to the loss, so the gradient is
    # that of the other rows alone — the gradient with the rewarded rows masked out, whose
    # token-mean divides by 16 tokens instead of 32.
    mixed = with_old_logprobs(batch, np.where(REWARDED, -0.5, 0.0))
    masked = batch.replace(trajectory=batch.trajectory.replace(
        loss_mask=batch.trajectory.loss_mask & jnp.asarray(~REWARDED)[:, None]))
    grad_norms = []
    for case in (mixed, masked):
        state, frozen = toy.init()
        _, metrics = toy.update(state, frozen, case)
        grad_norms.append(float(metrics["grad_norm"][0]))
        if case is mixed:
            assert float(metrics["clip_frac_high"][0]) == 0.5 and float(metrics["clip_frac_low"][0]) == 0.0
    assert grad_norms[0] > 0
    np.testing.assert_allclose(grad_norms[0], grad_norms[1] / 2, rtol=1e-5)


# ----------------------------------------------------------------- KL and π_ref
def test_kl_pulls_the_policy_toward_the_reference_and_resyncs(frozen_vision_kl, rollout):
    learner_ = frozen_vision_kl
    state, frozen = learner_.init()
    reference = learner_.policy(state, frozen)
    noise = jax.random.split(jax.random.key(1), len(jax.tree.leaves(state.params)))
    leaves, treedef = jax.tree.flatten(state.params)
    perturbed = jax.tree.unflatten(treedef, [p + 0.02 * jax.random.normal(k, p.shape) for p, k in zip(leaves, noise)])
    state = state.replace(params=jax.device_put(perturbed, learner_.plan.state_shardings.params))

    equal_rewards = np.zeros(ROWS, np.float32)  # A_i = 0: only the KL term has a gradient
    kls = []  # KL(π_θ ‖ π_ref) at the start of each call
    for call in range(3):
        batch = rollout(learner_.policy(state, frozen), equal_rewards)
        if call == 0:  # k3 = π_ref/π_θ − log(π_ref/π_θ) − 1, mean over the sampled tokens
            traj, mask = batch.trajectory, np.asarray(batch.trajectory.loss_mask)
            inputs = (traj, batch.prompt_pixel_values, batch.prompt_grid_thw)
            log_ratio = replay(reference, *inputs)[0] - replay(learner_.policy(state, frozen), *inputs)[0]
            expected_kl = np.asarray(jnp.exp(log_ratio) - log_ratio - 1.0)[mask].mean()
        state, metrics = learner_.update(state, frozen, batch)
        if call == 0:
            np.testing.assert_allclose(float(metrics["kl"][0]), expected_kl, rtol=1e-4)
        assert float(metrics["pg_loss"][0]) == 0.0
        kls.append(float(metrics["kl"][0]))
    assert np.all(np.diff(kls) < 0) and kls[-1] < kls[0] / 4

    batch = rollout(learner_.policy(state, frozen), equal_rewards)
    state, metrics = learner_.update(state, frozen, batch)  # step 3: π_ref ← θ before the update
    assert float(metrics["kl"][0]) <= 1e-10 and float(metrics["grad_norm"][0]) <= 1e-6


# ------------------------------------------------------------ frozen parameters
def test_frozen_vision_parameters_stay_out_of_the_state_and_unchanged(frozen_vision_kl, rollout):
    state, frozen = frozen_vision_kl.init()
    names = list(flat(state.params)) + list(flat(state.opt_state))
    assert names and not any("visual" in name for name in names)
    assert flat(frozen) and all("visual" in name for name in flat(frozen))
    frozen_before, params_before = flat(frozen), flat(state.params)
    state, _ = frozen_vision_kl.update(state, frozen, rollout(create_model()))
    assert_trees_equal(flat(frozen), frozen_before)  # not donated, not touched
    changed = [k for k, v in flat(state.params).items() if not np.array_equal(v, params_before[k])]
    assert any("embed_tokens" in k for k in changed) and any("layers" in k for k in changed)


def test_partition_rejects_patterns_that_match_nothing_or_everything():
    with pytest.raises(ValueError, match="matches no parameter path"):
        learner.partition_params(create_model(), (r"^vision_tower\.",))
    with pytest.raises(ValueError, match="nothing to train"):
        learner.partition_params(create_model(), (".",))


# ------------------------------------------------------------- non-finite steps
def test_a_non_finite_loss_skips_the_update_and_counts_it(toy, rollout):
    state, frozen = toy.init()
    batch = rollout(create_model())
    poisoned = batch.replace(trajectory=batch.trajectory.replace(
        logprobs=batch.trajectory.logprobs.at[3, PROMPT + 1].set(jnp.nan)))
    params, opt_state = flat(state.params), flat(state.opt_state)
    state, metrics = toy.update(state, frozen, poisoned)
    assert int(state.skipped) == int(metrics["skipped"]) == TOY.policy_iterations
    assert int(state.updates) == 0 and int(state.step) == 1
    assert_trees_equal(flat(state.params), params)
    assert_trees_equal(flat(state.opt_state), opt_state)
    state, metrics = toy.update(state, frozen, batch)
    assert int(state.skipped) == 2 and int(state.updates) == 2 and np.all(np.isfinite(metrics["loss"]))


# --------------------------------------------------------------------- rewards
def test_shaped_rewards_follow_the_curiosity_formulas(rollout):
    trajectory = rollout(create_model()).trajectory
    # Row 1 (task reward 1): one failed call, never repaired → r = 0. Rows 4, 5: 3 and 7 valid calls.
    n_calls = jnp.array([0, 1, 0, 0, 3, 7, 0, 0])
    errors = jnp.zeros((ROWS, 8), jnp.int32).at[1, 0].set(ToolError.CROP_TOO_SMALL)
    trajectory = trajectory.replace(n_calls=n_calls, n_errors=(errors != 0).sum(1), call_errors=errors)
    parts = learner.shape_batch_rewards(TOY, learner.curiosity.CuriosityState.create(0.5, 0.05),
                                        jnp.asarray(TASK_REWARD), trajectory)
    # G = 4, H = 0.3: RaPR 1/4 in group 0 → bonus 0.5·(0.3 − 0.25) on row 1; RaPR 1/2 in group 1.
    np.testing.assert_allclose(np.asarray(parts["rapr"]), [0.25] * 4 + [0.5] * 4)
    np.testing.assert_allclose(np.asarray(parts["bonus"]), [0, 0.025, 0, 0, 0, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(np.asarray(parts["penalty"]), [0, 0, 0, 0, -0.1, -0.3, 0, 0], atol=1e-7)
    np.testing.assert_allclose(np.asarray(parts["reward"]), [1, 0.025, 0, 0, 0.9, 0.7, 0, 0], atol=1e-6)


def test_step_reports_reward_parts_and_moves_the_multipliers(toy, rollout):
    state, frozen = toy.init()
    batch = rollout(create_model())
    # One valid call in row 4, one failed call in row 1 (its reward gated to 0): RaPR 1/4 in both groups.
    trajectory = batch.trajectory.replace(
        n_calls=jnp.array([0, 1, 0, 0, 1, 0, 0, 0]), n_errors=jnp.array([0, 1, 0, 0, 0, 0, 0, 0]),
        call_errors=jnp.array([[0], [ToolError.CROP_TOO_SMALL], [0], [0], [0], [0], [0], [0]], jnp.int32))
    state, metrics = toy.update(state, frozen, batch.replace(trajectory=trajectory))
    expected = {"task_reward": 0.5, "rapr": 0.25, "n_vo": 0.25, "bonus": 0.05 / 8, "penalty": 0.0,
                "reward": (1 + 0.025 + 1.025 + 1) / 8, "alpha": 0.5, "beta": 0.05, "skipped": 0}
    for key, value in expected.items():
        np.testing.assert_allclose(float(metrics[key]), value, atol=1e-6, err_msg=key)
    # α ← clip(0.5 + 1·(0.3 − 0.25), 0, 1); β ← clip(0.05 + 1·(0.25 − 1), 0, 1).
    np.testing.assert_allclose(float(state.curiosity.alpha), 0.55, atol=1e-6)
    assert float(state.curiosity.beta) == 0.0
    # Warm-up 0 → cosine over 100 updates: the two updates ran at lr(0), lr(1).
    np.testing.assert_allclose(np.asarray(metrics["learning_rate"]),
                               [1e-3, 1e-3 * 0.5 * (1 + np.cos(np.pi / 100))], rtol=1e-6)


# -------------------------------------------------------------------- sharding
def test_the_update_depends_on_neither_the_mesh_nor_the_micro_batch_count(toy, rollout):
    # 8 devices (data 2 × fsdp 2 × tensor 2) with M = 2 micro-batches against 1 device with M = 1.
    sharded = Learner(dataclasses.replace(TOY, micro_batches=2), mesh_shape=(2, 2, 2))
    batch = rollout(create_model())
    state, frozen = toy.init()
    expected_state, expected_metrics = toy.update(state, frozen, batch)
    state, frozen = sharded.init()
    embedding = lambda state: state.params["language_model"]["embed_tokens"].get_value()
    assert embedding(state).sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    state, metrics = sharded.update(state, frozen, batch)
    assert embedding(state).sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    for key, value in flat(expected_metrics).items():
        np.testing.assert_allclose(flat(metrics)[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    for key, value in flat(expected_state.params).items():  # Adam's g/(|g| + ε) amplifies float noise
        np.testing.assert_allclose(flat(state.params)[key], value, atol=1e-5, err_msg=key)


# --------------------------------------------------------------- micro-batches
def test_micro_batches_hold_whole_groups_strided_over_the_batch():
    rows = jnp.arange(12).reshape(6, 2)  # Q = 3 groups of G = 2 rows; rows on axis 0
    split = learner._split_groups(rows, micro_batches=3, row_axis=0, group_rows=2)  # [M, b, 2]
    np.testing.assert_array_equal(split[:, :, 0], [[0, 2], [4, 6], [8, 10]])
    four = learner._split_groups(jnp.arange(8), micro_batches=2, row_axis=0, group_rows=2)  # Q = 4, G = 2
    np.testing.assert_array_equal(four, [[0, 1, 4, 5], [2, 3, 6, 7]])  # groups 0, 2 | 1, 3
    images = learner._split_groups(jnp.arange(4), micro_batches=2, row_axis=0, group_rows=1)  # one per group
    np.testing.assert_array_equal(images, [[0, 2], [1, 3]])
    positions = jnp.arange(16).reshape(2, 8)  # [3 → 2, B] rows on axis 1
    np.testing.assert_array_equal(learner._split_groups(positions, 2, 1, 2)[1], [[2, 3, 6, 7], [10, 11, 14, 15]])


def test_a_shared_prompt_image_gives_the_logprobs_of_one_image_per_row(rollout):
    batch = rollout(create_model())
    per_row = (batch.trajectory, jnp.repeat(batch.prompt_pixel_values, G, axis=0),
               jnp.repeat(batch.prompt_grid_thw, G, axis=0))
    shared = replay(create_model(), batch.trajectory, batch.prompt_pixel_values, batch.prompt_grid_thw)
    separate = jax.jit(token_logprobs_and_entropy)(create_model(), *per_row)
    for a, b in zip(shared, separate):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)  # float noise only
    with pytest.raises(ValueError, match=r"one per group of rows, \[2, P0, patch_dim\] for 8 rows; got shape \(8,"):
        replay(create_model(), *per_row)


# ------------------------------------------------------------------ checkpoints
def test_state_round_trips_through_an_orbax_checkpoint(frozen_vision_kl, tmp_path):
    state, _ = frozen_vision_kl.init()
    state, key = state.split_rng()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", abstract)
    assert type(restored) is learner.LearnerState and restored.ref_params is not None
    assert_trees_equal(restored, state)
    np.testing.assert_array_equal(np.asarray(key), np.asarray(jax.random.split(jax.random.PRNGKey(0))[1]))


# -------------------------------------------------------------------- bad input
def test_bad_configs_and_batches_raise_clear_errors(toy, rollout):
    with pytest.raises(ValueError, match="micro_batches=0 must be >= 1"):
        learner.LearnerConfig(micro_batches=0)
    with pytest.raises(ValueError, match="aggregation='mean' is not one of"):
        learner.LearnerConfig(aggregation="mean")
    with pytest.raises(ValueError, match="total_steps=5 must exceed warmup_steps=10"):
        learner.LearnerConfig(warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="frozen must be a tuple"):
        learner.LearnerConfig(frozen=r"^visual\.")
    batch = rollout(create_model())
    state, frozen = toy.init()
    with pytest.raises(ValueError, match=r"task_reward must be \[8\]"):
        toy.update(state, frozen, batch.replace(task_reward=jnp.zeros(4)))
    six_rows = jax.tree.map(lambda x: x[:6], batch)
    six_rows = six_rows.replace(trajectory=six_rows.trajectory.replace(positions=batch.trajectory.positions[:, :6]))
    with pytest.raises(ValueError, match="6 rows, which must be a multiple of group_size=4"):
        toy.update(state, frozen, six_rows)
    per_row = batch.replace(prompt_pixel_values=jnp.repeat(batch.prompt_pixel_values, G, axis=0))
    with pytest.raises(ValueError, match=r"prompt_pixel_values must be \[2, P0, patch_dim\] \(one image per query"):
        toy.update(state, frozen, per_row)
    three_groups = Learner(dataclasses.replace(TOY, micro_batches=3))
    with pytest.raises(ValueError, match="a number of groups that is a multiple of micro_batches=3"):
        three_groups.update(*three_groups.init(), batch)
