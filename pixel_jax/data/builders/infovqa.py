"""InfographicsVQA (DocVQA task 3): questions on infographics, scored with ANLS."""

import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from pixel_jax.data.builders import common

SPLIT_PATTERNS = {"train": "infographic*VQA_train_v1.0*.json",
                  "validation": "infographic*VQA_val_v1.0*.json",
                  "test": "infographic*VQA_test_v1.0*.json"}
IMAGE_FOLDER = "infographicsvqa_images"


@common.BUILDERS.register("infographics_vqa")
class InfographicsVQA(common.ManualBuilder):
    """InfographicsVQA (rrc.cvc.uab.es, DocVQA task 3), splits "train", "validation", "test"
    (those present).

    Put in manual_dir (any depth): infographicsVQA_train_v1.0.json,
    infographicsVQA_val_v1.0_withQT.json, infographicsVQA_test_v1.0.json (some copies spell
    `infographicVQA_...`) and the folder `infographicsvqa_images/<image_local_name>`.
    A JSON file is {"dataset_name", "dataset_version", "dataset_split", "data": [...]}; a record
    has questionId, question, image_local_name, answers (none in test) and, in val, answer_type.
    Metric: ANLS with tau = 0.5, best over the gold answers.
    """

    name = "infographics_vqa"
    VERSION = tfds.core.Version("1.0.0")

    def _find_splits(self, manual_dir: pathlib.Path):
        splits = [split for split, pattern in SPLIT_PATTERNS.items()
                  if common.find_file(manual_dir, [pattern], "InfographicsVQA", required=False)]
        if not splits:
            raise FileNotFoundError(f"InfographicsVQA: no file matching "
                                    f"{list(SPLIT_PATTERNS.values())} under {manual_dir}")
        return splits

    def _generate_examples(self, manual_dir: pathlib.Path, split: str):
        path = common.find_file(manual_dir, [SPLIT_PATTERNS[split]], f"InfographicsVQA {split}")
        images = common.find_dir(manual_dir, IMAGE_FOLDER, "InfographicsVQA images")
        return common.keyed(_records(path, images, split))


def _records(path: pathlib.Path, images: pathlib.Path, split: str) -> Iterator[dict]:
    for number, row in enumerate(common.json_records(path, key="data")):
        where = f"{path}, record {number}"
        answers = [] if split == "test" else [str(a) for a in common.field(row, "answers", where)]
        yield common.make_record(
            id=f"infographics_vqa/{common.field(row, 'questionId', where)}",
            source="infographics_vqa", kind="open",
            category="/".join(row.get("answer_type") or []),
            question=common.field(row, "question", where), answers=answers,
            answer_metric="anls",
            image=common.read_image(images / common.field(row, "image_local_name", where), where))
