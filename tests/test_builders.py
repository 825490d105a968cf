"""Every TFDS builder on a tiny fixture in its release's format, read back through
tfds.data_source (array_record, no TensorFlow) and `example.from_record`."""

import json

import numpy as np
import pytest

import data_fixtures as fx
from pixel_jax.data import builders
from pixel_jax.data.builders import mvbench, pixel_reasoner
from pixel_jax.data.example import from_record


def load(name, split, tmp_path, manual_dir):
    """{id: Example} of a prepared split (stored order is hashed, so look examples up by id)."""
    source = builders.load_source(name, split, data_dir=tmp_path / "data", manual_dir=manual_dir)
    examples = [from_record(source[i]) for i in range(len(source))]
    return {example.id: example for example in examples}


def test_registry_lists_every_builder():
    assert builders.BUILDERS.names() == (
        "hr_bench", "infographics_vqa", "mvbench", "pixel_reasoner_rl", "pixel_reasoner_sft",
        "tallyqa", "textvqa", "vstar_bench")
    with pytest.raises(ValueError, match="unknown dataset builder 'vstar'.*'vstar_bench'"):
        builders.load_source("vstar", "test", data_dir="unused")


# ------------------------------------------------------------------------------ V* Bench


def test_vstar_official_order_from_jsonl(tmp_path):
    images = fx.vstar(tmp_path / "manual", with_jsonl=True)
    examples = load("vstar_bench", "test", tmp_path, tmp_path / "manual")
    assert sorted(examples) == ["vstar_bench/direct_attributes/sa_10",
                                "vstar_bench/direct_attributes/sa_11",
                                "vstar_bench/relative_position/sa_12"]
    cup = examples["vstar_bench/direct_attributes/sa_10"]
    assert cup.options == ("white", "green", "red", "blue") and cup.answers == ("C",)
    assert cup.question == "What is the colour of the cup?"
    assert cup.answer_metric == "multiple_choice" and cup.category == "direct_attributes"
    assert cup.target_boxes == ((4.0, 6.0, 14.0, 14.0),) and cup.needs_zoom
    np.testing.assert_array_equal(cup.image, fx.decoded(images["direct_attributes/sa_10"]))
    spatial = examples["vstar_bench/relative_position/sa_12"]
    assert spatial.options == ("right", "left") and spatial.answers == ("B",)
    assert spatial.target_boxes == ((1.0, 2.0, 6.0, 7.0), (20.0, 10.0, 28.0, 19.0))
    assert spatial.target_box == (1.0, 2.0, 28.0, 19.0)


def test_vstar_without_jsonl_shows_a_fixed_permutation(tmp_path):
    fx.vstar(tmp_path / "manual", with_jsonl=False)
    examples = load("vstar_bench", "test", tmp_path, tmp_path / "manual")
    hat = examples["vstar_bench/direct_attributes/sa_11"]
    assert sorted(hat.options) == ["cotton", "leather", "straw", "wool"]
    assert hat.options[ord(hat.answers[0]) - ord("A")] == "wool"  # options[0] is the correct one


