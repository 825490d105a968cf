"""Multi-host runs on JAX's own multi-controller runtime: one process per host, same program.

`initialize(config.distributed)` starts the runtime when the config or the environment asks for
it (`should_initialize`); after that `jax.devices()` lists every device of every host,
`sharding.make_mesh` spans them all, and each process loads its rows of the batch
(`sharding.process_rows`) from which `sharding.global_batch` assembles the global one. Only
process 0 writes logs (`configure_logging`); checkpoints are written collectively by every process.
CPU processes exchange data through gloo (`jax_cpu_collectives_implementation`, the default in
jax 0.10), so a multi-process run can be rehearsed on one machine.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

MODES = ("auto", "on", "off")
QUIET_LIBRARIES = ("absl", "jax", "orbax")  # loggers kept to warnings by configure_logging
GATHER_BARRIER_TIMEOUT_S = 3600  # how long gather_to_hosts waits for the slowest process
_gathers = itertools.count()  # each gather's barrier needs its own name; every process counts alike


def should_initialize(mode: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether to start the runtime for `mode` (config.distributed).

    "on" / "off" decide. "auto" asks the environment: PIXEL_JAX_DISTRIBUTED=on|off when set (the
    launch scripts set it), else whether a launcher started several processes:
    JAX_COORDINATOR_ADDRESS set, srun with SLURM_NTASKS > 1, or mpirun with OMPI_COMM_WORLD_SIZE > 1.
    """
    if mode not in MODES:
        raise ValueError(f"distributed={mode!r} is not one of {MODES}")
    if mode == "auto" and "PIXEL_JAX_DISTRIBUTED" in environ:
        mode = environ["PIXEL_JAX_DISTRIBUTED"]
        if mode not in ("on", "off"):
            raise ValueError(f"PIXEL_JAX_DISTRIBUTED={mode!r} must be 'on' or 'off'")
    if mode != "auto":
        return mode == "on"
    return (
        "JAX_COORDINATOR_ADDRESS" in environ
        or int(environ.get("SLURM_NTASKS", "1")) > 1
        or int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )


def initialize(
        mode: str = "auto",
        coordinator_address: str | None = None,
        num_processes: int | None = None,
        process_id: int | None = None,
) -> bool:
    """Starts the multi-controller runtime when `should_initialize(mode)`; True if it did.

    Unset arguments are found by jax: JAX_COORDINATOR_ADDRESS, or the cluster's own environment
    (Cloud TPU pods, SLURM, Open MPI, Kubernetes). Must run before anything touches a device.
    """
    if not should_initialize(mode):
        return False
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def is_main_process() -> bool:
    return jax.process_index() == 0


def configure_logging(level: int = logging.INFO) -> None:
    """Process 0 logs at `level`, every other process only errors: one copy of each message per run.
    The libraries' own chatter (orbax through absl, jax) is kept to warnings."""
    for library in QUIET_LIBRARIES:  # first: the process index below starts the backends, which log
        logging.getLogger(library).setLevel(logging.WARNING)
    main = is_main_process()
    logging.basicConfig(format=f"%(asctime)s [process {jax.process_index()}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level if main else logging.ERROR)
    for library in QUIET_LIBRARIES if not main else ():
        logging.getLogger(library).setLevel(logging.ERROR)


def gather_to_hosts(tree):
    """`tree` of global arrays whole, as numpy, on every process. Every process must call it.

    The processes first meet at a barrier of the coordination service (up to
    GATHER_BARRIER_TIMEOUT_S), then gather. Without it a run can fail at random: XLA:CPU's gloo
    collectives give a peer only 30 s to arrive when they first connect, and one process is often
    further behind than that (it compiled more slowly, its host is busier).
    """
    if jax.process_count() > 1:
        # imported here: importing orbax logs, which would preempt configure_logging's format
        from orbax.checkpoint import multihost as orbax_multihost

        barrier = orbax_multihost.get_barrier_sync_fn()
        barrier(key=f"pixel_jax.gather_to_hosts.{next(_gathers)}", timeout_ms=GATHER_BARRIER_TIMEOUT_S * 1000)
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)
