"""V* Bench: 191 multiple-choice questions about small objects in high-resolution images."""

import pathlib
import re
import zlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from pixel_jax.data.builders import common

CATEGORIES = ("direct_attributes", "relative_position")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_OPTION_LINE = re.compile(r"^\(([A-Z])\)\s*(.*?)\s*$", re.MULTILINE)


@common.BUILDERS.register("vstar_bench")
class VStarBench(common.ManualBuilder):
    """V* Bench (Hugging Face dataset `craigwu/vstar_bench`), one split "test".

    Download the dataset repository (e.g. `huggingface-cli download craigwu/vstar_bench
    --repo-type dataset --local-dir <manual_dir>`) so that manual_dir holds:
        direct_attributes/sa_<N>.jpg + sa_<N>.json   (115 questions, 4 options)
        relative_position/sa_<N>.jpg + sa_<N>.json   (76 questions, 2 options)
        test_questions.jsonl                         (optional)
    Each JSON: {"target_object": [...], "bbox": [[x, y, w, h], ...], "question", "options"} with
    options[0] the correct one. The option order shown is the official one of
    `test_questions.jsonl` when present (its "(A) ..." lines and "label"), else a fixed
    permutation seeded by the image's path. Metric: option accuracy per category and overall.
    """

    name = "vstar_bench"
    VERSION = tfds.core.Version("1.0.0")

    def _find_splits(self, manual_dir: pathlib.Path):
        return ["test"]

    def _generate_examples(self, manual_dir: pathlib.Path, split: str):
        return common.keyed(self._records(manual_dir))

    def _records(self, manual_dir: pathlib.Path) -> Iterator[dict]:
        official = _official_orders(manual_dir)
        for category in CATEGORIES:
            folder = common.find_dir(manual_dir, category, "V* Bench category folder")
            annotations = sorted(folder.glob("sa_*.json"))
            if not annotations:
                raise FileNotFoundError(f"V* Bench: no sa_<N>.json annotation in {folder}")
            for annotation in annotations:
                yield _record(annotation, f"{category}/{annotation.stem}", official)


def _official_orders(manual_dir: pathlib.Path) -> dict[str, tuple[list[str], str]]:
    """test_questions.jsonl → {"<category>/sa_<N>": (options in shown order, answer letter)}."""
    path = common.find_file(manual_dir, ["test_questions.jsonl"], "V* Bench questions",
                            required=False)
    if path is None:
        return {}
    orders = {}
    for number, row in enumerate(common.read_jsonl(path), 1):
        where = f"{path}, line {number}"
        key = str(pathlib.PurePosixPath(common.field(row, "image", where)).with_suffix(""))
        lines = _OPTION_LINE.findall(common.field(row, "text", where))
        orders[key] = ([text for _, text in lines], common.field(row, "label", where))
    return orders


def _record(annotation: pathlib.Path, key: str, official: dict) -> dict:
    where = str(annotation)
    meta = common.read_json(annotation)
    options = [str(option) for option in common.field(meta, "options", where)]
    if len(options) < 2:
        raise ValueError(f"{where}: needs at least 2 options, got {options}")
    image_path = next((annotation.with_suffix(s) for s in IMAGE_SUFFIXES
                       if annotation.with_suffix(s).is_file()), None)
    if image_path is None:
        raise FileNotFoundError(f"{where}: no image {annotation.stem}{IMAGE_SUFFIXES} beside it")
    image = common.read_bytes(image_path, where)
    size = common.image_size(image, str(image_path))
    if key in official:
        shown, letter = official[key]
        if sorted(shown) != sorted(options):
            raise ValueError(f"{where}: test_questions.jsonl lists options {shown}, the "
                             f"annotation {options}")
    else:
        shown = [options[i] for i in np.random.default_rng(zlib.crc32(key.encode())).permutation(
            len(options))]
        letter = chr(ord("A") + shown.index(options[0]))
    category = key.split("/")[0]
    return common.make_record(
        id=f"vstar_bench/{key}", source="vstar_bench", kind="multiple_choice",
        category=category, question=str(common.field(meta, "question", where)),
        answers=(letter,), answer_metric="multiple_choice", options=shown, image=image,
        target_boxes=[common.xywh_box(box, size, where)
                      for box in common.field(meta, "bbox", where)],
        needs_zoom=True)
