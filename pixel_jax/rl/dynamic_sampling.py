"""Dynamic sampling (the Pixel Reasoner code): groups whose shaped rewards r' are all equal have
zero advantages and teach nothing, so they are dropped and the batch is refilled from further
rollouts, up to a bounded number of rollout batches per step.

Host side, on numpy rows. A `Rollout` is one rollout batch of Q prompts × G samples (rows b·G …
b·G + G − 1 answer prompt b); `assemble` picks Q groups out of several rollouts — the informative
ones first, in the order sampled — and returns the learner's batch. When fewer than Q groups are
informative, uninformative ones fill the rest with their loss mask cleared: they keep the shapes
static and contribute neither to the loss nor to its token count.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from pixel_jax.rollout.trajectory import Trajectory, row_axes


@dataclasses.dataclass(frozen=True)
class Rollout:
    """One rollout batch on the host (whole: every process holds the same)."""

    trajectory: Trajectory  # [Q·G] rows, numpy leaves (positions [3, Q·G, S])
    task_reward: np.ndarray  # [Q·G] r(x, y_i)
    shaped_reward: np.ndarray  # [Q·G] r'(x, y_i) under the current α, β (what the advantages see)
    prompt_pixel_values: np.ndarray  # [Q, P0, patch_dim] each prompt's image (uint8 raw patches)
    prompt_grid_thw: np.ndarray  # [Q, 3]
    valid: np.ndarray  # [Q] False for a padding prompt (the end of a finite epoch)

    @property
    def group_size(self) -> int:
        return len(self.task_reward) // len(self.valid)

    def informative(self, tolerance: float = 1e-6) -> np.ndarray:
        """[Q] the valid groups whose r' are not all equal."""
        groups = self.shaped_reward.reshape(len(self.valid), self.group_size)  # [Q, G]
        return self.valid & (np.ptp(groups, axis=1) > tolerance)


def _rows(trajectory: Trajectory, rows: np.ndarray) -> Trajectory:
    """The rows `rows` of every array of `trajectory`."""
    return jax.tree.map(lambda x, axis: np.take(np.asarray(x), rows, axis=axis), trajectory, row_axes(trajectory))


def _concatenate(parts: Sequence[Trajectory]) -> Trajectory:
    """The rows of `parts`, one after the other."""
    return jax.tree.map(lambda axis, *xs: np.concatenate(xs, axis=axis), row_axes(parts[0]), *parts)


@dataclasses.dataclass(frozen=True)
class Assembled:
    """The learner's batch of Q groups and how it was filled."""

    trajectory: Trajectory  # [Q·G] rows
    task_reward: np.ndarray  # [Q·G]
    prompt_pixel_values: np.ndarray  # [Q, P0, patch_dim] each group's prompt image (uint8 raw patches)
    prompt_grid_thw: np.ndarray  # [Q, 3]
    informative_groups: int  # of the Q


def assemble(rollouts: Sequence[Rollout], num_groups: int) -> Assembled:
    """Q = `num_groups` groups out of `rollouts` (same shapes): informative ones first, in the order
    sampled, then uninformative valid ones with their loss mask cleared."""
    candidates = [(r, q, bool(informative)) for r, rollout in enumerate(rollouts)
                  for q, informative in enumerate(rollout.informative()) if rollout.valid[q]]
    chosen = sorted(candidates, key=lambda c: not c[2])[:num_groups]  # stable: sampling order kept
    if len(chosen) < num_groups:
        raise ValueError(f"the rollouts hold {len(chosen)} valid groups, fewer than the {num_groups} a batch needs")
    group_size = rollouts[0].group_size
    trajectories, rewards, pixels, grids = [], [], [], []
    for r, q, informative in chosen:
        rollout = rollouts[r]
        rows = np.arange(q * group_size, (q + 1) * group_size)
        trajectory = _rows(rollout.trajectory, rows)
        if not informative:
            trajectory = trajectory.replace(loss_mask=np.zeros_like(trajectory.loss_mask))
        trajectories.append(trajectory)
        rewards.append(rollout.task_reward[rows])
        pixels.append(rollout.prompt_pixel_values[q:q + 1])
        grids.append(rollout.prompt_grid_thw[q:q + 1])
    return Assembled(trajectory=_concatenate(trajectories), task_reward=np.concatenate(rewards),
                     prompt_pixel_values=np.concatenate(pixels), prompt_grid_thw=np.concatenate(grids),
                     informative_groups=sum(c[2] for c in chosen))
