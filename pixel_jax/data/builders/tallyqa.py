"""TallyQA: counting questions on Visual Genome and COCO images (simple and complex)."""

import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from pixel_jax.data.builders import common

SPLIT_FILES = {"train": "train.json", "test": "test.json"}


@common.BUILDERS.register("tallyqa")
class TallyQA(common.ManualBuilder):
    """TallyQA (github.com/manoja328/TallyQA_dataset), splits "train" and "test" (those present).

    Put `train.json` and/or `test.json` (JSON arrays) directly in manual_dir, and the image
    folders they refer to beside them: Visual Genome `VG_100K/`, `VG_100K_2/` and COCO
    `train2014/`, `val2014/` (a record's "image", e.g. "VG_100K_2/2410408.jpg", is relative to
    manual_dir). A record: {"answer": int, "data_source", "image", "image_id", "question",
    "question_id", "issimple" (test only)}. Test questions are "simple" or "complex"
    (`category`). Metric: exact-match accuracy of the integer count.
    """

    name = "tallyqa"
    VERSION = tfds.core.Version("1.0.0")

    def _find_splits(self, manual_dir: pathlib.Path):
        splits = [split for split, file in SPLIT_FILES.items() if (manual_dir / file).is_file()]
        if not splits:
            raise FileNotFoundError(f"TallyQA: neither {list(SPLIT_FILES.values())} is in "
                                    f"{manual_dir}")
        return splits

    def _generate_examples(self, manual_dir: pathlib.Path, split: str):
        return common.keyed(_records(manual_dir / SPLIT_FILES[split], manual_dir, split))


def _records(path: pathlib.Path, image_root: pathlib.Path, split: str) -> Iterator[dict]:
    for number, row in enumerate(common.json_records(path)):
        where = f"{path}, record {number}"
        answer = common.field(row, "answer", where)
        if not isinstance(answer, int) or answer < 0:
            raise ValueError(f"{where}: answer must be a count (an integer >= 0), got {answer!r}")
        category = ""
        if split == "test":
            category = "simple" if common.field(row, "issimple", where) else "complex"
        yield common.make_record(
            id=f"tallyqa/{split}/{common.field(row, 'question_id', where)}", source="tallyqa",
            kind="count", category=category, question=common.field(row, "question", where),
            answers=(str(answer),), answer_metric="counting",
            image=common.read_image(image_root / common.field(row, "image", where), where))
