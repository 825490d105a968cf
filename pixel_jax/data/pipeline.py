"""Grain input pipelines: shuffled, sharded per host, batched in fixed-shape buckets, resumable.

    source = example_source("synthetic", "train", synthetic=SyntheticConfig(), num_examples=10**5)
    dataset = build_dataset(source, PipelineConfig(batch_size=8, canvas_size=(1120, 1120)))
    iterator = iter(dataset)
    batch = next(iterator)              # a Batch
    state = iterator.get_state()        # JSON-serialisable: save it with the checkpoint
    iterator.set_state(state)           # a resumed run continues with the next batch

Order. Examples are read by index from a random-access source (the synthetic task or a
`tfds.data_source`, whose stored order is a hash of the keys, so index order is not file order:
nothing here relies on it, results are keyed by `Example.id`). With `shuffle`, epoch e reads a
permutation drawn from (seed, e); host `shard_index` of `shard_count` (default: jax.process_index
and jax.process_count) takes every shard_count-th example of it.

Static shapes. The compiled rollout needs fixed shapes, so every example goes to a bucket: the
model's view is the picture resized (PIL bicubic) to the entry of `view_sizes` closest in aspect
ratio; the full-resolution original, which the crop tool reads, is placed top-left on a zero canvas
of `canvas_size` (shrunk to fit when larger; its true size and scale are recorded). A video fills
`max_frames` frame slots, an image one. A batch holds `batch_size` examples of one bucket: shapes
depend only on (T, view size), one compilation per bucket. At the end of a finite epoch the
remaining partial buckets are flushed, padded with copies marked `valid = False`.

Resumption. The iterator state is the position of the oldest example still waiting in a bucket
plus which later examples already left in a batch; a restore re-reads (re-decodes) the examples
since that position, so a rarely filled bucket makes restores slower, never different.
"""

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Optional

import grain
import jax
import numpy as np
import PIL.Image

from pixel_jax.data import builders
from pixel_jax.data.example import Example, from_record
from pixel_jax.data.synthetic import VIEW_MULTIPLE, SyntheticConfig, SyntheticSource


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int
    canvas_size: tuple[int, int]  # (H, W) of the padded full-resolution original
    view_sizes: tuple[tuple[int, int], ...] = ((224, 224), (224, 280), (280, 224))  # (H, W)
    max_frames: int = 16  # frame slots of a video batch (an image batch has 1)
    seed: int = 0
    shuffle: bool = True
    num_epochs: Optional[int] = None  # None: repeat forever
    shard_index: Optional[int] = None  # None: jax.process_index()
    shard_count: Optional[int] = None  # None: jax.process_count()
    num_threads: int = 2  # threads decoding and resizing examples
    prefetch_buffer_size: int = 8  # examples prepared ahead (each holds a full canvas)

    def __post_init__(self):
        if self.batch_size < 1 or self.max_frames < 1:
            raise ValueError(f"batch_size and max_frames must be >= 1, got {self.batch_size} "
                             f"and {self.max_frames}")
        if len(self.canvas_size) != 2 or min(self.canvas_size) < 1:
            raise ValueError(f"canvas_size must be a positive (H, W), got {self.canvas_size}")
        if not self.view_sizes or any(len(hw) != 2 or min(hw) < VIEW_MULTIPLE
                                      or any(v % VIEW_MULTIPLE for v in hw)
                                      for hw in self.view_sizes):
            raise ValueError(f"view_sizes must be (H, W) pairs of positive multiples of "
                             f"{VIEW_MULTIPLE}, got {self.view_sizes}")
        ratios = [h / w for h, w in self.view_sizes]
        if len(set(ratios)) != len(ratios):
            raise ValueError(f"view_sizes must have distinct aspect ratios (an image goes to the "
                             f"closest one), got {self.view_sizes}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")


@dataclasses.dataclass(frozen=True)
class Batch:
    """`batch_size` examples of one bucket. B batch, T frame slots (1 for images), (Hv, Wv) the
    bucket's view size, (Hc, Wc) the canvas size."""

    view: np.ndarray  # [B, T, Hv, Wv, 3] uint8, the model's input
    original: np.ndarray  # [B, T, Hc, Wc, 3] uint8, full resolution, top-left, zero padded
    original_size: np.ndarray  # [B, 2] int32, (H, W) of the original on the canvas
    original_scale: np.ndarray  # [B] float32, canvas pixels per source pixel (1 unless shrunk)
    num_frames: np.ndarray  # [B] int32, real frames (1 for an image)
    target_box: np.ndarray  # [B, 4] float32, Example.target_box on the canvas; NaN when none
    valid: np.ndarray  # [B] bool, False for the padding of a final partial batch
    examples: tuple[Example, ...]  # [B] the examples (text fields, answers, full pictures)


