"""`python -m pixel_jax.evaluate` as a user runs it: the report on the synthetic task, its gallery,
a clear error for missing weights, and a two-process run reporting what one process reports."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pixel_jax.data.example import Example
from pixel_jax.data.pipeline import Batch
from pixel_jax.eval import benchmarks
from pixel_jax.eval.metrics import ResponseRecord
from pixel_jax.rl.scoring import TURN_SEPARATOR
from pixel_jax.rl.scoring import Scores
from pixel_jax.tools.protocols import ToolId

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def evaluate(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixel_jax.evaluate", *flags], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=900)


def hand_built_report() -> benchmarks.EvalReport:
    """A report whose first batch holds 2 examples and 1 padding row, one zoom call in row 0."""
    corner = Example(id="q0", question="Which corner?", answers=("B",), answer_metric="multiple_choice",
                     options=("top left", "top right"), image=np.zeros((6, 8, 3), np.uint8))
    shape = Example(id="q1", question="Which shape?", answers=("disc", "circle"), answer_metric="exact_match",
                    image=np.zeros((8, 8, 3), np.uint8))
    original = np.zeros((3, 1, 10, 10, 3), np.uint8)  # [B, T, Hc, Wc, 3]
    original[0, 0, :6, :8] = 255
    batch = Batch(view=np.zeros((3, 1, 28, 56, 3), np.uint8), original=original,
                  original_size=np.array([[6, 8], [8, 8], [8, 8]], np.int32), original_scale=np.ones(3, np.float32),
                  num_frames=np.ones(3, np.int32), target_box=np.full((3, 4), np.nan, np.float32),
                  valid=np.array([True, True, False]), examples=(corner, shape, shape))
    trajectory = types.SimpleNamespace(
        n_calls=np.array([1, 0, 0]), call_errors=np.zeros((3, 1), np.int32), n_crops=np.array([1, 0, 0]),
        call_boxes=np.array([[[0, 0, 28, 28]]] * 3, np.float32), call_targets=np.ones((3, 1), np.int32),
        crops=np.zeros((3, 1, 4, 4, 3), np.uint8))
    scores = Scores(task_reward=np.array([1.0, 0.0, 0.0], np.float32), correct=np.array([1.0, 0.0, 0.0], np.float32),
                    parts={"correct": np.array([1.0, 0.0, 0.0], np.float32)},
                    turns=(("zoom", "\\boxed{B}"), ("\\boxed{4}",), ("\\boxed{4}",)))
    tables = types.SimpleNamespace(tool=ToolId.CROP_IMAGE, image_hw=(4, 4))
    records = (ResponseRecord("q0", "", "", 1.0, 1.0, 1, 0, "zoom" + TURN_SEPARATOR + "\\boxed{B}"),
               ResponseRecord("q1", "", "", 0.0, 0.0, 0, 0, "\\boxed{4}"))
    metrics = {"accuracy": 0.5, "rapr": 0.5, "num_examples": 2.0, "failed_call_rate": 1 / 3}
    return benchmarks.EvalReport(metrics, records, benchmarks.FirstBatch(batch, trajectory, scores, tables))


def test_the_report_writes_its_table_and_records(tmp_path):
    report = hand_built_report()
    assert report.table() == ("| metric | value |\n| --- | ---: |\n| accuracy | 0.5 |\n| rapr | 0.5 |\n"
                              "| num_examples | 2 |\n| failed_call_rate | 0.3333 |")
    assert report.write(tmp_path) == tmp_path / "report.json"
    assert json.loads((tmp_path / "report.json").read_text()) == {
        "metrics": report.metrics, "records": [dataclasses.asdict(record) for record in report.records]}
    assert (tmp_path / "report.md").read_text() == report.table() + "\n"


def test_gallery_entries_show_the_valid_rows_of_the_first_batch():
    entries = hand_built_report().gallery_entries(5)
    assert len(entries) == 2  # the padding row is not shown
    first = entries[0]
    assert first.question == "Which corner?\n(A) top left\n(B) top right"  # as the prompt asks it
    assert first.answer == "B" and entries[1].answer == "disc | circle"
    assert first.image.shape == (6, 8, 3) and first.image.min() == 255  # the original without its padding
    assert first.text == "zoom" + TURN_SEPARATOR + "\\boxed{B}"
    assert first.reward_parts == {"reward": 1.0, "correct": 1.0}
    # the view is 56 × 28 for an 8 × 6 original: the call's [0, 0, 28, 28] covers x 0-4, y 0-6, grown to square
    assert first.boxes[0].tolist() == [0.0, 0.0, 6.0, 6.0]
    assert len(hand_built_report().gallery_entries(1)) == 1


@pytest.mark.slow
def test_report_on_the_synthetic_task(tmp_path):
    # 5 examples in batches of 4 (the second padded with 3 invalid rows); one view size: one compilation
    result = evaluate("--config=configs/eval.py:runlocal", f"--config.workdir={tmp_path}", "--config.num_examples=5",
                      "--config.data.pipeline.batch_size=4", "--config.data.pipeline.view_sizes=((112, 112),)")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    metrics, records = report["metrics"], report["records"]

    assert [r["id"] for r in records] == [f"synthetic/eval/{i}" for i in range(5)]  # no padding row
    categories = {r["category"] for r in records}
    assert categories == {"coarse", "fine_detail"}  # examples 0-3 and 4 of the split
    for category in categories:
        of_category = [r["correct"] for r in records if r["category"] == category]
        assert metrics[f"accuracy/{category}"] == pytest.approx(np.mean(of_category))
    calls = np.array([r["n_calls"] for r in records])
    failed = np.array([r["n_failed_calls"] for r in records])
    assert metrics["accuracy"] == pytest.approx(np.mean([r["correct"] for r in records]))
    assert metrics["reward"] == pytest.approx(np.mean([r["reward"] for r in records]))
    assert metrics["rapr"] == pytest.approx(np.mean(calls > 0))
    assert metrics["mean_calls"] == pytest.approx(calls.mean())
    assert metrics["failed_call_rate"] == pytest.approx(failed.sum() / calls.sum() if calls.sum() else 0.0)
    assert metrics["num_examples"] == 5
    assert all(isinstance(r["response"], str) and r["response"] for r in records)

    table = (tmp_path / "report.md").read_text()
    assert "| accuracy/fine_detail |" in table and table.strip() in result.stdout  # printed too
    page = (tmp_path / "gallery" / "step_0000000" / "index.html").read_text()
    assert page.count("<section>") == 4  # the first batch's 4 valid rows
    assert sorted(p.name for p in (tmp_path / "gallery" / "step_0000000").glob("rollout*_input.png")) == [
        f"rollout{i}_input.png" for i in range(4)]


def test_missing_weights_name_config_model_init(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    result = evaluate(f"--config=configs/eval.py:runlocal,init={missing}", f"--config.workdir={tmp_path}")
    assert result.returncode != 0
    assert f"config.model.init={str(missing)!r}: no such folder" in result.stderr
    assert not (tmp_path / "report.json").exists()


TWO_PROCESS_WORKER = """
import sys
import jax
from absl import app
from pixel_jax import evaluate
index, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", 2, index)
sys.argv = ["evaluate", "--config=configs/eval.py:runlocal", f"--config.workdir={workdir}",
            "--config.num_examples=4", "--config.data.pipeline.batch_size=4"]
app.run(evaluate.main)
"""


@pytest.mark.slow
def test_two_processes_report_what_one_process_reports(tmp_path):
    """Every process reads the global batches, each device rolls out its rows, all score the whole."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    processes = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_WORKER, str(i), str(port), str(tmp_path / "two")],
                                  env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    outputs = [p.communicate(timeout=900) for p in processes]
    logs = "\n".join(f"--- process {i} (exit {p.returncode}):\n{stderr[-3000:]}"
                     for i, (p, (_, stderr)) in enumerate(zip(processes, outputs)))
    assert all(p.returncode == 0 for p in processes), logs  # both logs: a failure in one shows in the other
    single = subprocess.run([sys.executable, "-c", TWO_PROCESS_WORKER.replace(
        'jax.distributed.initialize(f"127.0.0.1:{port}", 2, index)', ""), "0", "0", str(tmp_path / "one")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    two, one = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("two", "one"))
    assert [r["id"] for r in two["records"]] == [r["id"] for r in one["records"]]
    assert [r["response"] for r in two["records"]] == [r["response"] for r in one["records"]]
    assert two["metrics"] == pytest.approx(one["metrics"])
