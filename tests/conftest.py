"""Test set-up: 8 fake CPU devices, float32 matmuls, one XLA compilation cache per test run, before jax
is imported anywhere."""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests build the same tiny programs again and again (a new closure, a new engine, a subprocess): the
# pytest-xdist workers of one run and the subprocesses they start inherit this variable, so they share
# compiled programs through one directory, removed when the run ends.
OWN_COMPILATION_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if OWN_COMPILATION_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="pixel_jax_tests_xla_cache_")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(items):
    """Modules with slow tests run first: pytest-xdist (--dist loadfile --no-loadscope-reorder) hands
    out modules in this order, so the minutes-long ones start at once instead of one of them keeping a
    worker busy at the end while the other has nothing left."""
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow_modules)


def pytest_sessionfinish(session):
    """The run's compilation cache goes when the run ends (in the process that made it, not a worker)."""
    if OWN_COMPILATION_CACHE and not hasattr(session.config, "workerinput"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
