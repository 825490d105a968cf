"""Two CPU processes on 127.0.0.1 run the sharded train step on a global batch assembled from their
slices (jax.distributed + gloo collectives) and end with the parameters of a single-process run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import multiprocess_worker as worker
from pixel_jax import distributed

TOL = 1e-5
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(tmp_path: Path) -> list[dict[str, np.ndarray]]:
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    outputs = [tmp_path / f"process{i}.npz" for i in range(2)]
    processes = [
        subprocess.Popen([sys.executable, worker.__file__, str(i), "2", str(port), str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i, out in enumerate(outputs)
    ]
    logs = [p.communicate(timeout=600)[0] for p in processes]
    for i, (p, log) in enumerate(zip(processes, logs)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-3000:]}"
    # only process 0 logs
    assert "[process 0] INFO multiprocess_worker: trained 2 steps" in logs[0]
    assert "trained" not in logs[1]
    return [dict(np.load(out)) for out in outputs]


@pytest.mark.slow
def test_two_processes_equal_a_single_process_run(tmp_path):
    per_process = run_two_processes(tmp_path)
    reference, reference_metrics = worker.train_two_steps(
        jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor")))
    assert reference.pop("rows").tolist() == [0, worker.ROWS]
    full = {key.split("|")[0]: value for key, value in reference.items()}  # one device: one whole shard each

    # each process loaded its own half of the global batch
    assert sorted(shards.pop("rows").tolist() for shards in per_process) == [[0, 2], [2, 4]]
    seen: dict[str, np.ndarray] = {}
    for shards in per_process:
        for key, value in shards.items():
            if key.startswith("metric:"):
                assert float(value) == pytest.approx(reference_metrics[key[len("metric:"):]], rel=1e-5), key
                continue
            path, block = key.split("|")
            index = tuple(slice(*map(int, b.split(":"))) for b in block.split(","))
            np.testing.assert_allclose(value, full[path][index], atol=TOL, rtol=0, err_msg=key)
            if key in seen:  # a replica of the same block on the other process: identical
                np.testing.assert_array_equal(value, seen[key], err_msg=key)
            seen[key] = value
    assert {key.split("|")[0] for key in seen} == set(full)  # every parameter is covered
    norm = "language_model.norm.weight|0:64"  # replicated: each process holds (and compared) its own copy
    assert norm in per_process[0] and norm in per_process[1]


LATE_GATHER_WORKER = """
import sys, time
import jax
import numpy as np
from pixel_jax import distributed
index, port, late_s = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
jax.distributed.initialize(f"127.0.0.1:{port}", 2, index)
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("rows",))
rows = jax.make_array_from_process_local_data(  # [4, 3]: rows 2i, 2i+1 on process i
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows")), np.full((2, 3), index, np.int32))
if index == 1:
    time.sleep(late_s)  # e.g. a slower compile or a busier host
gathered = distributed.gather_to_hosts({"rows": rows})["rows"]
assert gathered.tolist() == [[0] * 3, [0] * 3, [1] * 3, [1] * 3], gathered
print("gathered")
"""
GLOO_CONNECT_TIMEOUT_S = 30  # how long XLA:CPU's gloo collectives wait for a peer when they first connect


@pytest.mark.slow
def test_gather_to_hosts_waits_for_a_process_later_than_gloo_would():
    """A process arriving 35 s late: a bare process_allgather fails ("Gloo context initialization
    failed: DEADLINE_EXCEEDED"); gather_to_hosts meets at a barrier first and succeeds."""
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    processes = [subprocess.Popen([sys.executable, "-c", LATE_GATHER_WORKER, str(i), str(port),
                                   str(GLOO_CONNECT_TIMEOUT_S + 5)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in processes]
    for i, (p, log) in enumerate(zip(processes, logs)):
        assert p.returncode == 0 and "gathered" in log, f"process {i} failed:\n{log[-3000:]}"


@pytest.mark.parametrize("mode, environ, expected", [
    ("off", {"SLURM_NTASKS": "4"}, False),
    ("on", {}, True),
    ("auto", {}, False),
    ("auto", {"SLURM_NTASKS": "1"}, False),
    ("auto", {"SLURM_NTASKS": "4"}, True),
    ("auto", {"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ("auto", {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ("auto", {"PIXEL_JAX_DISTRIBUTED": "on"}, True),
    ("auto", {"PIXEL_JAX_DISTRIBUTED": "off", "SLURM_NTASKS": "4"}, False),
])
def test_should_initialize_follows_config_then_environment(mode, environ, expected):
    assert distributed.should_initialize(mode, environ) is expected


def test_should_initialize_rejects_unknown_modes():
    with pytest.raises(ValueError, match="distributed='yes' is not one of"):
        distributed.should_initialize("yes", {})
    with pytest.raises(ValueError, match="PIXEL_JAX_DISTRIBUTED='1' must be 'on' or 'off'"):
        distributed.should_initialize("auto", {"PIXEL_JAX_DISTRIBUTED": "1"})


def test_initialize_passes_the_launch_parameters_to_jax(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(args))
    monkeypatch.delenv("PIXEL_JAX_DISTRIBUTED", raising=False)
    assert distributed.initialize("off") is False
    assert distributed.initialize("on", "127.0.0.1:5000", 2, 1) is True
    assert calls == [("127.0.0.1:5000", 2, 1)]
