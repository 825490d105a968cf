"""Task rewards r(x, y) of finished rollouts, on the host (METHOD.md §1, Groundlight's R).

The trajectory keeps the sampled token ids; nothing is re-tokenised. An assistant turn is a run of
consecutive sampled slots (`Trajectory.loss_mask`): the engine pauses after a call's close marker,
injects the result chunk (never sampled), and the next turn starts at the next sampled slot. The
first turn is preceded by the protocol's assistant prefix, which the prompt already holds (e.g.
Groundlight's "<think> Let me think step by step.") and which the format rubric reads.

Row b of a rollout with G samples per prompt answers example b // G (groups are contiguous).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import numpy as np

from pixel_jax.data.example import Example
from pixel_jax.processing.tokenizer import Tokenizer
from pixel_jax.rl import rewards
from pixel_jax.rollout.trajectory import Trajectory
from pixel_jax.tools.protocols import ToolProtocol


TURN_SEPARATOR = "\n[tool result]\n"  # between assistant turns in a response's text


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per response (B rows): r(x, y), whether the answer is correct, each weighted part, the text."""

    task_reward: np.ndarray  # [B] float32 r(x, y) = Σ_k w_k · part_k
    correct: np.ndarray  # [B] float32 the example's own answer metric (accuracy), whatever the weights
    parts: dict[str, np.ndarray]  # name → [B] float32, the parts the weights name
    turns: tuple[tuple[str, ...], ...]  # [B] the decoded assistant turns

    def response_text(self, row: int) -> str:
        """The assistant turns of one response, the tool results marked by TURN_SEPARATOR."""
        return TURN_SEPARATOR.join(self.turns[row])

    def row_parts(self, row: int) -> dict[str, float]:
        """The reward and its parts of one response (for the gallery)."""
        return {"reward": float(self.task_reward[row]), "correct": float(self.correct[row]),
                **{name: float(values[row]) for name, values in self.parts.items()}}


def assistant_turns(tokens: np.ndarray, sampled: np.ndarray, tok: Tokenizer, prefix: str = "") -> tuple[str, ...]:
    """The text of each run of sampled slots of one row (tokens [S], sampled [S] bool), special
    tokens (the end of turn) dropped; `prefix` opens the first turn. A row that sampled nothing
    has one empty turn."""
    sampled = np.asarray(sampled, bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], sampled.astype(np.int8), [0]])))  # run starts, ends
    runs = [tokens[start:end] for start, end in zip(edges[::2], edges[1::2])] or [tokens[:0]]
    texts = [tok.decode(run, skip_special_tokens=True) for run in runs]
    return (prefix + texts[0], *texts[1:])


def score_rollouts(trajectory: Trajectory, examples: Sequence[Example], *, group_size: int, tok: Tokenizer,
                   protocol: ToolProtocol, weights: Mapping[str, float]) -> Scores:
    """r(x, y_i) of every row (`rewards.score_response` under `weights`) and its correctness.

    examples: the B / G prompts of the rollout, in row order; each row's calls and failed calls
    come from the trajectory (the tool-use part reads them).
    """
    tokens, sampled, n_calls, n_errors = jax.device_get(
        (trajectory.tokens, trajectory.loss_mask, trajectory.n_calls, trajectory.n_errors))
    rows = tokens.shape[0]
    if rows != len(examples) * group_size:
        raise ValueError(f"the trajectory has {rows} rows but {len(examples)} examples × group_size "
                         f"{group_size} = {len(examples) * group_size} were given")
    weights = dict(weights)
    reward = np.zeros(rows, np.float32)
    correct = np.zeros(rows, np.float32)
    parts = {name: np.zeros(rows, np.float32) for name in weights}
    turns = []
    for row in range(rows):
        example = examples[row // group_size]
        response = rewards.Response(
            turns=assistant_turns(tokens[row], sampled[row], tok, protocol.assistant_prefix),
            protocol=protocol.name, gold_answers=example.answers, answer_metric=example.answer_metric,
            options=example.options, n_calls=int(n_calls[row]), n_failed_calls=int(n_errors[row]))
        reward[row], row_parts = rewards.score_response(response, weights)
        for name, value in row_parts.items():
            parts[name][row] = value
        correct[row] = rewards.REWARD_PARTS.get("correct")(response)
        turns.append(response.turns)
    return Scores(task_reward=reward, correct=correct, parts=parts, turns=tuple(turns))
