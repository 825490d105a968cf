"""The Pixel Reasoner releases: warm-start SFT trajectories and the RL questions."""

import json
import pathlib
import re
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from pixel_jax.data.builders import common
from pixel_jax.rl.rewards import extract_boxed

RL_COLUMNS = ("qid", "question", "image", "is_video", "answer")
_IMAGE_PLACEHOLDER = re.compile(r"^(?:\s*<image>)+\s*")
_CHOICES = re.compile(r"\n?\s*choices:\s*\n(.*)\Z", re.DOTALL | re.IGNORECASE)
_CHOICE_LINE = re.compile(r"^\s*([A-Z])\s*[:.)]\s*(.*?)\s*$", re.MULTILINE)
PARQUET_BATCH_ROWS = 256


def _resolve(manual_dir: pathlib.Path, path: str) -> pathlib.Path:
    """A file path of the release: absolute, or relative to manual_dir."""
    return pathlib.Path(path) if pathlib.Path(path).is_absolute() else manual_dir / path


def _frames(manual_dir: pathlib.Path, paths: Sequence[str], where: str) -> list[bytes]:
    frames = [common.read_image(_resolve(manual_dir, p), where) for p in paths]
    sizes = {common.image_size(frame, where) for frame in frames}
    if len(sizes) > 1:
        raise ValueError(f"{where}: video frames differ in size: {sorted(sizes)}")
    return frames


# ------------------------------------------------------------------------------ RL questions


@common.BUILDERS.register("pixel_reasoner_rl")
class PixelReasonerRL(common.ManualBuilder):
    """Pixel Reasoner RL questions (Hugging Face dataset `TIGER-Lab/PixelReasoner-RL-Data`).

    Put `release.parquet` (~15.4k rows) in manual_dir and unzip `images.zip` and `videos.zip`
    there, so that the relative paths of the `image` column exist under manual_dir. Every
    `*.parquet` directly in manual_dir is one split named after its file: release.parquet is
    "train"; the evaluation packs with the same columns (e.g. `vstar.parquet`) keep their names.
    Columns: qid, question (starts with "<image>\\n"; multiple choice ends with
    "choices:\\nA: ..."), image (list of paths; the frame JPEGs of a video row), is_video (bool,
    may be null), answer (list of str or str, usually "\\boxed{...}").
    Here `question` is the text without the image placeholder and without the choices block,
    whose options go to `options`; answers are the boxed contents. Metric: multiple_choice when
    there are choices, counting when every answer is an integer, exact_match otherwise.
    """

    name = "pixel_reasoner_rl"
    VERSION = tfds.core.Version("1.0.0")

    def _find_splits(self, manual_dir: pathlib.Path):
        splits = [_split_name(path) for path in sorted(manual_dir.glob("*.parquet"))]
        if not splits:
            raise FileNotFoundError(f"Pixel Reasoner RL: no *.parquet in {manual_dir} "
                                    f"(expected release.parquet)")
        return splits

    def _generate_examples(self, manual_dir: pathlib.Path, split: str):
        path = next(p for p in sorted(manual_dir.glob("*.parquet")) if _split_name(p) == split)
        return common.keyed(_rl_records(path, manual_dir, split))


def _split_name(path: pathlib.Path) -> str:
    return "train" if path.stem == "release" else re.sub(r"\W", "_", path.stem.lower())


def _rl_rows(path: pathlib.Path) -> Iterator[dict]:
    import pyarrow.parquet  # a dependency of tensorflow-datasets

    table = pyarrow.parquet.ParquetFile(path)
    missing = [c for c in RL_COLUMNS if c not in table.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=list(RL_COLUMNS)):
        yield from batch.to_pylist()


def split_choices(question: str) -> tuple[str, list[str]]:
    """A question ending in a "choices:\\nA: ...\\nB: ..." block → (question, option texts)."""
    match = _CHOICES.search(question)
    if not match:
        return question.strip(), []
    return question[:match.start()].strip(), [text for _, text in
                                              _CHOICE_LINE.findall(match.group(1))]


def _rl_records(path: pathlib.Path, manual_dir: pathlib.Path, split: str) -> Iterator[dict]:
    for number, row in enumerate(_rl_rows(path)):
        where = f"{path}, row {number}"
        qid = str(common.field(row, "qid", where))
        where = f"{path}, qid {qid}"
        question, options = split_choices(
            _IMAGE_PLACEHOLDER.sub("", common.field(row, "question", where)))
        raw_answers = common.field(row, "answer", where)
        golds = [extract_boxed(a) or a.strip()
                 for a in ([raw_answers] if isinstance(raw_answers, str) else raw_answers)]
        paths = common.field(row, "image", where)
        paths = [paths] if isinstance(paths, str) else list(paths)
        pictures = {}
        if row["is_video"]:
            pictures["frames"] = _frames(manual_dir, paths, where)
        elif len(paths) == 1:
            pictures["image"] = common.read_image(_resolve(manual_dir, paths[0]), where)
        else:
            raise ValueError(f"{where}: an image question needs exactly one image, got {paths}")
        if options:
            metric, golds = "multiple_choice", [common.option_letter(options, g, where)
                                                for g in golds]
        else:
            metric = "counting" if all(g.isdigit() for g in golds) else "exact_match"
        yield common.make_record(
            id=f"pixel_reasoner_rl/{split}/{qid}", source="pixel_reasoner_rl",
            kind="multiple_choice" if options else "open", question=question,
            answers=golds, answer_metric=metric, options=options, **pictures)


