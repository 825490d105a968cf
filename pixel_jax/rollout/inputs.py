"""The rollout engine's inputs for a pipeline batch: the protocol's prompt, tokenised and
left-padded, the view patchified, and the original picture the tools crop from.

Shared by every phase that rolls out (SFT replay, GRPO, evaluation), so that all of them ask the
same question in the same words, at the same view size, with the same tool schemas.
"""

from __future__ import annotations

import numpy as np

from pixel_jax.data.example import Example
from pixel_jax.data.pipeline import Batch
from pixel_jax.processing import chat
from pixel_jax.processing import image as image_processing
from pixel_jax.processing.tokenizer import Tokenizer
from pixel_jax.tools.protocols import ToolProtocol


def question_text(example: Example) -> str:
    """The question as the prompt asks it: multiple-choice options follow as "(A) text" lines."""
    options = [f"({chr(ord('A') + i)}) {option}" for i, option in enumerate(example.options)]
    return "\n".join([example.question, *options])


def prompt_ids(protocol: ToolProtocol, tok: Tokenizer, question: str,
               view_wh: tuple[int, int]) -> np.ndarray:
    """Token ids [P] of the protocol's prompt about one image shown at view_wh (multiples of 28):
    system and user turns, the assistant turn opened, the protocol's assistant prefix appended."""
    grid = np.array([image_processing.patch_grid(1, view_wh[1], view_wh[0])])  # [1, 3]
    text = chat.render(tok, protocol.prompt_messages(question, view_wh)) + protocol.assistant_prefix
    text = chat.expand_vision_pads(text, chat.vision_token_counts(grid, merge_size=2), [])
    return np.asarray(tok.encode(text), np.int32)


def rollout_inputs(batch: Batch, protocol: ToolProtocol, tok: Tokenizer,
                   prompt_len: int) -> dict[str, np.ndarray]:
    """The engine's inputs for a pipeline batch of images: input_ids [B, P] (left-padded to
    prompt_len), attention_mask, pixel_values [B, P0, patch_dim] uint8 (raw patches: the vision tower
    normalizes them, and a learner batch holding them is 4x smaller than float32), image_grid_thw [B, 3],
    original [B, Hc, Wc, 3], original_wh [B, 2], view_wh [B, 2]."""
    if batch.view.shape[1] != 1:
        raise ValueError(f"rollout_inputs takes image batches; this one holds videos of "
                         f"{batch.view.shape[1]} frame slots")
    views = batch.view[:, 0]  # [B, Hv, Wv, 3]
    height, width = views.shape[1:3]
    grid = np.array(image_processing.patch_grid(1, height, width))  # [3]
    input_ids = np.zeros((len(views), prompt_len), np.int32)  # [B, P]
    attention_mask = np.zeros((len(views), prompt_len), np.int32)  # [B, P]
    for row, example in enumerate(batch.examples):
        ids = prompt_ids(protocol, tok, question_text(example), (width, height))
        if len(ids) > prompt_len:
            raise ValueError(f"example {example.id!r}: its prompt has {len(ids)} tokens, more than "
                             f"prompt_len={prompt_len}")
        input_ids[row, prompt_len - len(ids):] = ids
        attention_mask[row, prompt_len - len(ids):] = 1
    return dict(
        input_ids=input_ids, attention_mask=attention_mask,
        pixel_values=np.stack([image_processing.patchify(view[None]) for view in views]),
        image_grid_thw=np.tile(grid, (len(views), 1)).astype(np.int32),
        original=batch.original[:, 0], original_wh=batch.original_size[:, ::-1].astype(np.int32),
        view_wh=np.tile([width, height], (len(views), 1)).astype(np.int32))
