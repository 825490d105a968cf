"""One process of the two-process CPU run in test_multiprocess.py (also its single-process reference).

Run as `python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz` with XLA_FLAGS giving
each process its CPU devices: it joins the run on 127.0.0.1:PORT, loads only its rows of the
global batch, takes two sharded train steps and saves every parameter shard it holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import jax
import numpy as np
from flax import nnx

from pixel_jax import distributed, sharding
from pixel_jax import train_step as ts
from pixel_jax.models import qwen2_5_vl as qvl

MESH = {"fsdp": 2, "tensor": 2}  # over 2 processes × 2 devices: batch and parameters split across processes
CONFIG = qvl.Qwen2_5_VLConfig.tiny(num_hidden_layers=1, vision=dataclasses.replace(
    qvl.Qwen2_5_VLConfig.tiny().vision, depth=1, fullatt_block_indexes=(0,)))
FIELDS = ts.batch_axes(ts.TEXT_FIELDS)
ROWS, LENGTH = 4, 16


def global_batch_on_host() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(0, 1900, (ROWS, LENGTH)).astype(np.int32),
        "attention_mask": np.ones((ROWS, LENGTH), np.int32),
        "loss_mask": (rng.random((ROWS, LENGTH)) > 0.3).astype(np.int32),
    }


def train_two_steps(mesh: jax.sharding.Mesh) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Parameter shards held by this process after two steps ({"path|start:stop,…": block}) and
    metrics, with the batch rows this process loaded ("rows": [start, stop])."""
    rules = sharding.make_rules()
    plan = ts.plan_training(lambda: qvl.Qwen2_5_VL(CONFIG, rngs=nnx.Rngs(0)), ts.adamw(1e-4, eps=1e-6), mesh, rules)
    state = ts.init_state(plan)
    shardings = sharding.batch_shardings(FIELDS, mesh, rules)
    rows = sharding.process_rows(shardings["input_ids"], ROWS)
    local = {key: value[rows] for key, value in global_batch_on_host().items()}
    batch = sharding.global_batch(local, shardings)
    step = ts.make_train_step(plan, FIELDS)
    for _ in range(2):
        state, metrics = step(state, batch)
    shards = {}
    for path, var in nnx.to_flat_state(state.params):
        array = var.get_value()
        for shard in array.addressable_shards:
            block = ",".join("{}:{}".format(*s.indices(n)[:2]) for s, n in zip(shard.index, array.shape))
            shards[f"{'.'.join(map(str, path))}|{block}"] = np.asarray(shard.data)
    shards["rows"] = np.array([rows.start, rows.stop])
    return shards, {key: float(value) for key, value in metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("process_id", type=int)
    parser.add_argument("num_processes", type=int)
    parser.add_argument("port", type=int)
    parser.add_argument("out")
    args = parser.parse_args()
    distributed.initialize("on", f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
    distributed.configure_logging()
    shards, metrics = train_two_steps(sharding.make_mesh(MESH))
    logging.getLogger("multiprocess_worker").info("trained 2 steps, loss %.4f", metrics["loss"])
    np.savez(args.out, **shards, **{f"metric:{k}": v for k, v in metrics.items()})


if __name__ == "__main__":
    main()
