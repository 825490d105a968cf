"""Tiny copies of the published dataset releases, in their on-disk formats (DATASETS.md).

Each writer fills a folder as the builder's docstring asks and returns what the test needs to
check the builder's output.
"""

import base64
import io
import json
import pathlib

import numpy as np
import PIL.Image


def picture(width: int, height: int, seed: int) -> np.ndarray:
    """A [H, W, 3] uint8 picture that differs per seed."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: pathlib.Path, width: int, height: int, seed: int) -> bytes:
    """Writes a picture in the format its suffix names; returns the file's bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encoded(picture(width, height, seed), "PNG" if path.suffix == ".png" else "JPEG")
    path.write_bytes(data)
    return data


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))


def write_json(path: pathlib.Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_parquet(path: pathlib.Path, rows: list[dict]) -> None:
    import pyarrow
    import pyarrow.parquet

    path.parent.mkdir(parents=True, exist_ok=True)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)


# ------------------------------------------------------------------------------ V* Bench


def vstar(root: pathlib.Path, with_jsonl: bool) -> dict[str, bytes]:
    """Two direct_attributes questions and one relative_position question → {key: image bytes}."""
    annotations = {
        "direct_attributes/sa_10": dict(target_object=["cup"], bbox=[[4, 6, 10, 8]],
                                        question="What is the colour of the cup?",
                                        options=["red", "blue", "green", "white"]),
        "direct_attributes/sa_11": dict(target_object=["hat"], bbox=[[30, 20, 20, 20]],
                                        question="What is the material of the hat?",
                                        options=["wool", "straw", "leather", "cotton"]),
        "relative_position/sa_12": dict(target_object=["dog", "car"],
                                        bbox=[[1, 2, 5, 5], [20, 10, 8, 9]],
                                        question="Is the dog on the left or right of the car?",
                                        options=["left", "right"]),
    }
    images = {}
    for index, (key, annotation) in enumerate(annotations.items()):
        write_json(root / f"{key}.json", annotation)
        images[key] = write_image(root / f"{key}.jpg", 48, 32, seed=index)
    if with_jsonl:
        rows = [{"image": "direct_attributes/sa_10.jpg", "category": "direct_attributes",
                 "question_id": 0, "label": "C",
                 "text": "What is the colour of the cup?\n(A) white\n(B) green\n(C) red\n(D) blue\n"
                         "Answer with the option's letter from the given choices directly."},
                {"image": "direct_attributes/sa_11.jpg", "category": "direct_attributes",
                 "question_id": 1, "label": "A",
                 "text": "What is the material of the hat?\n(A) wool\n(B) straw\n(C) leather\n"
                         "(D) cotton\nAnswer with the option's letter."},
                {"image": "relative_position/sa_12.jpg", "category": "relative_position",
                 "question_id": 2, "label": "B",
                 "text": "Is the dog on the left or right of the car?\n(A) right\n(B) left\n"
                         "Answer with the option's letter."}]
        (root / "test_questions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return images


# ------------------------------------------------------------------------------ HR-Bench


HR_BENCH_COLUMNS = ("index", "question", "answer", "category", "A", "B", "C", "D",
                    "cycle_category", "image")


def hr_bench_rows() -> tuple[list[dict], dict[int, bytes]]:
    """One question in 2 option orders (rows 0, 1: row 1 refers to row 0's image) and one
    cross-instance question (row 2) → (rows, {index: image bytes each row shows})."""
    first, second = encoded(picture(40, 30, 1), "JPEG"), encoded(picture(30, 40, 2), "PNG")
    rows = [
        dict(index=0, question="What colour is the sign?", answer="B", category="single",
             A="red", B="green", C="blue", D="black", cycle_category="q0",
             image=base64.b64encode(first).decode()),
        dict(index=1, question="What colour is the sign?", answer="A", category="single",
             A="green", B="blue", C="black", D="red", cycle_category="q0", image="0"),
        dict(index=2, question="Which is larger?", answer="D", category="cross",
             A="the car", B="the bus", C="the bike", D="the truck", cycle_category="q1",
             image=base64.b64encode(second).decode()),
    ]
    return rows, {0: first, 1: first, 2: second}


def hr_bench(root: pathlib.Path, resolution: str, fmt: str) -> dict[int, bytes]:
    rows, images = hr_bench_rows()
    path = root / f"hr_bench_{resolution}.{fmt}"
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        write_parquet(path, rows)
    else:
        lines = ["\t".join(HR_BENCH_COLUMNS)]
        lines += ["\t".join(str(row[c]) for c in HR_BENCH_COLUMNS) for row in rows]
        path.write_text("\n".join(lines) + "\n")
    return images


# ------------------------------------------------------------------------------ TextVQA, InfoVQA


def textvqa(root: pathlib.Path) -> dict[str, bytes]:
    answers = ["stop"] * 7 + ["stop sign", "top", "stop"]
    records = {
        "val": [dict(question="what does the sign say?", image_id="aa01", question_id=34602,
                     answers=answers, set_name="val", image_classes=["Sign"], image_width=40,
                     image_height=30)],
        "test": [dict(question="what brand is this?", image_id="bb02", question_id=40000,
                      set_name="test", image_classes=["Bottle"], image_width=40,
                      image_height=30)],
    }
    for split, data in records.items():
        write_json(root / f"TextVQA_0.5.1_{split}.json",
                   dict(dataset_type=split, dataset_name="textvqa", dataset_version="0.5.1",
                        data=data))
    return {"aa01": write_image(root / "train_images" / "aa01.jpg", 40, 30, seed=3),
            "bb02": write_image(root / "test_images" / "bb02.jpg", 40, 30, seed=4)}


def infovqa(root: pathlib.Path) -> bytes:
    record = dict(questionId=65718, question="What percentage of users are under 30?",
                  image_local_name="37313.jpeg", image_url="https://example/37313.jpeg",
                  ocr_output_file="37313.json", answers=["35%", "35"], data_split="val",
                  answer_type=["Single span"], evidence=["Text"],
                  **{"operation/reasoning": []})
    write_json(root / "infographicVQA_val_v1.0_withQT.json",
               dict(dataset_name="infographicsVQA", dataset_version="1.0",
                    dataset_split="val", data=[record]))
    return write_image(root / "infographicsvqa_images" / "37313.jpeg", 30, 50, seed=5)


# ------------------------------------------------------------------------------ TallyQA


def tallyqa(root: pathlib.Path) -> dict[int, bytes]:
    rows = [dict(answer=4, data_source="imported_genome", image="VG_100K_2/2410408.jpg",
                 image_id=2410408, issimple=True, question="How many dogs are there?",
                 question_id=7),
            dict(answer=0, data_source="amt", image="val2014/COCO_val2014_000000000042.jpg",
                 image_id=42, issimple=False, question="How many cats are on the sofa?",
                 question_id=8)]
    write_json(root / "test.json", rows)
    return {7: write_image(root / "VG_100K_2" / "2410408.jpg", 40, 30, seed=6),
            8: write_image(root / "val2014" / "COCO_val2014_000000000042.jpg", 40, 30, seed=7)}


# ------------------------------------------------------------------------------ MVBench


def mvbench(root: pathlib.Path, frame_count: int = 6) -> dict[str, list[bytes]]:
    """episodic_reasoning (a frame folder, bounded) and action_antonym (one GIF, one mp4 with an
    extracted frame folder) → {video name: its frames, in order}."""
    write_json(root / "json" / "episodic_reasoning.json",
               [dict(video="clip_1", question="What does Sheldon hold?",
                     candidates=["a cup", "a book", "a phone"], answer="a book",
                     start=0.0, end=2.0)])
    write_json(root / "json" / "action_antonym.json",
               [dict(video="walk.gif", question="What is the action?",
                     candidates=["walking", "running"], answer="running"),
                dict(video="wave.mp4", question="What is the action?",
                     candidates=["waving", "sitting"], answer="waving")])
    folder = root / "video" / "tvqa" / "frames_fps3_hq" / "clip_1"
    clip = [write_image(folder / f"{i:05d}.jpg", 24, 16, seed=10 + i)
            for i in range(1, frame_count + 1)]
    gif_frames = [picture(20, 20, seed=30 + i) // 64 * 64 for i in range(5)]  # 64 colours
    gif_path = root / "video" / "ssv2_video" / "walk.gif"
    gif_path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(gif_frames[0]).save(
        gif_path, save_all=True, append_images=[PIL.Image.fromarray(f) for f in gif_frames[1:]])
    (root / "video" / "ssv2_video" / "wave.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    wave_folder = root / "video" / "ssv2_video" / "wave"
    wave = [write_image(wave_folder / f"{i:05d}.jpg", 16, 16, seed=50 + i) for i in range(1, 4)]
    return {"clip_1": clip, "walk.gif": [encoded(f, "PNG") for f in gif_frames], "wave": wave}


# ------------------------------------------------------------------------------ Pixel Reasoner


def pixel_reasoner_rl(root: pathlib.Path) -> dict[str, bytes]:
    images = {"images/a.jpg": write_image(root / "images" / "a.jpg", 40, 30, seed=60),
              "images/b.png": write_image(root / "images" / "b.png", 30, 30, seed=61)}
    frames = [f"videos/v1/{i}.jpg" for i in range(3)]
    for i, path in enumerate(frames):
        images[path] = write_image(root / path, 24, 16, seed=62 + i)
    rows = [
        dict(qid="mc1", question="<image>\nWhat is on the table?\nchoices:\nA: a cup\nB: a plate",
             image=["images/a.jpg"], is_video=None, answer=["\\boxed{B}"]),
        dict(qid="count1", question="<image>\nHow many birds are there?",
             image=["images/b.png"], is_video=False, answer=["\\boxed{3}"]),
        dict(qid="video1", question="<image>\nWhat happens first?\nchoices:\nA: jump\nB: run",
             image=frames, is_video=True, answer=["\\boxed{jump}"]),
    ]
    write_parquet(root / "release.parquet", rows)
    return images


def pixel_reasoner_sft(root: pathlib.Path) -> dict[str, bytes]:
    images = {name: write_image(root / "sft_images" / name, w, h, seed=70 + i)
              for i, (name, w, h) in enumerate([("q.jpg", 60, 40), ("crop1.jpg", 30, 30),
                                                 ("f0.jpg", 24, 16), ("f1.jpg", 24, 16)])}
    image_record = {"qid": "sft_img", "message_list": [
        {"role": "system", "content": [{"text": "You are a helpful assistant."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is written on the sign?"},
                                     {"image": "sft_images/q.jpg"}]},
        {"role": "assistant", "content": [{"text": 'The sign is small. <tool_call>{"name": '
                                                   '"crop_image_normalized", "arguments": '
                                                   '{"bbox_2d": [0.1, 0.1, 0.4, 0.4], '
                                                   '"target_image": 1}}</tool_call>'}]},
        {"role": "user", "content": [{"text": "Here is the cropped image:"},
                                     {"image": "sft_images/crop1.jpg"}]},
        {"role": "assistant", "content": "It reads OPEN. \\boxed{OPEN}"},
    ]}
    video_record = {"message_list": [
        {"role": "user", "content": [{"text": "What moves?"},
                                     {"video": ["sft_images/f0.jpg", "sft_images/f1.jpg"]}]},
        {"role": "assistant", "content": [{"text": "A ball moves. \\boxed{ball}"}]},
    ]}
    write_json(root / "pixel_reasoner_sft.json", [image_record, video_record])
    return images