@dataclasses.dataclass(frozen=True)
class _Row:
    """One example, resized and padded: the arrays of one batch row and its bucket."""

    bucket: tuple[int, int, int]  # (T, Hv, Wv)
    view: np.ndarray  # [T, Hv, Wv, 3]
    original: np.ndarray  # [T, Hc, Wc, 3]
    original_size: tuple[int, int]
    original_scale: float
    num_frames: int
    target_box: np.ndarray  # [4]
    example: Example


# ------------------------------------------------------------------------------ sources


class RecordSource(Sequence):
    """The Examples of stored records (a `tfds.data_source`: bytes text, encoded images)."""

    def __init__(self, records: Sequence[dict]):
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Example:
        return from_record(self._records[index])


def example_source(name: str, split: str, *, data_dir=None, manual_dir=None,
                   synthetic: Optional[SyntheticConfig] = None,
                   num_examples: Optional[int] = None) -> Sequence[Example]:
    """Random access to the Examples of dataset `name`: "synthetic" (`num_examples` of split
    "train" or "eval" under `synthetic`, default SyntheticConfig()) or a TFDS builder name of
    `pixel_jax.data.builders` ("hr_bench/8k" picks a config), read from `data_dir` (and first
    prepared from `manual_dir` when given)."""
    if name == "synthetic":
        if num_examples is None:
            raise ValueError("example_source('synthetic', ...) needs num_examples")
        return SyntheticSource(synthetic or SyntheticConfig(), split, num_examples)
    if data_dir is None:
        raise ValueError(f"example_source({name!r}, ...) needs the TFDS data_dir")
    return RecordSource(builders.load_source(name, split, data_dir=data_dir,
                                             manual_dir=manual_dir))


# ------------------------------------------------------------------------------ rows


