"""Checkpoints: exact round trips (typed keys, shardings, iterator state), keep-N and best, atomic
saves, restoring only the parameters, Hugging Face export, and an exact resume after kill -9."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import resume_worker
from pixel_jax import checkpoint
from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.rl.curiosity import CuriosityState
from pixel_jax.rl.learner import partition_params

REPO = pathlib.Path(__file__).resolve().parents[1]


def numbers_iterator() -> grain.DatasetIterator:
    return iter(grain.MapDataset.range(40).shuffle(seed=3).batch(4).to_iter_dataset())


def train_state(mesh) -> dict:
    """A state with every kind of leaf a run saves; the kernel sharded over the 8 fake devices."""
    kernel = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, PartitionSpec("fsdp", None)))
    params = {"kernel": kernel, "bias": jnp.array([0.5, -1.0, 2.0, 0.25])}
    opt_state = optax.adam(1e-3).init(params)
    opt_state = jax.tree.map(lambda x: x + 0.125 if jnp.issubdtype(x.dtype, jnp.floating) else x + 7, opt_state)
    return {"step": jnp.int32(12), "params": params, "opt_state": opt_state,
            "curiosity": CuriosityState.create(0.5, 0.05), "rng": jax.random.key(42),
            "raw_key": jax.random.PRNGKey(7)}


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))


def assert_trees_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype
        if jnp.issubdtype(w.dtype, jax.dtypes.prng_key):
            g, w = jax.random.key_data(g), jax.random.key_data(w)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_round_trip_restores_the_state_and_the_iterator_position(tmp_path, mesh):
    state, batches = train_state(mesh), numbers_iterator()
    for _ in range(3):
        next(batches)
    saved_position = batches.get_state()
    with checkpoint.Checkpoints(tmp_path, keep=2) as checkpoints:
        assert checkpoints.save(3, state, data_iterator=batches)
    following = [next(batches).tolist() for _ in range(2)]

    fresh = numbers_iterator()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    with checkpoint.Checkpoints(tmp_path) as checkpoints:
        assert checkpoints.latest_step() == 3
        restored = checkpoints.restore(abstract, data_iterator=fresh)
    assert_trees_equal(restored, state)
    assert jax.dtypes.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
    assert restored["params"]["kernel"].sharding == state["params"]["kernel"].sharding
    assert fresh.get_state() == saved_position
    assert [next(fresh).tolist() for _ in range(2)] == following


def test_a_relative_directory_is_saved_and_restored(tmp_path, mesh, monkeypatch):
    """The README's default workdir is relative (runs/…): orbax's array writer needs it absolute."""
    monkeypatch.chdir(tmp_path)
    state = train_state(mesh)
    with checkpoint.Checkpoints("runs/relative/checkpoints") as checkpoints:
        assert checkpoints.save(1, state)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    with checkpoint.Checkpoints("runs/relative/checkpoints") as checkpoints:
        assert_trees_equal(checkpoints.restore(abstract), state)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state["params"])
    assert_trees_equal(checkpoint.restore_params("runs/relative", params), state["params"])


def test_keeps_the_latest_n_and_the_best_step(tmp_path, mesh):
    state = train_state(mesh)
    accuracy = {1: 0.1, 2: 0.9, 3: 0.3, 4: 0.2, 5: 0.4}
    with checkpoint.Checkpoints(tmp_path, keep=2, best_metric="eval/accuracy") as checkpoints:
        for step, value in accuracy.items():
            checkpoints.save(step, state, metrics={"eval/accuracy": value, "reward": -value})
        checkpoints.save(6, state)  # no evaluation at this step
        checkpoints.wait_until_finished()
        assert checkpoints.all_steps() == [2, 5, 6]
        assert checkpoints.best_step() == 2
        with pytest.raises(ValueError, match="lack best_metric='eval/accuracy'"):
            checkpoints.save(7, state, metrics={"reward": 1.0})
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 5, 6]


def test_lowest_metric_is_best_in_min_mode(tmp_path, mesh):
    with checkpoint.Checkpoints(tmp_path, keep=1, best_metric="loss", best_mode="min") as checkpoints:
        for step, loss in ((1, 0.5), (2, 0.2), (3, 0.7)):
            checkpoints.save(step, train_state(mesh), metrics={"loss": loss})
        checkpoints.wait_until_finished()
        assert checkpoints.all_steps() == [2, 3]
        assert checkpoints.best_step() == 2


def test_a_save_killed_half_way_is_ignored_and_cleaned_up(tmp_path, mesh):
    state = train_state(mesh)
    with checkpoint.Checkpoints(tmp_path) as checkpoints:
        checkpoints.save(1, state)
    partial = tmp_path / "2.orbax-checkpoint-tmp-1712345678"  # what a kill during the write leaves
    (partial / checkpoint.STATE).mkdir(parents=True)
    (partial / checkpoint.STATE / "_METADATA").write_text("{truncated")

    assert checkpoint.checkpoint_directory(tmp_path) == tmp_path
    with checkpoint.Checkpoints(tmp_path) as checkpoints:
        assert checkpoints.all_steps() == [1]
        assert_trees_equal(checkpoints.restore(state), state)
    assert not partial.exists()


def test_restore_params_reads_only_the_parameters_of_a_run(tmp_path, mesh):
    state = train_state(mesh)
    with checkpoint.Checkpoints(tmp_path / checkpoint.CHECKPOINT_DIR) as checkpoints:
        checkpoints.save(5, state)
        checkpoints.save(9, {**state, "params": jax.tree.map(lambda x: x * 2, state["params"])})
    assert checkpoint.checkpoint_directory(tmp_path) == tmp_path / checkpoint.CHECKPOINT_DIR
    latest = checkpoint.restore_params(tmp_path, state["params"])  # the work directory is enough
    assert_trees_equal(latest, jax.tree.map(lambda x: x * 2, state["params"]))
    assert latest["kernel"].sharding == state["params"]["kernel"].sharding
    assert_trees_equal(checkpoint.restore_params(tmp_path, state["params"], step=5), state["params"])


def test_missing_checkpoints_are_reported(tmp_path):
    assert checkpoint.checkpoint_directory(tmp_path / "nowhere") is None
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        checkpoint.restore_params(tmp_path, {"w": jnp.zeros(2)})
    with checkpoint.Checkpoints(tmp_path / "empty") as checkpoints:
        with pytest.raises(FileNotFoundError, match="no finished checkpoint to restore"):
            checkpoints.restore({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="keep=0"):
        checkpoint.Checkpoints(tmp_path, keep=0)


def test_export_huggingface_writes_the_merged_model(tmp_path):
    create = lambda: qvl.Qwen2_5_VL(qvl.Qwen2_5_VLConfig.tiny(), rngs=nnx.Rngs(0))
    graphdef, abstract = nnx.split(nnx.eval_shape(create))
    rng = np.random.default_rng(0)  # random values without compiling the initialisers
    model = nnx.merge(graphdef, jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), abstract))
    graphdef, frozen, trainable = partition_params(model, (r"^visual\.",))  # as the GRPO learner holds it
    checkpoint.export_huggingface(tmp_path / "hf", graphdef, frozen, trainable)
    loaded = qvl.from_pretrained(tmp_path / "hf")
    assert loaded.config == model.config
    assert_trees_equal(nnx.state(loaded, nnx.Param), nnx.state(model, nnx.Param))


@pytest.mark.slow  # three processes: ~15 s on 2 cores
def test_resume_after_kill_9_continues_exactly(tmp_path):
    """N steps straight == N/2 steps, save, kill -9, a new process restores and runs N/2 more."""
    total = 2 * resume_worker.SAVE_EVERY
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, resume_worker.__file__, str(tmp_path), str(total)]
    first = subprocess.Popen(command + ["--wait_after_save", str(total // 2)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert first.stdout.readline().strip() == f"saved {total // 2}"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not (tmp_path / "final.npz").exists()

    subprocess.run(command, env=env, check=True, capture_output=True)
    resumed = np.load(tmp_path / "final.npz")
    straight = resume_worker.train(tmp_path / "straight", total)
    for name, value in straight["params"].items():
        np.testing.assert_array_equal(resumed[name], np.asarray(value))
    assert not np.allclose(np.asarray(straight["params"]["w"]), 0.0)  # it trained
