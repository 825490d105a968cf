"""What every dataset builder shares: the registry, the base builder and file/record helpers.

Each builder reads one release from local files (`manual_dir`, laid out as its docstring says),
maps every record to the common schema of `pixel_jax.data.example` and writes array_record shards
that `tfds.data_source` reads without TensorFlow. A missing file raises FileNotFoundError naming
it; a missing or malformed field raises ValueError naming the file, the record and the field.
"""

import abc
import io
import json
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from pixel_jax.data.example import RECORD_FEATURES, Box, check_labels
from pixel_jax.registry import Registry

BUILDERS: Registry[type] = Registry("dataset builder")


class ManualBuilder(tfds.core.GeneratorBasedBuilder):
    """Base of the builders: array_record output, the common features, manual files only.

    A subclass's docstring says where to get the files and how to lay them out in `manual_dir`
    (TFDS shows it when the folder is missing); it sets `VERSION` and implements
    `_find_splits(manual_dir)` (the split names present) and
    `_generate_examples(manual_dir, split)` (yields (unique key, record of `make_record`)).
    """

    def __init_subclass__(cls, **kwargs):
        cls.MANUAL_DOWNLOAD_INSTRUCTIONS = cls.__doc__
        super().__init_subclass__(**kwargs)

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """None: nothing is downloaded, so there is no checksums file to find next to the code
        (TFDS's lookup of it imports the `importlib_resources` backport, not installed here)."""
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=RECORD_FEATURES,
                                     description=(self.__doc__ or "").strip())

    def _split_generators(self, dl_manager):
        try:
            manual_dir = pathlib.Path(dl_manager.manual_dir)
        except AssertionError as error:  # TFDS's way of saying the folder is missing or empty
            raise FileNotFoundError(str(error)) from None
        return {split: self._generate_examples(manual_dir, split)
                for split in self._find_splits(manual_dir)}

    @abc.abstractmethod
    def _find_splits(self, manual_dir: pathlib.Path) -> Sequence[str]:
        """The names of the splits whose files are present in manual_dir."""


def load_source(name: str, split: str, *, data_dir, manual_dir=None) -> Sequence[dict]:
    """`tfds.data_source` of builder `name` ("hr_bench/8k" picks a config): random access to
    stored records (bytes for text, see `example.from_record`). With `manual_dir` the dataset is
    first prepared from the local files (once; later calls reuse it), else it must exist already.
    """
    BUILDERS.get(name.split("/")[0])  # an unknown name lists the known ones
    prepare_kwargs = None
    if manual_dir is not None:
        prepare_kwargs = {"download_config": tfds.download.DownloadConfig(
            manual_dir=str(manual_dir))}
    return tfds.data_source(name, split=split, data_dir=str(data_dir),
                            download=manual_dir is not None,
                            download_and_prepare_kwargs=prepare_kwargs)


# ------------------------------------------------------------------------------ files


def find_file(manual_dir: pathlib.Path, patterns: Sequence[str], what: str,
              required: bool = True) -> Optional[pathlib.Path]:
    """The shallowest file under manual_dir matching one of the glob `patterns` (in order).

    Missing → FileNotFoundError naming `what` and the patterns, or None when not `required`.
    """
    for pattern in patterns:
        matches = sorted(manual_dir.rglob(pattern), key=lambda p: (len(p.parts), str(p)))
        if matches:
            return matches[0]
    if required:
        raise FileNotFoundError(f"{what}: no file matching {list(patterns)} under {manual_dir}")
    return None


def find_dir(manual_dir: pathlib.Path, name: str, what: str) -> pathlib.Path:
    """The shallowest folder called `name` under manual_dir (or manual_dir itself if so named)."""
    if manual_dir.name == name:
        return manual_dir
    matches = sorted((p for p in manual_dir.rglob(name) if p.is_dir()),
                     key=lambda p: (len(p.parts), str(p)))
    if not matches:
        raise FileNotFoundError(f"{what}: no folder named {name!r} under {manual_dir}")
    return matches[0]