def test_vstar_errors_name_the_missing_field_and_file(tmp_path):
    manual = tmp_path / "manual"
    fx.vstar(manual, with_jsonl=False)
    annotation = json.loads((manual / "direct_attributes" / "sa_10.json").read_text())
    del annotation["bbox"]
    fx.write_json(manual / "direct_attributes" / "sa_10.json", annotation)
    with pytest.raises(ValueError, match=r"sa_10\.json: missing field 'bbox'"):
        load("vstar_bench", "test", tmp_path, manual)
    annotation["bbox"] = [[0, 0, 5, 5]]
    fx.write_json(manual / "direct_attributes" / "sa_10.json", annotation)
    (manual / "relative_position" / "sa_12.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"sa_12\.json: no image sa_12"):
        load("vstar_bench", "test", tmp_path, manual)


def test_missing_manual_dir_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere does not exist.*craigwu/vstar_bench"):
        load("vstar_bench", "test", tmp_path, tmp_path / "nowhere")


# ------------------------------------------------------------------------------ HR-Bench


@pytest.mark.parametrize("fmt", ["parquet", "tsv"])
def test_hr_bench_shared_images_and_cycles(tmp_path, fmt):
    images = fx.hr_bench(tmp_path / "manual", "8k", fmt)
    examples = load("hr_bench/8k", "test", tmp_path, tmp_path / "manual")
    assert sorted(examples) == ["hr_bench_8k/0", "hr_bench_8k/1", "hr_bench_8k/2"]
    for index, data in images.items():
        np.testing.assert_array_equal(examples[f"hr_bench_8k/{index}"].image, fx.decoded(data))
    second_order = examples["hr_bench_8k/1"]
    assert second_order.options == ("green", "blue", "black", "red")
    assert second_order.answers == ("A",) and second_order.group == "8k/q0"
    assert second_order.category == "single" and examples["hr_bench_8k/2"].category == "cross"


def test_hr_bench_missing_file_names_the_patterns(tmp_path):
    fx.hr_bench(tmp_path / "manual", "8k", "tsv")
    with pytest.raises(FileNotFoundError, match=r"HR-Bench 4k: no file matching "
                                                r"\['hr_bench_4k.parquet', 'hr_bench_4k.tsv'\]"):
        load("hr_bench/4k", "test", tmp_path, tmp_path / "manual")


def test_hr_bench_bad_rows(tmp_path):
    (tmp_path / "manual").mkdir()
    rows, _ = fx.hr_bench_rows()
    rows[0], rows[1] = rows[1], rows[0]  # the reference now comes before its image
    fx.write_parquet(tmp_path / "manual" / "hr_bench_4k.parquet", rows)
    with pytest.raises(ValueError, match=r"row index 1: image refers to row index 0, which is "
                                         r"not an earlier row"):
        load("hr_bench/4k", "test", tmp_path, tmp_path / "manual")
    for row in rows:
        del row["cycle_category"]
    fx.write_parquet(tmp_path / "manual" / "hr_bench_4k.parquet", rows)
    with pytest.raises(ValueError, match=r"missing columns \['cycle_category'\]"):
        load("hr_bench/4k", "test", tmp_path, tmp_path / "manual")


# ------------------------------------------------------------------------------ TextVQA, InfoVQA


def test_textvqa_val_and_test(tmp_path):
    images = fx.textvqa(tmp_path / "manual")
    val = load("textvqa", "validation", tmp_path, tmp_path / "manual")["textvqa/34602"]
    assert val.answer_metric == "vqa" and len(val.answers) == 10 and val.answers[7] == "stop sign"
    np.testing.assert_array_equal(val.image, fx.decoded(images["aa01"]))
    test = load("textvqa", "test", tmp_path, tmp_path / "manual")["textvqa/40000"]
    assert test.answers == () and test.question == "what brand is this?"
    np.testing.assert_array_equal(test.image, fx.decoded(images["bb02"]))


def test_textvqa_missing_image_names_it(tmp_path):
    fx.textvqa(tmp_path / "manual")
    (tmp_path / "manual" / "train_images" / "aa01.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"record 0: file .*train_images/aa01\.jpg does "
                                                r"not exist"):
        load("textvqa", "validation", tmp_path, tmp_path / "manual")


def test_infographics_vqa(tmp_path):
    image = fx.infovqa(tmp_path / "manual")
    example = load("infographics_vqa", "validation", tmp_path,
                   tmp_path / "manual")["infographics_vqa/65718"]
    assert example.answers == ("35%", "35") and example.answer_metric == "anls"
    assert example.category == "Single span"
    np.testing.assert_array_equal(example.image, fx.decoded(image))


# ------------------------------------------------------------------------------ TallyQA


def test_tallyqa_simple_and_complex(tmp_path):
    images = fx.tallyqa(tmp_path / "manual")
    examples = load("tallyqa", "test", tmp_path, tmp_path / "manual")
    simple, complex_ = examples["tallyqa/test/7"], examples["tallyqa/test/8"]
    assert (simple.category, simple.answers) == ("simple", ("4",))
    assert (complex_.category, complex_.answers) == ("complex", ("0",))
    assert simple.answer_metric == "counting"
    np.testing.assert_array_equal(complex_.image, fx.decoded(images[8]))


def test_tallyqa_bad_answer(tmp_path):
    fx.tallyqa(tmp_path / "manual")
    rows = json.loads((tmp_path / "manual" / "test.json").read_text())
    rows[1]["answer"] = "two"
    fx.write_json(tmp_path / "manual" / "test.json", rows)
    with pytest.raises(ValueError, match=r"test\.json, record 1: answer must be a count"):
        load("tallyqa", "test", tmp_path, tmp_path / "manual")


# ------------------------------------------------------------------------------ MVBench


def test_mvbench_frame_index_sampling_matches_the_reference():
    # get_index(bound=(0, 2), fps=3, max_frame=6, first_idx=1), 16 segments: start 1, end 6,
    # segment 5/16 → int(1 + 5/32 + np.round(5/16 · i)); np.round(2.5) = 2 at i = 8.
    assert mvbench.frame_indices((0.0, 2.0), 3, 6, 1) == [1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5,
                                                          5, 5, 6]
    # A 5-frame GIF, unbounded: start 0, end 4, segment 1/4 → int(1/8 + np.round(i/4)).
    assert mvbench.frame_indices(None, 25, 4) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 4, 4]


