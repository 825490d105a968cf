"""The warm-start data set on disk: replayed trajectories, one file per batch, written once.

Synthesis (script → replay through the rollout engine) costs a whole rollout per batch, so the SFT
phase synthesises its examples once, like the paper's fixed warm-start set, and trains epochs over
the stored batches. `<dir>/<index>.npz` holds one `SFTBatch` (numpy); files are written to a
temporary name and renamed, so a killed synthesis leaves only whole files, and a rerun continues
with the first missing index. `complete` marks the end of synthesis.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from etils import epath

from pixel_jax.rollout.trajectory import Trajectory
from pixel_jax.sft.trainer import SFTBatch

_PROMPTS = ("prompt_pixel_values", "prompt_grid_thw")
_COMPLETE = "complete"


class TrajectoryStore:
    """The SFTBatches of `directory`, by index (see the module docstring)."""

    def __init__(self, directory: epath.PathLike):
        self.directory = epath.Path(directory)

    def _path(self, index: int) -> epath.Path:
        return self.directory / f"{index:06d}.npz"

    def __len__(self) -> int:
        """Whole batches stored, 0 … len − 1 (written in order)."""
        count = 0
        while self._path(count).exists():
            count += 1
        return count

    @property
    def complete(self) -> bool:
        return (self.directory / _COMPLETE).exists()

    def mark_complete(self) -> None:
        if not len(self):
            raise ValueError(f"{self.directory}: synthesis stored no batch (is the split empty?)")
        (self.directory / _COMPLETE).write_text(f"{len(self)}\n")

    def write(self, index: int, batch: SFTBatch) -> None:
        """Stores batch `index` atomically (a process killed mid-write leaves no file of that index)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: np.asarray(getattr(batch.trajectory, f.name)) for f in dataclasses.fields(Trajectory)
                  if f.name != "prompt_len" and getattr(batch.trajectory, f.name) is not None}
        arrays.update({name: np.asarray(getattr(batch, name)) for name in _PROMPTS})
        arrays["prompt_len"] = np.asarray(batch.trajectory.prompt_len)
        temporary = self.directory / f".{index:06d}.{os.getpid()}.npz"
        with temporary.open("wb") as file:
            np.savez(file, **arrays)
        temporary.rename(self._path(index))

    def read(self, index: int) -> SFTBatch:
        with self._path(index).open("rb") as file, np.load(file) as arrays:
            fields = {name: arrays[name] for name in arrays.files}
        prompts = {name: fields.pop(name) for name in _PROMPTS}
        prompt_len = int(fields.pop("prompt_len"))
        return SFTBatch(trajectory=Trajectory(**fields, prompt_len=prompt_len), **prompts)

    def epoch_order(self, epoch: int, seed: int) -> np.ndarray:
        """The batch indices of `epoch`, a permutation drawn from (seed, epoch)."""
        return np.random.default_rng((seed, epoch)).permutation(len(self))