def view_size(height: int, width: int, view_sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (H, W) of `view_sizes` closest to the picture in log aspect ratio (first on ties)."""
    ratio = math.log(height / width)
    return min(view_sizes, key=lambda hw: abs(math.log(hw[0] / hw[1]) - ratio))


def _resize(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w, 3] uint8 → [height, width, 3] uint8, PIL bicubic (as the HF image processor)."""
    if picture.shape[:2] == (height, width):
        return picture
    return np.asarray(PIL.Image.fromarray(picture).resize((width, height),
                                                          PIL.Image.Resampling.BICUBIC))


def prepare_row(example: Example, config: PipelineConfig) -> _Row:
    """The fixed-shape arrays of one example (see the module docstring)."""
    frames = example.image[None] if example.frames is None else example.frames  # [T, H, W, 3]
    count, height, width = frames.shape[:3]
    slots = 1 if example.frames is None else config.max_frames
    if count > slots:
        raise ValueError(f"example {example.id!r} has {count} frames, more than "
                         f"PipelineConfig.max_frames={config.max_frames}")
    view_h, view_w = view_size(height, width, config.view_sizes)
    canvas_h, canvas_w = config.canvas_size
    scale = min(1.0, canvas_h / height, canvas_w / width)
    shown_h, shown_w = max(1, round(height * scale)), max(1, round(width * scale))
    view = np.zeros((slots, view_h, view_w, 3), np.uint8)  # [T, Hv, Wv, 3]
    original = np.zeros((slots, canvas_h, canvas_w, 3), np.uint8)  # [T, Hc, Wc, 3]
    for t, frame in enumerate(frames):
        view[t] = _resize(frame, view_h, view_w)
        original[t, :shown_h, :shown_w] = _resize(frame, shown_h, shown_w)
    box = example.target_box
    target_box = np.full(4, np.nan, np.float32) if box is None else np.float32(box) * scale
    return _Row(bucket=(slots, view_h, view_w), view=view, original=original,
                original_size=(shown_h, shown_w), original_scale=scale, num_frames=count,
                target_box=target_box, example=example)


def _collate(rows: Sequence[_Row], batch_size: int) -> Batch:
    """Stacks rows of one bucket, padding to batch_size with copies of the last (valid False)."""
    padded = list(rows) + [rows[-1]] * (batch_size - len(rows))
    return Batch(
        view=np.stack([r.view for r in padded]),
        original=np.stack([r.original for r in padded]),
        original_size=np.array([r.original_size for r in padded], np.int32),
        original_scale=np.array([r.original_scale for r in padded], np.float32),
        num_frames=np.array([r.num_frames for r in padded], np.int32),
        target_box=np.stack([r.target_box for r in padded]),
        valid=np.arange(batch_size) < len(rows),
        examples=tuple(r.example for r in padded))


# ------------------------------------------------------------------------------ bucketing


class _BucketBatchIterator(grain.DatasetIterator):
    """Groups the parent's rows by bucket and emits a bucket as soon as it holds batch_size.

    Checkpoint state: the parent's state before the oldest row still waiting in a bucket (the
    anchor) and the offsets from the anchor of the rows read since that already left in a batch.
    `set_state` replays the parent from the anchor, skipping those rows: this rebuilds the
    waiting rows exactly, and no bucket fills during the replay (a full bucket leaves at once),
    so the batches that follow are the ones an uninterrupted run would have produced.
    """

    def __init__(self, parent: grain.DatasetIterator, batch_size: int):
        super().__init__(parent)
        self._batch_size = batch_size
        self._restart(self._parent.get_state(), emitted=())

    def _restart(self, anchor, emitted) -> None:
        self._anchor = anchor
        self._emitted = set(emitted)  # offsets from the anchor already batched
        self._next_offset = 0  # offset of the next row the parent yields
        self._waiting = {}  # bucket → [(offset, parent state before the row, row)]
        self._exhausted = False

    def __next__(self) -> Batch:
        while True:
            full = next((b for b, rows in self._waiting.items()
                         if len(rows) == self._batch_size), None)
            if full is not None:
                return self._emit(full)
            if self._exhausted:
                if not self._waiting:
                    raise StopIteration
                return self._emit(min(self._waiting))
            state_before = self._parent.get_state()
            try:
                row = next(self._parent)
            except StopIteration:
                self._exhausted = True
                continue
            offset, self._next_offset = self._next_offset, self._next_offset + 1
            if offset not in self._emitted:
                self._waiting.setdefault(row.bucket, []).append((offset, state_before, row))

    def _emit(self, bucket) -> Batch:
        entries = self._waiting.pop(bucket)
        self._emitted.update(offset for offset, _, _ in entries)
        self._move_anchor()
        return _collate([row for _, _, row in entries], self._batch_size)

    def _move_anchor(self) -> None:
        """Anchors at the oldest waiting row (or the parent's position when none waits) and
        forgets the emitted offsets before it."""
        waiting = [entry for entries in self._waiting.values() for entry in entries]
        if waiting:
            oldest, self._anchor, _ = min(waiting, key=lambda entry: entry[0])
        else:
            oldest, self._anchor = self._next_offset, self._parent.get_state()
        self._emitted = {offset - oldest for offset in self._emitted if offset >= oldest}
        self._waiting = {bucket: [(offset - oldest, state, row) for offset, state, row in entries]
                         for bucket, entries in self._waiting.items()}
        self._next_offset -= oldest

    def get_state(self) -> dict:
        return {"parent": self._anchor, "emitted": sorted(self._emitted)}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._restart(state["parent"], state["emitted"])


class _BucketBatchDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, batch_size: int):
        super().__init__(parent)
        self._batch_size = batch_size

    def __iter__(self) -> _BucketBatchIterator:
        return _BucketBatchIterator(self._parent.__iter__(), self._batch_size)


# ------------------------------------------------------------------------------ the pipeline


def build_dataset(source: Sequence[Example], config: PipelineConfig) -> grain.IterDataset:
    """The grain dataset of Batches of `source` under `config`; iterate it and checkpoint the
    iterator's `get_state()`."""
    shard_count = jax.process_count() if config.shard_count is None else config.shard_count
    shard_index = jax.process_index() if config.shard_index is None else config.shard_index
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), "
                         f"got {shard_index}")
    if len(source) < shard_count:
        raise ValueError(f"the source has {len(source)} examples, fewer than the "
                         f"{shard_count} shards")
    dataset = grain.MapDataset.source(source)
    if config.shuffle:
        dataset = dataset.shuffle(seed=config.seed)
    dataset = dataset[shard_index::shard_count].repeat(config.num_epochs)
    dataset = dataset.map(functools.partial(prepare_row, config=config))
    rows = dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=config.num_threads, prefetch_buffer_size=config.prefetch_buffer_size))
    return _BucketBatchDataset(rows, config.batch_size)
