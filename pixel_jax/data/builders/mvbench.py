"""MVBench: 20 multiple-choice video tasks x 200 questions, answered from sampled frames."""

import pathlib
from collections.abc import Iterator

import numpy as np
import PIL.Image
import PIL.ImageSequence
import tensorflow_datasets as tfds

from pixel_jax.data.builders import common

NUM_FRAMES = 16  # frames sampled per video, as Pixel Reasoner's video inputs
FRAME_FOLDER_FPS = 3  # frame rate of frame folders (MVBench's tvqa frames, and ours from ffmpeg)
GIF_FPS = 25  # MVBench's reader assumes 25 fps for GIFs
# task (json file stem) → (folder under video/, stored as frames?, has start/end bounds); from
# the official evaluation code (OpenGVLab/Ask-Anything, video_chat2 `mvbench.ipynb`).
TASKS = {
    "action_sequence": ("star/Charades_v1_480", False, True),
    "action_prediction": ("star/Charades_v1_480", False, True),
    "action_antonym": ("ssv2_video", False, False),
    "fine_grained_action": ("Moments_in_Time_Raw/videos", False, False),
    "unexpected_action": ("FunQA_test/test", False, False),
    "object_existence": ("clevrer/video_validation", False, False),
    "object_interaction": ("star/Charades_v1_480", False, True),
    "object_shuffle": ("perception/videos", False, False),
    "moving_direction": ("clevrer/video_validation", False, False),
    "action_localization": ("sta/sta_video", False, True),
    "scene_transition": ("scene_qa/video", False, False),
    "action_count": ("perception/videos", False, False),
    "moving_count": ("clevrer/video_validation", False, False),
    "moving_attribute": ("clevrer/video_validation", False, False),
    "state_change": ("perception/videos", False, False),
    "fine_grained_pose": ("nturgbd", False, False),
    "character_order": ("perception/videos", False, False),
    "egocentric_navigation": ("vlnqa", False, False),
    "episodic_reasoning": ("tvqa/frames_fps3_hq", True, True),
    "counterfactual_inference": ("clevrer/video_validation", False, False),
}


@common.BUILDERS.register("mvbench")
class MVBench(common.ManualBuilder):
    """MVBench (Hugging Face dataset `OpenGVLab/MVBench`), one split "test".

    Download the dataset repository into manual_dir and extract its video archives so that it
    holds `json/<task>.json` ({"video", "question", "candidates", "answer", "start"?, "end"?})
    and `video/<source folder>/<video>` as in the official evaluation code (e.g.
    `video/clevrer/video_validation/video_10000.mp4`, `video/tvqa/frames_fps3_hq/<clip>/00001.jpg`).
    16 frames are sampled per video as the official reader does (segment midpoints, within
    [start, end] seconds when the task has bounds). Frame folders and GIFs are read with PIL.
    Other video files (.mp4, .webm, .avi) need a video decoder this package does not depend on:
    extract each one to a frame folder beside it, named after the file without its extension, at
    3 fps: `ffmpeg -i X.mp4 -vf fps=3 -q:v 2 X/%05d.jpg` (or install `av` and convert with it).
    Metric: accuracy per task, averaged over tasks.
    """

    name = "mvbench"
    VERSION = tfds.core.Version("1.0.0")

    def _find_splits(self, manual_dir: pathlib.Path):
        return ["test"]

    def _generate_examples(self, manual_dir: pathlib.Path, split: str):
        task_files = sorted(common.find_dir(manual_dir, "json", "MVBench questions").glob("*.json"))
        if not task_files:
            raise FileNotFoundError(f"MVBench: no <task>.json in {manual_dir / 'json'}")
        videos = common.find_dir(manual_dir, "video", "MVBench videos")
        return common.keyed(record for path in task_files
                            for record in _records(path, videos))


def _records(path: pathlib.Path, videos: pathlib.Path) -> Iterator[dict]:
    task = path.stem
    if task not in TASKS:
        raise ValueError(f"{path}: unknown MVBench task {task!r}; known: {sorted(TASKS)}")
    folder, is_frame_folder, has_bounds = TASKS[task]
    for number, row in enumerate(common.json_records(path)):
        where = f"{path}, record {number}"
        bounds = None
        if has_bounds:
            bounds = (float(common.field(row, "start", where)),
                      float(common.field(row, "end", where)))
        video = videos / folder / common.field(row, "video", where)
        frames = (_frame_folder(video, bounds, where) if is_frame_folder
                  else _video_file(video, bounds, where))
        options = [str(c) for c in common.field(row, "candidates", where)]
        yield common.make_record(
            id=f"mvbench/{task}/{number}", source="mvbench", kind="multiple_choice",
            category=task, question=common.field(row, "question", where),
            answers=(common.option_letter(options, str(common.field(row, "answer", where)),
                                          where),),
            answer_metric="multiple_choice", options=options, frames=frames)


def frame_indices(bounds, fps: float, max_frame: int, first_index: int = 0) -> list[int]:
    """MVBench's `get_index`: NUM_FRAMES segment midpoints of [start, end]·fps (whole video when
    unbounded), clipped to [first_index, max_frame]."""
    start, end = bounds if bounds else (-100000.0, 100000.0)
    start_index = max(first_index, round(start * fps))
    end_index = min(round(end * fps), max_frame)
    segment = (end_index - start_index) / NUM_FRAMES
    return [int(start_index + segment / 2 + np.round(segment * i)) for i in range(NUM_FRAMES)]


def _frame_folder(folder: pathlib.Path, bounds, where: str) -> list[bytes]:
    """Frames `00001.jpg`, `00002.jpg`, ... of a folder at FRAME_FOLDER_FPS (1-based, as MVBench)
    sampled by `frame_indices`."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: frame folder {folder} does not exist")
    count = sum(1 for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if count == 0:
        raise FileNotFoundError(f"{where}: frame folder {folder} holds no .jpg frame")
    indices = [min(max(i, 1), count) for i in frame_indices(bounds, FRAME_FOLDER_FPS, count, 1)]
    frames = [common.read_image(folder / f"{i:05d}.jpg", where) for i in indices]
    sizes = {common.image_size(frame, where) for frame in frames}
    if len(sizes) != 1:
        raise ValueError(f"{where}: frames of {folder} differ in size: {sorted(sizes)}")
    return frames


def _video_file(video: pathlib.Path, bounds, where: str) -> list[bytes]:
    """A GIF decoded with PIL, or the frame folder extracted from a video file (see the class)."""
    if video.suffix.lower() == ".gif" and video.is_file():
        with PIL.Image.open(video) as gif:
            pictures = [np.asarray(frame.convert("RGB"))
                        for frame in PIL.ImageSequence.Iterator(gif)]
        indices = frame_indices(bounds, GIF_FPS, len(pictures) - 1)
        return [common.encode_png(pictures[min(max(i, 0), len(pictures) - 1)]) for i in indices]
    extracted = video.with_suffix("")
    if extracted.is_dir():
        return _frame_folder(extracted, bounds, where)
    raise FileNotFoundError(
        f"{where}: video {video} has no extracted frame folder {extracted}/. Decoding "
        f"{video.suffix or 'video'} files needs a video decoder: run `ffmpeg -i {video} -vf "
        f"fps={FRAME_FOLDER_FPS} -q:v 2 {extracted}/%05d.jpg` (or `pip install av` and extract "
        f"the frames with it), then prepare again")
