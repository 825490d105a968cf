"""A run's checkpoints (orbax): the train state and the data iterator, keep-N and best, HF export.

Layout of `<workdir>/checkpoints/<step>/`:
    state          the train state pytree as it is (parameters, optimizer state, curiosity
                   multipliers α and β, the RNG key — typed keys too —, step), sharded arrays
                   written by every process
    data_iterator  each process's grain iterator state, `process_<i>-of-<n>.json` (its `get_state()`)
    metrics        with `best_metric`: the metrics the save was ranked by

Exact resume: restoring the state and the iterator of step s and continuing gives the run that
never stopped (tests/test_checkpoint.py kills a process after a save and compares the parameters).

Atomic: orbax writes `<step>.orbax-checkpoint-tmp-<time>` and renames it once every item is
complete, so a save killed half-way leaves a temporary directory that no restore sees and that
the next `Checkpoints` on the directory deletes. Asynchronous: `save` returns once the arrays are
copied off the devices; the files are written in the background (`wait_until_finished` blocks).
Kept: the latest `keep` steps, plus the best step by `best_metric` when one is named.
"""

from __future__ import annotations

from typing import Any, Mapping

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from pixel_jax import distributed
from pixel_jax.models.qwen2_5_vl import save_pretrained

CHECKPOINT_DIR = "checkpoints"  # under a run's work directory
STATE, DATA_ITERATOR = "state", "data_iterator"
BEST_MODES = ("max", "min")

PyTree = Any


class Checkpoints:
    """Saves and restores the checkpoints of one directory (see the module docstring)."""

    def __init__(self, directory: epath.PathLike, *, keep: int = 3, best_metric: str = "", best_mode: str = "max",
                 async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep={keep} must be >= 1 (the latest checkpoint is what a resume reads)")
        if best_mode not in BEST_MODES:
            raise ValueError(f"best_mode={best_mode!r} must be one of {BEST_MODES}")
        self.best_metric = best_metric
        policies = [checkpoint_managers.LatestN(n=keep)]
        best_fn = None
        if best_metric:
            best_fn = lambda metrics: float(metrics[best_metric])
            policies.append(checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                                      keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies), best_fn=best_fn,
            best_mode=best_mode, enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        # absolute: orbax's array writer rejects a relative path (e.g. the default workdir runs/…)
        self._manager = ocp.CheckpointManager(epath.Path(directory).absolute(), options=options)

    @classmethod
    def for_run(cls, workdir: epath.PathLike, settings: Mapping[str, Any]) -> "Checkpoints":
        """`<workdir>/checkpoints` with a config's `checkpoint` section (keep, best_metric, best_mode, async_save)."""
        return cls(epath.Path(workdir) / CHECKPOINT_DIR, keep=settings["keep"], best_metric=settings["best_metric"],
                   best_mode=settings["best_mode"], async_save=settings["async_save"])

    @property
    def directory(self) -> epath.Path:
        return self._manager.directory

    def save(self, step: int, state: PyTree, *, data_iterator: grain.DatasetIterator | None = None,
             metrics: Mapping[str, float] | None = None, force: bool = False) -> bool:
        """Starts saving `state` (and the iterator's current state) as `step`; False if the step exists.

        `metrics` rank the save for `best_metric` (they must contain it); a save without metrics is
        kept only while it is among the latest `keep`.
        """
        if metrics is not None and self.best_metric and self.best_metric not in metrics:
            raise ValueError(f"metrics {sorted(metrics)} lack best_metric={self.best_metric!r}")
        items = {STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items[DATA_ITERATOR] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)

    def restore(self, abstract_state: PyTree, *, step: int | None = None,
                data_iterator: grain.DatasetIterator | None = None) -> PyTree:
        """The state saved at `step` (default: the latest), shaped, typed and sharded like
        `abstract_state` (arrays or ShapeDtypeStructs with shardings); `data_iterator` is moved to
        the position it had at that save."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no finished checkpoint to restore")
        items = {STATE: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state))}
        if data_iterator is not None:
            items[DATA_ITERATOR] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))[STATE]

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the best `best_metric` among those kept (None without best_metric or metrics)."""
        return self._manager.best_step() if self.best_metric else None  # without, orbax answers the latest

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, then releases the manager."""
        self._manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ---------------------------------------------------------------------- initialisation
def checkpoint_directory(path: epath.PathLike) -> epath.Path | None:
    """Where the finished checkpoints under `path` are: `path` itself or `path/checkpoints` (a run's
    work directory); None when neither holds a finished step."""
    path = epath.Path(path).absolute()
    for candidate in (path, path / CHECKPOINT_DIR):
        if candidate.is_dir() and ocp.utils.checkpoint_steps(candidate):
            return candidate
    return None


def restore_params(path: epath.PathLike, abstract_params: PyTree, *, step: int | None = None) -> PyTree:
    """Only the `params` of a saved train state (e.g. a GRPO run starting from its SFT phase).

    path: a checkpoint directory or a run's work directory; step: default the latest.
    abstract_params: the parameters' structure with shapes, dtypes and shardings to restore to.
    """
    directory = checkpoint_directory(path)
    if directory is None:
        raise FileNotFoundError(f"{path}: no finished checkpoint in it or in its {CHECKPOINT_DIR}/")
    step = max(ocp.utils.checkpoint_steps(directory)) if step is None else step
    target = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)}
    restored = ocp.PyTreeCheckpointer().restore(
        directory / str(step) / STATE,
        args=ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                    partial_restore=True))
    return restored["params"]


# ------------------------------------------------------------------------------ export
def export_huggingface(path: epath.PathLike, graphdef: nnx.GraphDef, *states: nnx.State, dtype=None) -> None:
    """Writes the model `nnx.merge(graphdef, *states)` as a Hugging Face folder (config.json +
    model.safetensors that transformers loads). Every process calls it (the parameters are gathered
    across hosts); process 0 writes."""
    gathered = distributed.gather_to_hosts(states)  # host numpy on every process
    if jax.process_index() == 0:
        save_pretrained(nnx.merge(graphdef, *gathered), path, dtype=dtype)
