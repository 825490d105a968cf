"""Conversations to token ids, as Hugging Face's `Qwen2_5_VLProcessor` builds them.

The chat template writes one `<|image_pad|>` (`<|video_pad|>`) per image (video); the processor then
expands it to as many pads as the vision tower gives tokens for that input: t·h·w / m², with
(t, h, w) the input's patch grid (`grid_thw`) and m the merger's `merge_size` (2×2 patches become
one token). Messages are in Hugging Face format: `{"role": ..., "content": str | [item, ...]}` with
items `{"type": "text", "text": ...}`, `{"type": "image"}` and `{"type": "video"}`.
"""

import re
from collections.abc import Sequence

import numpy as np

from pixel_jax.processing.tokenizer import SPECIAL_TOKEN_TEXT, Tokenizer

IMAGE_PAD = SPECIAL_TOKEN_TEXT["image_pad"]
VIDEO_PAD = SPECIAL_TOKEN_TEXT["video_pad"]
_VISION_PAD = re.compile(f"{re.escape(IMAGE_PAD)}|{re.escape(VIDEO_PAD)}")

# Values of `mm_token_type_ids`, as in transformers' processors.
TEXT_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN = 0, 1, 2


def render(tok: Tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """The conversation as text, through the tokenizer's own chat template (one pad per input)."""
    return tok.hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def vision_token_counts(grid_thw, merge_size: int) -> list[int]:
    """Number of LLM tokens of each input: t·h·w / merge_size² per row (t, h, w) of `grid_thw`.

    `grid_thw` is an [N, 3] array of patch grids, or None for no inputs.
    """
    if grid_thw is None:
        return []
    grid = np.asarray(grid_thw, dtype=np.int64)  # [N, 3]
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"grid_thw must have shape [N, 3], got {grid.shape}")
    if grid.size and (grid.min() <= 0 or np.any(grid[:, 1:] % merge_size)):
        raise ValueError(
            f"grid_thw rows must be positive with h and w divisible by merge_size={merge_size}, "
            f"got {grid.tolist()}"
        )
    return (grid.prod(axis=1) // merge_size**2).tolist()


def expand_vision_pads(
    text: str, image_token_counts: Sequence[int], video_token_counts: Sequence[int]
) -> str:
    """Replaces the i-th `<|image_pad|>` (`<|video_pad|>`) of `text` by `counts[i]` copies of it."""
    for pad, counts in ((IMAGE_PAD, image_token_counts), (VIDEO_PAD, video_token_counts)):
        if text.count(pad) != len(counts):
            raise ValueError(
                f"text has {text.count(pad)} {pad} placeholders but {len(counts)} token counts "
                "were given"
            )
    remaining = {IMAGE_PAD: iter(image_token_counts), VIDEO_PAD: iter(video_token_counts)}
    return _VISION_PAD.sub(lambda match: match[0] * next(remaining[match[0]]), text)


def encode_conversation(
    tok: Tokenizer,
    messages: list[dict],
    image_grid_thw=None,
    video_grid_thw=None,
    merge_size: int = 2,
    add_generation_prompt: bool = True,
) -> dict[str, np.ndarray]:
    """Token ids of a conversation with every image (video) expanded to its number of pads.

    `image_grid_thw` / `video_grid_thw`: [N, 3] patch grids of the images / videos, in the order
    they appear in `messages` (None when there are none). Returns
    `input_ids` int32 [T] and `mm_token_type_ids` int32 [T] (0 text, 1 image pad, 2 video pad).
    """
    if tok.special.image_pad is None or tok.special.video_pad is None:
        raise ValueError(f"the tokenizer's vocabulary lacks {IMAGE_PAD} or {VIDEO_PAD}")
    text = expand_vision_pads(
        render(tok, messages, add_generation_prompt=add_generation_prompt),
        vision_token_counts(image_grid_thw, merge_size),
        vision_token_counts(video_grid_thw, merge_size),
    )
    input_ids = np.asarray(tok.encode(text), dtype=np.int32)  # [T]
    mm_token_type_ids = np.full_like(input_ids, TEXT_TOKEN)  # [T]
    mm_token_type_ids[input_ids == tok.special.image_pad] = IMAGE_TOKEN
    mm_token_type_ids[input_ids == tok.special.video_pad] = VIDEO_TOKEN
    return {"input_ids": input_ids, "mm_token_type_ids": mm_token_type_ids}


def left_pad_batch(sequences: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Stacks 1-D id arrays into a batch, padded on the left (so all rows end at the last column).

    Returns `input_ids` int32 [B, T] and `attention_mask` int32 [B, T] (1 on real tokens), with T
    the longest sequence's length.
    """
    if not sequences:
        raise ValueError("left_pad_batch needs at least one sequence, got none")
    rows = [np.asarray(sequence) for sequence in sequences]
    for index, row in enumerate(rows):
        if row.ndim != 1:
            raise ValueError(f"sequence {index} must be 1-D, got shape {row.shape}")
    length = max(row.shape[0] for row in rows)
    input_ids = np.full((len(rows), length), pad_id, dtype=np.int32)  # [B, T]
    attention_mask = np.zeros((len(rows), length), dtype=np.int32)  # [B, T]
    for index, row in enumerate(rows):
        if row.shape[0]:
            input_ids[index, -row.shape[0]:] = row
            attention_mask[index, -row.shape[0]:] = 1
    return input_ids, attention_mask