def test_mvbench_frame_folder_gif_and_extracted_video(tmp_path):
    videos = fx.mvbench(tmp_path / "manual")
    examples = load("mvbench", "test", tmp_path, tmp_path / "manual")
    episodic = examples["mvbench/episodic_reasoning/0"]
    assert episodic.frames.shape == (16, 16, 24, 3)
    assert episodic.options == ("a cup", "a book", "a phone") and episodic.answers == ("B",)
    assert episodic.category == "episodic_reasoning"
    for frame, index in zip(episodic.frames, mvbench.frame_indices((0.0, 2.0), 3, 6, 1)):
        np.testing.assert_array_equal(frame, fx.decoded(videos["clip_1"][index - 1]))
    walk = examples["mvbench/action_antonym/0"]
    assert walk.frames.shape == (16, 20, 20, 3) and walk.answers == ("B",)
    for frame, index in zip(walk.frames, mvbench.frame_indices(None, 25, 4)):
        np.testing.assert_array_equal(frame, fx.decoded(videos["walk.gif"][index]))
    wave = examples["mvbench/action_antonym/1"]
    np.testing.assert_array_equal(wave.frames[-1], fx.decoded(videos["wave"][2]))


def test_mvbench_video_without_frames_says_what_to_do(tmp_path):
    fx.mvbench(tmp_path / "manual")
    for frame in (tmp_path / "manual" / "video" / "ssv2_video" / "wave").iterdir():
        frame.unlink()
    (tmp_path / "manual" / "video" / "ssv2_video" / "wave").rmdir()
    with pytest.raises(FileNotFoundError, match=r"video .*wave\.mp4 has no extracted frame "
                                                r"folder.*ffmpeg -i .*wave\.mp4 -vf fps=3"):
        load("mvbench", "test", tmp_path, tmp_path / "manual")


# ------------------------------------------------------------------------------ Pixel Reasoner


def test_pixel_reasoner_rl(tmp_path):
    images = fx.pixel_reasoner_rl(tmp_path / "manual")
    examples = load("pixel_reasoner_rl", "train", tmp_path, tmp_path / "manual")
    choice = examples["pixel_reasoner_rl/train/mc1"]
    assert choice.question == "What is on the table?"
    assert choice.options == ("a cup", "a plate") and choice.answers == ("B",)
    np.testing.assert_array_equal(choice.image, fx.decoded(images["images/a.jpg"]))
    count = examples["pixel_reasoner_rl/train/count1"]
    assert (count.answer_metric, count.answers) == ("counting", ("3",))
    video = examples["pixel_reasoner_rl/train/video1"]
    assert video.frames.shape == (3, 16, 24, 3) and video.answers == ("A",)
    np.testing.assert_array_equal(video.frames[2], fx.decoded(images["videos/v1/2.jpg"]))


def test_split_choices():
    assert pixel_reasoner.split_choices("Which?\nchoices:\nA: x y\nB: z\n") == ("Which?",
                                                                             ["x y", "z"])
    assert pixel_reasoner.split_choices("How many?") == ("How many?", [])


def test_pixel_reasoner_sft_conversations(tmp_path):
    images = fx.pixel_reasoner_sft(tmp_path / "manual")
    examples = load("pixel_reasoner_sft", "train", tmp_path, tmp_path / "manual")
    zoom = examples["pixel_reasoner_sft/sft_img"]
    assert zoom.question == "What is written on the sign?" and zoom.answers == ("OPEN",)
    assert zoom.needs_zoom and zoom.kind == "trajectory"
    conversation = json.loads(zoom.conversation)
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user",
                                                 "assistant"]
    assert conversation[3]["content"][1] == {"type": "image", "index": 1}
    np.testing.assert_array_equal(zoom.conversation_image(0), fx.decoded(images["q.jpg"]))
    np.testing.assert_array_equal(zoom.conversation_image(1), fx.decoded(images["crop1.jpg"]))
    video = examples["pixel_reasoner_sft/pixel_reasoner_sft/1"]
    assert video.frames.shape == (2, 16, 24, 3) and not video.needs_zoom
    assert video.answers == ("ball",)
    assert json.loads(video.conversation)[0]["content"][1] == {"type": "video"}


def test_pixel_reasoner_sft_missing_message_list(tmp_path):
    fx.write_json(tmp_path / "manual" / "sft.json", [{"qid": "x"}])
    with pytest.raises(ValueError, match=r"sft\.json, record 0: missing field 'message_list'"):
        load("pixel_reasoner_sft", "train", tmp_path, tmp_path / "manual")