# ------------------------------------------------------------------------------ SFT trajectories


@common.BUILDERS.register("pixel_reasoner_sft")
class PixelReasonerSFT(common.ManualBuilder):
    """Pixel Reasoner warm-start trajectories (`TIGER-Lab/PixelReasoner-SFT-Data`), split "train".

    Put the release's JSON array file(s) (`*.json`, ~7.85k records) directly in manual_dir and
    unzip its images there, so that the paths in the messages exist (absolute, or relative to
    manual_dir). A record's `message_list` holds Qwen-format messages: system; user
    `content = [{"text": ...}, {"image": path} | {"video": [frame paths]}]` (items may lack a
    "type"); assistant text with `<tool_call>{"name": "crop_image_normalized" | "select_frames",
    "arguments": {...}}</tool_call>`; user turns carrying each tool result image; the final
    answer in \\boxed{}. Stored as `conversation` (see `Example`): content items become
    {"type": "text", "text"}, {"type": "image", "index": k} or {"type": "video"}; the question is
    the first user turn's text, the answer the final \\boxed{} (none when it is missing).
    """

    name = "pixel_reasoner_sft"
    VERSION = tfds.core.Version("1.0.0")

    def _find_splits(self, manual_dir: pathlib.Path):
        if not any(manual_dir.glob("*.json")):
            raise FileNotFoundError(f"Pixel Reasoner SFT: no *.json in {manual_dir}")
        return ["train"]

    def _generate_examples(self, manual_dir: pathlib.Path, split: str):
        return common.keyed(_sft_records(manual_dir))


def _sft_records(manual_dir: pathlib.Path) -> Iterator[dict]:
    for path in sorted(manual_dir.glob("*.json")):
        for number, row in enumerate(common.json_records(path)):
            yield _sft_record(row, f"{path}, record {number}", f"{path.stem}/{number}", manual_dir)


def _content_items(message: dict, where: str) -> list[dict]:
    """A message's content as a list of items: a string becomes one text item."""
    content = common.field(message, "content", where)
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list) or not all(isinstance(item, dict) for item in content):
        raise ValueError(f"{where}: content must be a string or a list of items, got {content!r}")
    return content


def _sft_record(row: dict, where: str, fallback_id: str, manual_dir: pathlib.Path) -> dict:
    messages = common.field(row, "message_list", where)
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: message_list must be a non-empty list of messages")
    image_paths, video_paths, conversation = [], None, []
    for turn, message in enumerate(messages):
        turn_where = f"{where}, message {turn}"
        items = []
        for item in _content_items(message, turn_where):
            if "text" in item:
                items.append({"type": "text", "text": str(item["text"])})
            elif "image" in item:
                for path in [item["image"]] if isinstance(item["image"], str) else item["image"]:
                    items.append({"type": "image", "index": len(image_paths)})
                    image_paths.append(path)
            elif "video" in item and video_paths is None:
                video_paths = list(item["video"])
                items.append({"type": "video"})
            else:
                raise ValueError(f"{turn_where}: content item {sorted(item)} is neither text, "
                                 f"image nor the conversation's one video")
        conversation.append({"role": common.field(message, "role", turn_where),
                             "content": items})
    users = [m for m in conversation if m["role"] == "user"]
    assistants = [m for m in conversation if m["role"] == "assistant"]
    if not users or not assistants:
        raise ValueError(f"{where}: needs a user and an assistant message")
    texts = [[i["text"] for i in m["content"] if i["type"] == "text"] for m in assistants]
    final = extract_boxed("".join(texts[-1]))
    images = [common.read_image(_resolve(manual_dir, p), where) for p in image_paths]
    shown_first = {item["type"] for item in users[0]["content"]}
    if "video" in shown_first:
        pictures = {"frames": _frames(manual_dir, video_paths, where)}
    elif video_paths is not None:
        raise ValueError(f"{where}: a video may only be shown in the first user message")
    elif "image" in shown_first:
        pictures, images = {"image": images[0]}, images[1:]
    else:
        raise ValueError(f"{where}: the first user message shows no image or video")
    return common.make_record(
        id=f"pixel_reasoner_sft/{row.get('qid') or fallback_id}", source="pixel_reasoner_sft",
        kind="trajectory",
        question="\n".join(i["text"] for i in users[0]["content"] if i["type"] == "text"),
        answers=[final] if final else [], answer_metric="exact_match",
        needs_zoom=any("<tool_call>" in text for turn in texts for text in turn),
        conversation=json.dumps(conversation, ensure_ascii=False), conversation_images=images,
        **pictures)
