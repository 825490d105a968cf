"""Task rewards of finished rollouts: turns split at the injected results, examples by group."""

import numpy as np
import pytest

from pixel_jax.data.example import Example
from pixel_jax.processing.tokenizer import load_tokenizer
from pixel_jax.rl import scoring
from pixel_jax.rollout.trajectory import Trajectory
from pixel_jax.tools.protocols import PROTOCOLS

TOK = load_tokenizer()
HERMES, GROUNDLIGHT = PROTOCOLS.get("hermes"), PROTOCOLS.get("groundlight")
CALL = '<tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [0.1, 0.2, 0.5, 0.6], "target_image": 1}}\n</tool_call>'


def _trajectory(rows: list[list[tuple[str, bool]]], n_calls, n_errors) -> Trajectory:
    """Rows of (text, sampled) pieces, tokenised and laid out left to right, right-padded."""
    token_rows, sampled_rows = [], []
    for pieces in rows:
        tokens, sampled = [], []
        for text, is_sampled in pieces:
            ids = TOK.encode(text)
            tokens += ids
            sampled += [is_sampled] * len(ids)
        token_rows.append(tokens)
        sampled_rows.append(sampled)
    width = max(map(len, token_rows))
    tokens = np.zeros((len(rows), width), np.int32)
    sampled = np.zeros((len(rows), width), bool)
    for row, (ids, mask) in enumerate(zip(token_rows, sampled_rows)):
        tokens[row, : len(ids)], sampled[row, : len(mask)] = ids, mask
    zeros = np.zeros(len(rows), np.int32)
    return Trajectory(
        tokens=tokens, positions=np.zeros((3, *tokens.shape), np.int32), slot_valid=tokens > 0, loss_mask=sampled,
        logprobs=np.zeros(tokens.shape, np.float32), temperature=np.ones(tokens.shape, np.float32),
        crops=np.zeros((len(rows), 1, 28, 28, 3), np.uint8), n_crops=zeros, n_calls=np.asarray(n_calls),
        n_errors=np.asarray(n_errors), call_errors=np.zeros((len(rows), 1), np.int32),
        call_boxes=np.zeros((len(rows), 1, 4), np.float32), call_targets=zeros[:, None], finish=zeros,
        response_length=sampled.sum(axis=1), prompt_len=0)


def test_turns_are_the_runs_of_sampled_slots():
    prompt = ("<|im_start|>user\nWhat colour?<|im_end|>\n<|im_start|>assistant\n", False)
    result = ("<|im_end|>\n<|im_start|>user\nHere is the cropped image<|im_end|>\n<|im_start|>assistant\n", False)
    trajectory = _trajectory([[prompt, ("I zoom.\n" + CALL, True), result, ("It is \\boxed{red}.<|im_end|>", True)]],
                             n_calls=[1], n_errors=[0])
    tokens, sampled = np.asarray(trajectory.tokens[0]), np.asarray(trajectory.loss_mask[0])
    assert scoring.assistant_turns(tokens, sampled, TOK) == ("I zoom.\n" + CALL, "It is \\boxed{red}.")
    assert scoring.assistant_turns(tokens, np.zeros_like(sampled), TOK, prefix="<think>") == ("<think>",)


def test_rewards_follow_the_examples_of_each_group_and_the_weights():
    red = Example(id="a", question="What colour?", answers=("red",), answer_metric="exact_match",
                  image=np.zeros((4, 4, 3), np.uint8))
    two = Example(id="b", question="How many?", answers=("2",), answer_metric="counting",
                  image=np.zeros((4, 4, 3), np.uint8))
    responses = ["\\boxed{red}", "\\boxed{blue}", "\\boxed{two}", "no answer"]  # G = 2: rows 0-1 → a, 2-3 → b
    trajectory = _trajectory([[("q", False), (text, True)] for text in responses], n_calls=[1, 0, 2, 2],
                             n_errors=[0, 0, 1, 2])
    scores = scoring.score_rollouts(trajectory, [red, two], group_size=2, tok=TOK, protocol=HERMES,
                                    weights={"correct": 1.0, "tool": 0.5})
    np.testing.assert_array_equal(scores.correct, [1, 0, 1, 0])
    np.testing.assert_array_equal(scores.parts["tool"], [1, 0, 0.5, 0])  # successful / attempted calls
    np.testing.assert_allclose(scores.task_reward, [1.5, 0, 1.25, 0])
    assert scores.row_parts(2) == {"reward": 1.25, "correct": 1.0, "tool": 0.5}
    assert scores.turns[3] == ("no answer",)


def test_groundlight_turns_start_with_the_prompt_prefix():
    example = Example(id="a", question="Sign?", answers=("stop",) * 10, answer_metric="vqa",
                      image=np.zeros((4, 4, 3), np.uint8))
    trajectory = _trajectory([[("q", False), ("</think>\n<answer>stop</answer>", True)]], n_calls=[0], n_errors=[0])
    scores = scoring.score_rollouts(trajectory, [example], group_size=1, tok=TOK, protocol=GROUNDLIGHT,
                                    weights={"format": 1.0})
    assert scores.turns[0][0].startswith(GROUNDLIGHT.assistant_prefix)
    assert scores.parts["format"][0] == pytest.approx(1.0)  # <think> … </think> then one <answer>
    assert scores.correct[0] == 1.0


def test_row_count_must_match_the_examples():
    trajectory = _trajectory([[("x", True)]] * 3, n_calls=[0] * 3, n_errors=[0] * 3)
    example = Example(id="a", question="?", answers=("x",), answer_metric="exact_match", image=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="3 rows but 1 examples × group_size 2"):
        scoring.score_rollouts(trajectory, [example], group_size=2, tok=TOK, protocol=HERMES, weights={"correct": 1})
