"""TextVQA 0.5.1: questions that need reading text in natural images."""

import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from pixel_jax.data.builders import common

SPLIT_FILES = {"train": "TextVQA_0.5.1_train.json", "validation": "TextVQA_0.5.1_val.json",
               "test": "TextVQA_0.5.1_test.json"}
IMAGE_FOLDERS = {"train": "train_images", "validation": "train_images", "test": "test_images"}


@common.BUILDERS.register("textvqa")
class TextVQA(common.ManualBuilder):
    """TextVQA 0.5.1 (textvqa.org/dataset), splits "train", "validation", "test" (those present).

    Put in manual_dir (any depth): TextVQA_0.5.1_{train,val,test}.json and the image folders
    `train_images/<image_id>.jpg` (train and val images) and `test_images/<image_id>.jpg`.
    A JSON file is {"dataset_type", "dataset_name", "dataset_version", "data": [...]}; a record
    has question, image_id, question_id and 10 annotators' answers (none in test). Metric: VQA
    accuracy (min(1, matching annotators / 3) over leave-one-out subsets, EvalAI normalisation).
    """

    name = "textvqa"
    VERSION = tfds.core.Version("1.0.0")

    def _find_splits(self, manual_dir: pathlib.Path):
        splits = [split for split, file in SPLIT_FILES.items()
                  if common.find_file(manual_dir, [file], "TextVQA", required=False)]
        if not splits:
            raise FileNotFoundError(f"TextVQA: none of {list(SPLIT_FILES.values())} is under "
                                    f"{manual_dir}")
        return splits

    def _generate_examples(self, manual_dir: pathlib.Path, split: str):
        path = common.find_file(manual_dir, [SPLIT_FILES[split]], f"TextVQA {split}")
        images = common.find_dir(manual_dir, IMAGE_FOLDERS[split], f"TextVQA {split} images")
        return common.keyed(_records(path, images, split))


def _records(path: pathlib.Path, images: pathlib.Path, split: str) -> Iterator[dict]:
    for number, row in enumerate(common.json_records(path, key="data")):
        where = f"{path}, record {number}"
        image_id = common.field(row, "image_id", where)
        answers = [] if split == "test" else [str(a) for a in common.field(row, "answers", where)]
        yield common.make_record(
            id=f"textvqa/{common.field(row, 'question_id', where)}", source="textvqa",
            kind="open", category=str(row.get("set_name", split)),
            question=common.field(row, "question", where), answers=answers,
            answer_metric="vqa", image=common.read_image(images / f"{image_id}.jpg", where))
