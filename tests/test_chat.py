"""Chat template rendering, vision pad expansion, conversation encoding, left padding."""

import types

import numpy as np
import pytest
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

from pixel_jax.processing.chat import (
    encode_conversation,
    expand_vision_pads,
    left_pad_batch,
    render,
    vision_token_counts,
)
from pixel_jax.processing.tokenizer import load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You zoom in when details are small."},
    {"role": "user", "content": [
        {"type": "image"},
        {"type": "text", "text": "What number is on the sign?"},
    ]},
    {"role": "assistant", "content": "The sign shows \\boxed{42}."},
]
VIDEO_CONVERSATION = [
    {"role": "user", "content": [
        {"type": "video"},
        {"type": "text", "text": "Compare:"},
        {"type": "image"},
        {"type": "image"},
    ]},
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def hf_processor(tok):
    """Hugging Face's Qwen2.5-VL processor, as the reference for pad expansion and token types.

    Its constructor needs torchvision (for the video processor), which we never install; the
    methods under test only read the attributes set here.
    """
    processor = object.__new__(Qwen2_5_VLProcessor)
    processor.image_token, processor.video_token = "<|image_pad|>", "<|video_pad|>"
    processor.image_token_id = tok.special.image_pad
    processor.video_token_id = tok.special.video_pad
    processor.image_processor = types.SimpleNamespace(merge_size=2)
    processor.video_processor = types.SimpleNamespace(merge_size=2)
    return processor


def test_render_matches_the_qwen2_5_vl_template(tok):
    assert render(tok, CONVERSATION, add_generation_prompt=False) == (
        "<|im_start|>system\nYou zoom in when details are small.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "What number is on the sign?<|im_end|>\n"
        "<|im_start|>assistant\nThe sign shows \\boxed{42}.<|im_end|>\n"
    )


def test_render_adds_the_default_system_turn_and_the_generation_prompt(tok):
    assert render(tok, VIDEO_CONVERSATION, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Compare:"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_numbers_inputs_with_add_vision_id(tok):
    text = tok.hf.apply_chat_template(
        VIDEO_CONVERSATION[:1], tokenize=False, add_generation_prompt=False, add_vision_id=True
    )
    assert text.endswith(
        "<|im_start|>user\nVideo 1: <|vision_start|><|video_pad|><|vision_end|>Compare:"
        "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
        "Picture 2: <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
    )


def test_vision_token_counts_divide_the_grid_by_the_merge_area():
    assert vision_token_counts([[1, 4, 6], [2, 8, 8], [1, 2, 2]], merge_size=2) == [6, 32, 1]
    assert vision_token_counts([[1, 6, 9]], merge_size=3) == [6]
    assert vision_token_counts(None, merge_size=2) == []


@pytest.mark.parametrize("grid", [[[1, 4, 5]], [[0, 4, 4]], [1, 4, 4], [[1, 4]]])
def test_vision_token_counts_reject_bad_grids(grid):
    with pytest.raises(ValueError, match="grid_thw"):
        vision_token_counts(grid, merge_size=2)


def test_expand_vision_pads_repeats_each_pad_by_its_count():
    text = "a<|image_pad|>b<|video_pad|>c<|image_pad|>"
    assert expand_vision_pads(text, [2, 3], [1]) == (
        "a<|image_pad|><|image_pad|>b<|video_pad|>c<|image_pad|><|image_pad|><|image_pad|>"
    )


def test_expand_vision_pads_rejects_a_count_per_pad_mismatch():
    with pytest.raises(ValueError, match=r"1 <\|image_pad\|> placeholders but 2 token counts"):
        expand_vision_pads("<|image_pad|>", [4, 4], [])


def test_encode_conversation_matches_the_hf_processor(tok, hf_processor):
    image_grid_thw = np.array([[1, 4, 6], [1, 2, 4]])  # 6 and 2 tokens
    video_grid_thw = np.array([[2, 4, 4]])  # 8 tokens
    encoded = encode_conversation(tok, VIDEO_CONVERSATION, image_grid_thw, video_grid_thw)

    image_pads = [hf_processor.replace_image_token({"image_grid_thw": image_grid_thw}, i)
                  for i in range(2)]
    video_pads = [hf_processor.replace_video_token({"video_grid_thw": video_grid_thw}, 0)]
    template_text = render(tok, VIDEO_CONVERSATION, add_generation_prompt=True)
    [expected_text], _ = hf_processor.get_text_with_replacements(
        [template_text], image_pads, video_pads
    )
    expected_ids = tok.hf(expected_text)["input_ids"]
    [expected_types] = hf_processor.create_mm_token_type_ids([expected_ids])

    assert encoded["input_ids"].dtype == np.int32 and encoded["mm_token_type_ids"].dtype == np.int32
    np.testing.assert_array_equal(encoded["input_ids"], expected_ids)
    np.testing.assert_array_equal(encoded["mm_token_type_ids"], expected_types)
    assert np.bincount(encoded["mm_token_type_ids"]).tolist()[1:] == [6 + 2, 8]


def test_encode_conversation_places_pads_between_vision_markers(tok):
    encoded = encode_conversation(tok, CONVERSATION, [[1, 4, 4]], None, add_generation_prompt=False)
    ids = encoded["input_ids"].tolist()
    start = ids.index(tok.special.vision_start)
    assert ids[start + 1:start + 6] == [tok.special.image_pad] * 4 + [tok.special.vision_end]
    assert encoded["mm_token_type_ids"].tolist() == [int(i == tok.special.image_pad) for i in ids]
    assert ids[-2:] == [tok.special.im_end, *tok.encode("\n")]


def test_encode_conversation_rejects_missing_grids(tok):
    with pytest.raises(ValueError, match=r"1 <\|image_pad\|> placeholders but 0 token counts"):
        encode_conversation(tok, CONVERSATION, None, None)


def test_left_pad_batch_right_aligns_rows():
    input_ids, attention_mask = left_pad_batch(
        [np.array([5, 6, 7]), np.array([8]), np.array([], dtype=np.int32)], pad_id=0
    )
    np.testing.assert_array_equal(input_ids, [[5, 6, 7], [0, 0, 8], [0, 0, 0]])
    np.testing.assert_array_equal(attention_mask, [[1, 1, 1], [0, 0, 1], [0, 0, 0]])
    assert input_ids.dtype == np.int32 and attention_mask.dtype == np.int32


def test_left_pad_batch_uses_the_pad_id():
    input_ids, _ = left_pad_batch([[1, 2], [3]], pad_id=1984)
    np.testing.assert_array_equal(input_ids, [[1, 2], [1984, 3]])


@pytest.mark.parametrize("sequences, message", [
    ([], "at least one sequence"),
    ([np.zeros((2, 2), np.int32)], "sequence 0 must be 1-D"),
])
def test_left_pad_batch_rejects_bad_input(sequences, message):
    with pytest.raises(ValueError, match=message):
        left_pad_batch(sequences, pad_id=0)
