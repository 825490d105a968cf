"""A tiny optax training loop that checkpoints, for the kill -9 resume test of test_checkpoint.py.

    python resume_worker.py WORKDIR TOTAL_STEPS [--wait_after_save STEP]

Trains (resuming from WORKDIR's latest checkpoint if there is one) to TOTAL_STEPS, saving every
SAVE_EVERY steps, and writes the final parameters to WORKDIR/final.npz. With --wait_after_save it
prints "saved STEP" once that checkpoint is on disk, then waits to be killed. Every piece of a
real run's state is here: parameters, Adam moments, a typed RNG key consumed each step, the step,
and a shuffled grain iterator whose batches drive the loss.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pixel_jax.checkpoint import Checkpoints

SAVE_EVERY = 4
OPTIMIZER = optax.adam(0.05)
TRUE_W = np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]], np.float32)  # [3, 2]


def data_iterator() -> grain.DatasetIterator:
    """Batches of 4 (x [4, 3], y [4, 2]) from a shuffled, repeating set of 32 examples."""
    xs = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    dataset = grain.MapDataset.source(xs).shuffle(seed=1).repeat(None)
    dataset = dataset.map(lambda x: {"x": x, "y": x @ TRUE_W}).batch(4)
    return iter(dataset.to_iter_dataset())


def initial_state() -> dict:
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}
    return {"step": jnp.int32(0), "params": params, "opt_state": OPTIMIZER.init(params), "rng": jax.random.key(0)}


@jax.jit
def train_step(state: dict, batch: dict) -> dict:
    rng, key = jax.random.split(state["rng"])
    x = batch["x"] + 0.1 * jax.random.normal(key, batch["x"].shape)  # [4, 3] input noise

    def loss(params):
        return jnp.mean((x @ params["w"] + params["b"] - batch["y"]) ** 2)

    grads = jax.grad(loss)(state["params"])
    updates, opt_state = OPTIMIZER.update(grads, state["opt_state"], state["params"])
    return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state, "rng": rng}


def train(workdir: pathlib.Path, total_steps: int, wait_after_save: int | None = None) -> dict:
    state, batches = initial_state(), data_iterator()
    with Checkpoints(workdir / "checkpoints", keep=2) as checkpoints:
        if checkpoints.latest_step() is not None:
            state = checkpoints.restore(state, data_iterator=batches)
        while int(state["step"]) < total_steps:
            state = train_step(state, next(batches))
            step = int(state["step"])
            if step % SAVE_EVERY == 0:
                checkpoints.save(step, state, data_iterator=batches)
            if step == wait_after_save:
                checkpoints.wait_until_finished()
                print(f"saved {step}", flush=True)
                time.sleep(600)  # until the test kills this process
    return state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("total_steps", type=int)
    parser.add_argument("--wait_after_save", type=int)
    args = parser.parse_args()
    state = train(args.workdir, args.total_steps, args.wait_after_save)
    np.savez(args.workdir / "final.npz", **jax.tree.map(np.asarray, state["params"]))


if __name__ == "__main__":
    main()
