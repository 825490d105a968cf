"""Metric writers (JSONL + TensorBoard event files, resumed runs, process 0 only) and the progress bar."""

from __future__ import annotations

import io
import pathlib
import struct
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from pixel_jax import metrics


def events(workdir: pathlib.Path) -> list[event_pb2.Event]:
    """Every event of the TensorBoard files of a run, in file order (TFRecord framing)."""
    found = []
    for path in sorted((workdir / metrics.TENSORBOARD_DIR).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            found.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return found


def scalars(workdir: pathlib.Path) -> list[tuple[int, str, float]]:
    return [(e.step, v.tag, round(v.simple_value, 6)) for e in events(workdir) for v in e.summary.value]


def test_writes_scalars_with_step_and_wall_time(tmp_path):
    start = time.time()
    with metrics.MetricWriter(tmp_path, active=True) as writer:
        writer.write(1, {"reward": 0.5, "rapr": jnp.float32(0.25)})
        writer.write(2, {"reward": np.array([0.75]), "rapr": 0.125})
    records = metrics.read_metrics(tmp_path)
    assert [{k: v for k, v in r.items() if k != "wall_time"} for r in records] == [
        {"step": 1, "reward": 0.5, "rapr": 0.25}, {"step": 2, "reward": 0.75, "rapr": 0.125}]
    assert start <= records[0]["wall_time"] <= records[1]["wall_time"] <= time.time()
    assert scalars(tmp_path) == [(1, "reward", 0.5), (1, "rapr", 0.25), (2, "reward", 0.75), (2, "rapr", 0.125)]
    walltimes = [e.wall_time for e in events(tmp_path) if e.summary.value]
    assert walltimes[0] == pytest.approx(records[0]["wall_time"])


def test_a_resumed_run_drops_what_the_killed_run_logged_after_its_checkpoint(tmp_path):
    with metrics.MetricWriter(tmp_path, active=True) as writer:
        for step in (1, 2, 3):
            writer.write(step, {"loss": float(step)})
    with metrics.MetricWriter(tmp_path, start_step=2, active=True) as writer:  # restored from step 2's checkpoint
        writer.write(2, {"loss": 20.0})
    assert [(r["step"], r["loss"]) for r in metrics.read_metrics(tmp_path)] == [(1, 1.0), (2, 20.0)]
    purges = [e.step for e in events(tmp_path) if e.HasField("session_log")]
    assert purges == [2]  # TensorBoard discards the earlier file's events from step 2 on


def test_only_the_active_process_writes(tmp_path):
    with metrics.MetricWriter(tmp_path / "other", active=False) as writer:
        writer.write(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()


def test_non_scalar_metrics_are_rejected_by_name(tmp_path):
    with metrics.MetricWriter(tmp_path, active=True) as writer:
        with pytest.raises(ValueError, match=r"metric 'loss' must be a scalar, got shape \(2,\)"):
            writer.write(1, {"loss": np.array([1.0, 2.0])})


def test_progress_bar_shows_reward_accuracy_and_rapr():
    out = io.StringIO()
    bar = metrics.ProgressBar(10, initial=2, description="grpo", active=True, file=out)
    bar.update(5, {"reward": 0.5, "accuracy": jnp.float32(0.25), "rapr": 0.125, "loss": 3.0})
    bar.close()
    text = out.getvalue()
    assert "grpo" in text and "5/10" in text
    assert "reward=0.500, accuracy=0.250, rapr=0.125" in text
    assert "loss" not in text