def read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def read_jsonl(path: pathlib.Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid JSON ({error})") from None
    return rows


def json_records(path: pathlib.Path, key: Optional[str] = None) -> list[dict]:
    """The list of records of a JSON file: the whole file, or its top-level `key` field."""
    data = read_json(path)
    if key is not None:
        data = field(data, key, str(path)) if isinstance(data, dict) else None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a list of records" + (f" under {key!r}" if key else ""))
    return data


def field(record: Any, key: str, where: str) -> Any:
    """record[key], or ValueError naming `where` and the missing field."""
    if not isinstance(record, dict) or key not in record or record[key] is None:
        raise ValueError(f"{where}: missing field {key!r}")
    return record[key]


def read_bytes(path: pathlib.Path, where: str) -> bytes:
    """The bytes of a file a record refers to; FileNotFoundError naming it and the record."""
    if not path.is_file():
        raise FileNotFoundError(f"{where}: file {path} does not exist")
    return path.read_bytes()


def read_image(path: pathlib.Path, where: str) -> bytes:
    """The encoded bytes of an image file a record refers to, checked to be readable."""
    data = read_bytes(path, where)
    image_size(data, f"{where}: {path}")
    return data


def image_size(data: bytes, where: str) -> tuple[int, int]:
    """(W, H) from an encoded image's header; ValueError if it is not an image PIL reads."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as picture:
            return picture.size
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{where}: not a readable image ({error})") from None


def encode_png(picture: np.ndarray) -> bytes:
    """[H, W, 3] uint8 → PNG bytes (lossless; for pictures that are not stored as files)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------ records


def xywh_box(xywh: Sequence[float], size: tuple[int, int], where: str) -> Box:
    """An (x, y, w, h) annotation → (x1, y1, x2, y2) clipped to an image of `size` (W, H)."""
    if len(xywh) != 4:
        raise ValueError(f"{where}: a box needs 4 numbers (x, y, w, h), got {xywh!r}")
    x, y, w, h = map(float, xywh)
    x1, y1 = min(max(x, 0.0), size[0]), min(max(y, 0.0), size[1])
    x2, y2 = min(max(x + w, 0.0), size[0]), min(max(y + h, 0.0), size[1])
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{where}: box {list(xywh)} is empty inside the {size[0]}x{size[1]} image")
    return (x1, y1, x2, y2)


def option_letter(options: Sequence[str], answer: str, where: str) -> str:
    """The letter (A, B, ...) of `answer` among `options`, given as a letter or as option text."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if answer.strip() in letters:
        return answer.strip()
    for letter, option in zip(letters, options):
        if option.strip() == answer.strip():
            return letter
    raise ValueError(f"{where}: answer {answer!r} is neither a letter of {letters} nor one of "
                     f"the options {list(options)}")


def make_record(*, id: str, source: str, question: str, answers: Sequence[str],
                answer_metric: str, image: bytes = b"", frames: Sequence[bytes] = (),
                options: Sequence[str] = (), target_boxes: Sequence[Box] = (),
                target_frames: Sequence[int] = (), needs_zoom: bool = False, kind: str = "",
                category: str = "", group: str = "", conversation: str = "",
                conversation_images: Sequence[bytes] = ()) -> dict:
    """A stored record (`RECORD_FEATURES`) after the checks `Example` makes on its labels.

    `image` / `frames` / `conversation_images` are encoded image files; exactly one of image and
    frames is given.
    """
    check_labels(id, question, answers, answer_metric, options)
    if bool(image) == bool(frames):
        raise ValueError(f"example {id!r}: exactly one of image and frames must be given")
    return {
        "id": id, "source": source, "kind": kind, "category": category, "group": group,
        "question": question, "answers": list(answers), "answer_metric": answer_metric,
        "options": list(options), "image": image, "frames": list(frames),
        "target_boxes": np.asarray(target_boxes, dtype=np.float32).reshape(-1, 4),
        "target_frames": np.asarray(target_frames, dtype=np.int32).reshape(-1),
        "needs_zoom": bool(needs_zoom), "conversation": conversation,
        "conversation_images": list(conversation_images),
    }


def keyed(records: Iterator[dict]) -> Iterator[tuple[str, dict]]:
    """(id, record) pairs for TFDS, which needs unique keys: a repeated id is an error."""
    seen = set()
    for record in records:
        if record["id"] in seen:
            raise ValueError(f"example id {record['id']!r} occurs twice")
        seen.add(record["id"])
        yield record["id"], record
