"""One example schema for every dataset: the decoded `Example` and its stored TFDS record.

The synthetic task, every TFDS builder and the pipeline share this schema, so evaluation and
training have one code path. The answer fields feed `pixel_jax.rl.rewards.Response`:
`answers` → `gold_answers` (a letter for multiple choice, the integer as text for counting, all
annotators' answers for VQA accuracy), `answer_metric` → the metric part, `options` → the option
texts in letter order. Test splits without public answers have `answers == ()`.

Stored form (`RECORD_FEATURES`, array_record, readable without TensorFlow): images are the encoded
file bytes (JPEG/PNG/...; tfds's Image feature would need TensorFlow to encode), decoded with PIL by
`from_record`; text comes back from `tfds.data_source` as bytes and is decoded here.
"""

import dataclasses
import io
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from pixel_jax.rl.rewards import REWARD_PARTS

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2), full-resolution pixel edges


def check_labels(example_id: str, question: str, answers: Sequence[str], answer_metric: str,
                 options: Sequence[str]) -> None:
    """Raise a ValueError naming `example_id` unless the labels fit `answer_metric`."""
    where = f"example {example_id!r}"
    if not question.strip():
        raise ValueError(f"{where}: question is empty")
    if answer_metric not in REWARD_PARTS or answer_metric == "correct":
        raise ValueError(f"{where}: answer_metric {answer_metric!r} is not an answer metric of "
                         f"pixel_jax.rl.rewards (known parts: {REWARD_PARTS.names()})")
    if isinstance(answers, str) or any(not isinstance(a, str) for a in answers):
        raise ValueError(f"{where}: answers must be a sequence of strings, got {answers!r}")
    if answer_metric == "multiple_choice":
        letters = [chr(ord("A") + i) for i in range(len(options))]
        if len(options) < 2 or any(answer not in letters for answer in answers):
            raise ValueError(f"{where}: multiple_choice needs >= 2 options and answers among "
                             f"their letters {letters}, got answers {list(answers)}")
    if answer_metric == "counting" and any(not a.strip().isdigit() for a in answers):
        raise ValueError(f"{where}: counting answers must be integers, got {list(answers)}")
    if answer_metric == "vqa" and len(answers) == 1:
        raise ValueError(f"{where}: vqa accuracy needs the annotators' answers, got one")


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
    """One question about an image or a video, decoded (numpy, str).

    Exactly one of `image` [H, W, 3] and `frames` [T, H, W, 3] (uint8 RGB, full resolution) is set.
    `target_boxes` are the annotated regions holding the answer (in frame `target_frames[0]` for a
    video); `conversation` is a reference trajectory (Pixel Reasoner SFT), a JSON list of
    messages {"role", "content": [item, ...]} with items {"type": "text", "text"},
    {"type": "image", "index": k} or {"type": "video"}. k counts the conversation's images in
    order of appearance (the crop tool's 1-based `target_image` minus one): see
    `conversation_image`.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    answer_metric: str
    image: Optional[np.ndarray] = None  # [H, W, 3] uint8
    frames: Optional[np.ndarray] = None  # [T, H, W, 3] uint8
    options: tuple[str, ...] = ()
    target_boxes: tuple[Box, ...] = ()
    target_frames: tuple[int, ...] = ()  # 0-based frames that hold the answer
    needs_zoom: bool = False
    kind: str = ""  # question kind (synthetic) or answer form (benchmarks)
    category: str = ""  # sub-task reported separately (V* attribute/spatial, HR-Bench FSP/FCP, ...)
    group: str = ""  # examples scored together (an HR-Bench cycle of option orders)
    source: str = ""  # dataset name
    conversation: str = ""
    conversation_images: tuple[np.ndarray, ...] = ()  # each [H, W, 3] uint8

    def __post_init__(self):
        check_labels(self.id, self.question, self.answers, self.answer_metric, self.options)
        if (self.image is None) == (self.frames is None):
            raise ValueError(f"example {self.id!r}: exactly one of image and frames must be set")
        pictures = [self.image] if self.frames is None else list(self.frames)
        for picture in pictures + list(self.conversation_images):
            if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[-1] != 3:
                raise ValueError(f"example {self.id!r}: pictures must be uint8 [H, W, 3], "
                                 f"got {picture.dtype} {picture.shape}")
        if self.frames is not None and self.frames.ndim != 4:
            raise ValueError(f"example {self.id!r}: frames must be [T, H, W, 3], "
                             f"got {self.frames.shape}")
        height, width = pictures[0].shape[:2]
        for x1, y1, x2, y2 in self.target_boxes:
            if not 0 <= x1 < x2 <= width or not 0 <= y1 < y2 <= height:
                raise ValueError(f"example {self.id!r}: target box {(x1, y1, x2, y2)} is not "
                                 f"inside the {width}x{height} picture")
        if any(not 0 <= t < len(pictures) for t in self.target_frames):
            raise ValueError(f"example {self.id!r}: target_frames {self.target_frames} outside "
                             f"[0, {len(pictures)})")

    def conversation_image(self, index: int) -> np.ndarray:
        """Image `index` of the conversation: the question's `image` (if it is one) followed by
        `conversation_images`."""
        images = ([] if self.image is None else [self.image]) + list(self.conversation_images)
        if not 0 <= index < len(images):
            raise ValueError(f"example {self.id!r}: conversation image {index} out of "
                             f"[0, {len(images)})")
        return images[index]

    @property
    def target_box(self) -> Optional[Box]:
        """The box enclosing every target (one zoom that shows them all), or None."""
        if not self.target_boxes:
            return None
        boxes = np.asarray(self.target_boxes, dtype=np.float64)  # [N, 4]
        return (*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist())


# ------------------------------------------------------------------------------ stored record

_ENCODED = tfds.features.Tensor(shape=(), dtype=np.object_)  # one encoded image file

RECORD_FEATURES = tfds.features.FeaturesDict({
    "id": tfds.features.Text(),
    "source": tfds.features.Text(),
    "kind": tfds.features.Text(),
    "category": tfds.features.Text(),
    "group": tfds.features.Text(),
    "question": tfds.features.Text(),
    "answers": tfds.features.Sequence(tfds.features.Text()),
    "answer_metric": tfds.features.Text(),
    "options": tfds.features.Sequence(tfds.features.Text()),
    "image": _ENCODED,  # b"" for a video
    "frames": tfds.features.Sequence(_ENCODED),  # empty for an image
    "target_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
    "target_frames": tfds.features.Tensor(shape=(None,), dtype=np.int32),
    "needs_zoom": np.bool_,
    "conversation": tfds.features.Text(),
    "conversation_images": tfds.features.Sequence(_ENCODED),
})


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded image file bytes → [H, W, 3] uint8 RGB (any mode PIL reads is converted)."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as picture:
            return np.asarray(picture.convert("RGB"), dtype=np.uint8)
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{name}: not a readable image ({error})") from None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def from_record(record: dict) -> Example:
    """A record read through `tfds.data_source` (bytes for text, encoded images) → Example."""
    example_id = _text(record["id"])
    frames = [decode_image(f, f"{example_id} frame {t}") for t, f in enumerate(record["frames"])]
    return Example(
        id=example_id,
        question=_text(record["question"]),
        answers=tuple(map(_text, record["answers"])),
        answer_metric=_text(record["answer_metric"]),
        image=decode_image(record["image"], example_id) if not frames else None,
        frames=np.stack(frames) if frames else None,  # [T, H, W, 3]
        options=tuple(map(_text, record["options"])),
        target_boxes=tuple(tuple(map(float, box)) for box in record["target_boxes"]),
        target_frames=tuple(int(t) for t in record["target_frames"]),
        needs_zoom=bool(record["needs_zoom"]),
        kind=_text(record["kind"]),
        category=_text(record["category"]),
        group=_text(record["group"]),
        source=_text(record["source"]),
        conversation=_text(record["conversation"]),
        conversation_images=tuple(decode_image(image, f"{example_id} conversation image {k}")
                                  for k, image in enumerate(record["conversation_images"], 1)),
    )
