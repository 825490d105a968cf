"""A benchmark's numbers from its responses: accuracy (overall and per sub-task), reward, RaPR, calls.

    records = response_records(batch.examples, batch.valid, scores, n_calls, n_failed_calls)
    metrics = aggregate(records)   # {"accuracy": …, "accuracy/<category>": …, "rapr": …, …}

One record per evaluated example (one greedy response each); the padding rows of a final partial
batch (`Batch.valid` False) are never recorded. The metrics (DATASETS.md):

  accuracy              mean of each example's own answer metric (`Scores.correct`: option / exact /
                        count match ∈ {0, 1}, VQA accuracy for TextVQA, ANLS for InfographicsVQA).
                        Examples that carry a `group` (HR-Bench: `cycle_category`, one order of the
                        options) follow the published protocol (VLMEvalKit `report_acc_hrbench`): the
                        accuracy within each group, averaged over the groups. Each group weighs the
                        same whatever its size; a sub-task is averaged over the groups that hold it.
  accuracy/<category>   the same over the examples of one sub-task (V* direct_attributes /
                        relative_position, HR-Bench single = FSP / cross = FCP, TallyQA simple /
                        complex, the synthetic task's fine_detail / counting / coarse).
  reward                mean r(x, y).
  rapr                  RaPR: the fraction of responses with at least one visual operation
                        (attempted: a failed call counts, as n_vo in the authors' code).
  mean_calls            mean attempted visual operations per response.
  failed_call_rate      failed calls / attempted calls over all responses (0 when none was attempted).
  num_examples          examples evaluated.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from pixel_jax.data.example import Example
from pixel_jax.rl.scoring import Scores


@dataclasses.dataclass(frozen=True)
class ResponseRecord:
    """One evaluated example and its response."""

    id: str
    category: str  # sub-task ("" when the dataset has none)
    group: str  # examples scored together (HR-Bench option-order cycle; "" when none)
    correct: float  # the example's answer metric ∈ [0, 1]
    reward: float  # r(x, y)
    n_calls: int  # attempted visual operations
    n_failed_calls: int
    response: str  # the assistant turns, joined by rl.scoring.TURN_SEPARATOR


def response_records(examples: Sequence[Example], valid: np.ndarray, scores: Scores, n_calls: np.ndarray,
                     n_failed_calls: np.ndarray) -> list[ResponseRecord]:
    """The records of one batch's valid rows (one response per example: group size 1).

    valid [B] bool (`Batch.valid`), scores of the B rows, n_calls / n_failed_calls [B] int.
    """
    rows = len(examples)
    for name, array in (("valid", valid), ("scores.correct", scores.correct), ("n_calls", n_calls),
                        ("n_failed_calls", n_failed_calls)):
        if np.shape(array) != (rows,):
            raise ValueError(f"{name} must have shape ({rows},) (one entry per example), got {np.shape(array)}")
    return [ResponseRecord(id=example.id, category=example.category, group=example.group,
                           correct=float(scores.correct[row]), reward=float(scores.task_reward[row]),
                           n_calls=int(n_calls[row]), n_failed_calls=int(n_failed_calls[row]),
                           response=scores.response_text(row))
            for row, example in enumerate(examples) if valid[row]]


def accuracy(records: Sequence[ResponseRecord]) -> float:
    """Mean correctness; with groups, the mean over groups of each group's mean (module docstring)."""
    grouped = {bool(record.group) for record in records}
    if len(grouped) > 1:
        raise ValueError("records mix examples with a group and without one; a benchmark either scores "
                         "every example within its group (HR-Bench cycles) or none")
    if grouped == {False}:
        return float(np.mean([record.correct for record in records]))
    by_group: dict[str, list[float]] = {}
    for record in records:
        by_group.setdefault(record.group, []).append(record.correct)
    return float(np.mean([np.mean(values) for values in by_group.values()]))


def aggregate(records: Sequence[ResponseRecord]) -> dict[str, float]:
    """The report's metrics (module docstring) of one evaluation's records."""
    if not records:
        raise ValueError("aggregate: no records (the evaluation read no valid examples)")
    n_calls = np.array([record.n_calls for record in records], np.int64)  # [R]
    n_failed = np.array([record.n_failed_calls for record in records], np.int64)  # [R]
    metrics = {"accuracy": accuracy(records)}
    for category in sorted({record.category for record in records} - {""}):
        metrics[f"accuracy/{category}"] = accuracy([record for record in records if record.category == category])
    metrics.update({
        "reward": float(np.mean([record.reward for record in records])),
        "rapr": float(np.mean(n_calls > 0)),
        "mean_calls": float(np.mean(n_calls)),
        "failed_call_rate": float(n_failed.sum() / n_calls.sum()) if n_calls.sum() else 0.0,
        "num_examples": float(len(records)),
    })
    return metrics
