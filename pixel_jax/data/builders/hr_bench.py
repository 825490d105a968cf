"""HR-Bench 4K and 8K: multiple-choice questions on 4K / 8K images (single- and cross-instance)."""

import base64
import binascii
import csv
import pathlib
import sys
from collections.abc import Iterator

import tensorflow_datasets as tfds

from pixel_jax.data.builders import common

COLUMNS = ("index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category",
           "image")
OPTION_COLUMNS = ("A", "B", "C", "D")
MAX_REFERENCE_CHARS = 64  # an `image` this short is the `index` of the row holding the image
PARQUET_BATCH_ROWS = 16


@common.BUILDERS.register("hr_bench")
class HRBench(common.ManualBuilder):
    """HR-Bench (Hugging Face dataset `DreamMr/HR-Bench`), configs "4k" and "8k", split "test".

    Put `hr_bench_4k.parquet` and/or `hr_bench_8k.parquet` (or the `.tsv` variants) anywhere in
    manual_dir. Columns: index, question, answer (a letter), category ("single" = FSP, "cross" =
    FCP), A, B, C, D, cycle_category, image (base64 JPEG/PNG; a value of <= 64 characters is the
    index of the row holding the image). 800 rows per resolution: 200 questions x 4 option
    orders. Metric: accuracy per `cycle_category` group averaged, for single, cross and all.
    """

    name = "hr_bench"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="4k", description="HR-Bench 4K"),
                       tfds.core.BuilderConfig(name="8k", description="HR-Bench 8K")]

    def _find_splits(self, manual_dir: pathlib.Path):
        return ["test"]

    def _generate_examples(self, manual_dir: pathlib.Path, split: str):
        stem = f"hr_bench_{self.builder_config.name}"
        path = common.find_file(manual_dir, [f"{stem}.parquet", f"{stem}.tsv"],
                                f"HR-Bench {self.builder_config.name}")
        return common.keyed(self._records(path))

    def _records(self, path: pathlib.Path) -> Iterator[dict]:
        """Rows → records; an image shared by reference is kept only until its last use."""
        last_use = {}  # index of a row whose image others reference → position of the last one
        for position, row in enumerate(_rows(path)):
            if len(row["image"]) <= MAX_REFERENCE_CHARS:
                last_use[row["image"].strip()] = position
        shared = {}  # index → image bytes, while later rows still refer to it
        for position, row in enumerate(_rows(path)):
            where = f"{path}, row index {row['index']}"
            if len(row["image"]) > MAX_REFERENCE_CHARS:
                image = _decode_base64(row["image"], where)
                if row["index"] in last_use:
                    shared[row["index"]] = image
            else:
                reference = row["image"].strip()
                if reference not in shared:
                    raise ValueError(f"{where}: image refers to row index {reference}, which "
                                     f"is not an earlier row holding an image")
                image = shared[reference]
                if last_use[reference] == position:
                    del shared[reference]
            common.image_size(image, where)
            yield common.make_record(
                id=f"hr_bench_{self.builder_config.name}/{row['index']}", source="hr_bench",
                kind="multiple_choice", category=row["category"],
                group=f"{self.builder_config.name}/{row['cycle_category']}",
                question=row["question"], answers=(row["answer"].strip(),),
                answer_metric="multiple_choice",
                options=[row[c] for c in OPTION_COLUMNS if row[c].strip()], image=image,
                needs_zoom=True)


def _decode_base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise ValueError(f"{where}: image is not base64 ({error})") from None


def _rows(path: pathlib.Path) -> Iterator[dict[str, str]]:
    """The rows of the parquet or TSV file as {column: text}, checking that every column exists."""
    if path.suffix == ".parquet":
        import pyarrow.parquet  # a dependency of tensorflow-datasets

        table = pyarrow.parquet.ParquetFile(path)
        _check_columns(table.schema_arrow.names, path)
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=list(COLUMNS)):
            yield from map(_as_text, batch.to_pylist())
        return
    csv.field_size_limit(sys.maxsize)  # an 8K image in base64 is tens of MB in one cell
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file, delimiter="\t")
        _check_columns(reader.fieldnames or [], path)
        yield from map(_as_text, reader)


def _as_text(row: dict) -> dict[str, str]:
    return {column: "" if row[column] is None else str(row[column]) for column in COLUMNS}


def _check_columns(names, path: pathlib.Path) -> None:
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
