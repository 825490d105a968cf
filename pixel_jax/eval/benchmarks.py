"""A benchmark through the rollout engine: one response per example, scored, aggregated, reported.

    evaluator = Evaluator(run, model, config.rollout, config.reward.weights)   # compiles once per bucket
    report = evaluator(model, run.batches(config.data, num_examples=config.num_examples))
    report.metrics        # {"accuracy": …, "accuracy/<category>": …, "rapr": …} (eval/metrics.py)
    report.write(workdir) # report.json (metrics + one record per example) and report.md (the table)

Decoding is whatever the rollout section says (evaluation configs: greedy, T = 0). The engine is
built from the first model's graph and reused: later calls may pass a new model object of the same
graph (a training run's current parameters) without recompiling. In a multi-process run every
process reads the same global batches (`Experiment.batches`), the rollout is one program over all
devices, and every process scores the whole rollout: all hold the same report.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Iterable, Mapping

import jax
import ml_collections
import numpy as np

from pixel_jax.data.pipeline import Batch
from pixel_jax.eval import metrics as metrics_lib
from pixel_jax.eval.metrics import ResponseRecord
from pixel_jax.experiment import Experiment
from pixel_jax.gallery import GalleryEntry, batch_entries
from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.rl.scoring import Scores, score_rollouts
from pixel_jax.rollout.tool_step import ToolTables
from pixel_jax.rollout.trajectory import Trajectory

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"


@dataclasses.dataclass(frozen=True)
class FirstBatch:
    """What the gallery shows: the first batch, this process's rows of its rollout and their scores."""

    batch: Batch
    trajectory: Trajectory  # host numpy, this process's rows
    scores: Scores
    tables: ToolTables


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """The metrics of one evaluation, its records (one per example) and its first batch's rollouts."""

    metrics: dict[str, float]
    records: tuple[ResponseRecord, ...]
    first_batch: FirstBatch = dataclasses.field(repr=False)

    def table(self) -> str:
        """The metrics as a markdown table (4 decimals, trailing zeros dropped: 0.375, 1000)."""
        rows = [f"| {name} | {_decimal(value)} |" for name, value in self.metrics.items()]
        return "\n".join(["| metric | value |", "| --- | ---: |", *rows])

    def write(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Writes `<directory>/report.json` ({"metrics", "records"}) and `report.md`; returns the JSON path."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / REPORT_JSON
        path.write_text(json.dumps({"metrics": self.metrics,
                                    "records": [dataclasses.asdict(record) for record in self.records]}, indent=1))
        (directory / REPORT_MARKDOWN).write_text(self.table() + "\n")
        return path

    def gallery_entries(self, k: int) -> list[GalleryEntry]:
        """Gallery entries (`pixel_jax.gallery`) of the first `k` valid rows of the first batch this
        process evaluated (fewer when it holds fewer)."""
        first = self.first_batch
        rows = np.flatnonzero(first.batch.valid)[:k]
        return batch_entries(first.trajectory, first.batch, first.scores, first.tables, rows=[int(r) for r in rows])


class Evaluator:
    """Rolls out, scores and aggregates a stream of pipeline batches (see the module docstring)."""

    def __init__(self, run: Experiment, model: qvl.Qwen2_5_VL, rollout: ml_collections.ConfigDict,
                 weights: Mapping[str, float]):
        """rollout: a `config.rollout` section (its sampling decides greedy decoding); weights: the
        reward parts of r(x, y) (`config.reward.weights`)."""
        self.run = run
        self.rollout = rollout
        self.weights = dict(weights)
        self.engine = run.engine(model, rollout)

    def __call__(self, model: qvl.Qwen2_5_VL, batches: Iterable[Batch], rng: jax.Array | None = None) -> EvalReport:
        """One response per example of `batches` (row b of batch i sampled from fold_in(rng, i); default
        key 0), the valid rows scored and aggregated."""
        rng = jax.random.key(0) if rng is None else rng
        records, first_batch = [], None
        for index, batch in enumerate(batches):
            inputs = self.run.rollout_inputs(batch, self.rollout)
            trajectory = self.run.host_trajectory(self.engine(model, inputs, jax.random.fold_in(rng, index)))
            scores = score_rollouts(trajectory, batch.examples, group_size=1, tok=self.run.tok,
                                    protocol=self.run.protocol, weights=self.weights)
            records += metrics_lib.response_records(batch.examples, batch.valid, scores, trajectory.n_calls,
                                                    trajectory.n_errors)
            if first_batch is None:
                first_batch = FirstBatch(batch, trajectory, scores, self.run.tables)
        if first_batch is None:
            raise ValueError("Evaluator: `batches` yielded no batch (an empty evaluation split?)")
        return EvalReport(metrics_lib.aggregate(records), tuple(records), first_batch)


def _decimal(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".")
