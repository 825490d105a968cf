"""The numbers of a run: scalars to JSONL and TensorBoard, and a progress bar.

    with MetricWriter(workdir, start_step=step) as writer:       # process 0 writes, others skip
        writer.write(step, {"reward": 0.41, "rapr": 0.25, ...})   # scalars: floats, 0-d or 1-element arrays
    bar = ProgressBar(total_steps, initial=step)
    bar.update(step, metrics)                                     # "… reward=0.410 accuracy=0.375 rapr=0.250"

`<workdir>/metrics.jsonl` holds one record per write, `{"step": s, "wall_time": unix seconds,
name: value, …}`; `<workdir>/tensorboard/` the same scalars as event files (tensorboardX). A resumed
run (`start_step` = the restored step) first drops what the killed run logged at steps ≥ start_step
— those steps run again — from both, so every step is logged once.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import IO, Any, Mapping

import numpy as np
import tensorboardX
import tqdm

from pixel_jax.distributed import is_main_process

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
PROGRESS_KEYS = ("reward", "accuracy", "rapr")  # what the progress bar shows, when present


def scalar(name: str, value: Any) -> float:
    """A metric value as a Python float (a float, a 0-d or 1-element array)."""
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"metric {name!r} must be a scalar, got shape {array.shape}; reduce it before writing")
    return float(array.reshape(()))


class MetricWriter:
    """Writes scalar metrics of a run to JSONL and TensorBoard (see the module docstring)."""

    def __init__(self, workdir: str | pathlib.Path, *, start_step: int = 0, active: bool | None = None):
        self.active = is_main_process() if active is None else active
        if not self.active:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / METRICS_FILE
        if self.path.exists():  # records of steps a resumed run redoes (all of them at 0) go
            kept = [record for record in read_metrics(workdir) if record["step"] < start_step]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))
        self._jsonl = self.path.open("a")
        self._tensorboard = tensorboardX.SummaryWriter(str(workdir / TENSORBOARD_DIR),
                                                       purge_step=start_step)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One record of `metrics` at `step`, stamped with the wall time."""
        if not self.active:
            return
        wall_time = time.time()
        values = {name: scalar(name, value) for name, value in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "wall_time": wall_time, **values}) + "\n")
        self._jsonl.flush()  # a line per step, readable while the run goes on
        for name, value in values.items():
            self._tensorboard.add_scalar(name, value, int(step), walltime=wall_time)

    def flush(self) -> None:
        if self.active:
            self._jsonl.flush()
            self._tensorboard.flush()

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._tensorboard.close()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, float]]:
    """The records of `<workdir>/metrics.jsonl`, in the order written."""
    with (pathlib.Path(workdir) / METRICS_FILE).open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


class ProgressBar:
    """A tqdm bar over the steps of a run showing reward, accuracy and RaPR (process 0 only)."""

    def __init__(self, total: int, *, initial: int = 0, description: str = "", active: bool | None = None,
                 file: IO[str] | None = None):
        self._bar = tqdm.tqdm(total=total, initial=initial, desc=description, unit="step", dynamic_ncols=True,
                              disable=not (is_main_process() if active is None else active), file=file)

    def update(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Moves the bar to `step` and shows the PROGRESS_KEYS among `metrics`."""
        self._bar.set_postfix({name: f"{scalar(name, metrics[name]):.3f}" for name in PROGRESS_KEYS
                               if name in metrics}, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()
