"""Benchmark metrics from per-response records, against hand-computed values."""

import numpy as np
import pytest

from pixel_jax.data.example import Example
from pixel_jax.eval import metrics
from pixel_jax.eval.metrics import ResponseRecord
from pixel_jax.rl import scoring
from pixel_jax.rl.scoring import Scores


def record(id, correct, *, category="", group="", reward=0.0, n_calls=0, n_failed_calls=0):
    return ResponseRecord(id=id, category=category, group=group, correct=correct, reward=reward, n_calls=n_calls,
                          n_failed_calls=n_failed_calls, response="")


def test_accuracy_per_category_reward_rapr_calls_and_failed_call_rate():
    records = [record("a", 1.0, category="x", reward=1.0, n_calls=2, n_failed_calls=1),
               record("b", 0.0, category="x", reward=0.5),
               record("c", 1.0, category="y", reward=1.0, n_calls=1),
               record("d", 0.5, reward=0.25)]  # no category: counted overall only; 0.5 e.g. a VQA accuracy
    assert metrics.aggregate(records) == pytest.approx({
        "accuracy": (1 + 0 + 1 + 0.5) / 4, "accuracy/x": 0.5, "accuracy/y": 1.0,
        "reward": (1 + 0.5 + 1 + 0.25) / 4, "rapr": 2 / 4, "mean_calls": 3 / 4, "failed_call_rate": 1 / 3,
        "num_examples": 4.0})


def test_groups_weigh_equally_as_hr_bench_cycles():
    # cycle c0: single 1, 0; cross 1, 1 → 0.75 overall, single 0.5, cross 1
    # cycle c1: single 0; cross 1       → 0.5 overall,  single 0,   cross 1
    records = [record("0", 1.0, category="single", group="c0"), record("1", 0.0, category="single", group="c0"),
               record("2", 1.0, category="cross", group="c0"), record("3", 1.0, category="cross", group="c0"),
               record("4", 0.0, category="single", group="c1"), record("5", 1.0, category="cross", group="c1")]
    result = metrics.aggregate(records)
    assert result["accuracy"] == pytest.approx((0.75 + 0.5) / 2)  # a plain mean would give 4 / 6
    assert result["accuracy/single"] == pytest.approx((0.5 + 0.0) / 2)  # plain: 1 / 3
    assert result["accuracy/cross"] == pytest.approx(1.0)


def test_a_category_is_averaged_over_the_groups_that_hold_it():
    records = [record("0", 1.0, category="single", group="c0"), record("1", 0.0, category="cross", group="c0"),
               record("2", 0.0, category="cross", group="c1")]
    result = metrics.aggregate(records)
    assert result["accuracy/single"] == 1.0
    assert result["accuracy"] == pytest.approx((0.5 + 0.0) / 2)


def test_no_calls_gives_a_failed_call_rate_of_zero():
    result = metrics.aggregate([record("a", 1.0), record("b", 0.0)])
    assert (result["rapr"], result["mean_calls"], result["failed_call_rate"]) == (0.0, 0.0, 0.0)


def test_mixed_groups_and_no_records_are_errors():
    with pytest.raises(ValueError, match="mix examples with a group and without"):
        metrics.aggregate([record("a", 1.0, group="c0"), record("b", 1.0)])
    with pytest.raises(ValueError, match="no records"):
        metrics.aggregate([])


def _example(id, category):
    return Example(id=id, question="q?", answers=("a",), answer_metric="exact_match", category=category,
                   image=np.zeros((2, 2, 3), np.uint8))


def test_records_skip_the_padding_rows_of_a_partial_batch():
    first, last = _example("e0", "x"), _example("e1", "y")
    examples = (first, last, last)  # the pipeline pads with copies of the last example, valid False
    scores = Scores(task_reward=np.array([1.0, 0.0, 1.0], np.float32), correct=np.array([1.0, 0.0, 1.0], np.float32),
                    parts={}, turns=(("zoom", "\\boxed{a}"), ("\\boxed{b}",), ("\\boxed{a}",)))
    records = metrics.response_records(examples, np.array([True, True, False]), scores,
                                       n_calls=np.array([1, 0, 3]), n_failed_calls=np.array([1, 0, 3]))
    assert records == [
        ResponseRecord(id="e0", category="x", group="", correct=1.0, reward=1.0, n_calls=1, n_failed_calls=1,
                       response="zoom" + scoring.TURN_SEPARATOR + "\\boxed{a}"),
        ResponseRecord(id="e1", category="y", group="", correct=0.0, reward=0.0, n_calls=0, n_failed_calls=0,
                       response="\\boxed{b}")]
    assert metrics.aggregate(records)["failed_call_rate"] == 1.0  # the padding row's 3 failed calls are not counted


def test_records_need_one_entry_per_example():
    scores = Scores(task_reward=np.zeros(2, np.float32), correct=np.zeros(2, np.float32), parts={}, turns=(("",),) * 2)
    with pytest.raises(ValueError, match=r"n_calls must have shape \(2,\)"):
        metrics.response_records((_example("a", ""), _example("b", "")), np.ones(2, bool), scores,
                                 n_calls=np.zeros(3), n_failed_calls=np.zeros(2))
