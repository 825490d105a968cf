"""CPU thread settings shared by the benchmark scripts."""

import argparse
import os

SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"


def add_thread_flags(parser: argparse.ArgumentParser) -> None:
    """--torch-threads and --xla-threads, one thread each by default (see `xla_kernel_threads`)."""
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads of transformers (see the module docstring)")
    parser.add_argument("--xla-threads", type=int, default=1,
                        help="1: XLA's CPU dot kernels on one thread, else on all cores (see the module docstring)")


def xla_kernel_threads(threads: int) -> str:
    """Runs XLA's CPU dot kernels on one thread when threads == 1 (the counterpart of
    `torch.set_num_threads(1)`); only takes effect before jax's first computation in the process.
    Returns the setting in force, for the table header: "1", "all", or "all (jax already running)".

    On a shared 2-core machine both libraries' worker threads spin against the other processes'
    (measured under load ~8: the sampler benchmark took 1.24 s with XLA's default threads and
    0.65 s with one), so one thread is the fair, and the faster, setting there.
    """
    from jax._src import xla_bridge  # the one place that knows whether the backend exists yet

    if threads != 1:
        return "all"
    if xla_bridge.backends_are_initialized():
        return "all (jax already running)"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_FLAG}".strip()
    return "1"
