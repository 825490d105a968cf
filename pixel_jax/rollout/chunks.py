"""Host-side tables of the token chunks injected after a tool call.

A chunk is the protocol's result text with the new images' pad tokens in it, or its error text.
Its tokens depend on (the call's index, how many images were shown before it, the outcome), so
the tables are indexed [call, shown, outcome]: outcome e < len(ToolError) is the error e's text;
outcome len(ToolError) + k − 1 is the success text showing k images (k ≤ images_per_call; a zoom
shows 1, select_frames up to max_frames). Rows are padded to the longest chunk (the padding
becomes holes in the cache). Positions come from `get_rope_index` of each chunk alone, so they
follow exactly the rule the model was trained with.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from pixel_jax.models.qwen2_5_vl.rope_index import get_rope_index
from pixel_jax.processing.tokenizer import Tokenizer
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols.base import InjectedText, ToolProtocol

N_ERRORS = len(ToolError)


def success_outcome(num_images):
    """Outcome index of a successful call showing num_images images (works on arrays)."""
    return N_ERRORS + num_images - 1


def shown_slots(max_calls: int, images_per_call: int) -> int:
    """How many values `shown` (images before a call, from 1) can take."""
    return 1 + (max_calls - 1) * images_per_call


def build_chunks(
    tok: Tokenizer,
    config: Qwen2_5_VLConfig,
    protocol: ToolProtocol,
    *,
    image_hw: tuple[int, int],
    max_calls: int,
    images_per_call: int,
    frames: bool,
) -> dict[str, np.ndarray]:
    """-> chunk_tokens [C, I, O, L] int32, chunk_length [C, I, O], chunk_positions [C, I, O, 3, L]
    (relative to the chunk's first position), chunk_advance [C, I, O] (text position advance)."""
    factor = config.vision.patch_size * config.vision.spatial_merge_size
    if image_hw[0] % factor or image_hw[1] % factor:
        raise ValueError(f"shown image size {image_hw} must be a multiple of {factor} px on both sides")
    image_wh = (image_hw[1], image_hw[0])
    n_pads = image_hw[0] * image_hw[1] // factor**2
    grid = (1, image_hw[0] // config.vision.patch_size, image_hw[1] // config.vision.patch_size)

    def text(call: int, shown: int, outcome: int) -> InjectedText:
        if outcome < N_ERRORS and outcome != ToolError.OK:
            return protocol.error_result(ToolError(outcome), call)
        k = max(outcome - N_ERRORS + 1, 1)  # the OK row stands for one image (never indexed)
        if frames:
            return protocol.frames_result(image_wh, first_number=shown, num_frames=k)
        return protocol.crop_result(image_wh, call)

    @functools.cache
    def encoded(injected: InjectedText) -> tuple[int, ...]:
        segments = injected.token_chunks(tok)
        ids = list(segments[0])
        for segment in segments[1:]:
            ids += [config.image_token_id] * n_pads + list(segment)
        return tuple(ids)

    shape = (max_calls, shown_slots(max_calls, images_per_call), N_ERRORS + images_per_call)
    rows = {index: encoded(text(index[0] + 1, index[1] + 1, index[2])) for index in np.ndindex(*shape)}
    length = max(len(ids) for ids in rows.values())
    rope = jax.jit(functools.partial(get_rope_index, config))
    positions_of = functools.cache(lambda ids: _relative_positions(rope, ids, length, grid, config.image_token_id))

    tokens = np.zeros(shape + (length,), np.int32)
    lengths = np.zeros(shape, np.int32)
    positions = np.zeros(shape + (3, length), np.int32)
    advance = np.zeros(shape, np.int32)
    for index, ids in rows.items():
        tokens[index][: len(ids)] = ids
        lengths[index] = len(ids)
        positions[index], advance[index] = positions_of(ids)
    return dict(chunk_tokens=tokens, chunk_length=lengths, chunk_positions=positions, chunk_advance=advance)


def _relative_positions(rope, ids: tuple[int, ...], length: int, grid, image_token_id: int):
    """M-RoPE positions [3, length] of a chunk on its own (padded with zeros) and its advance."""
    padded = np.zeros((1, length), np.int32)
    padded[0, : len(ids)] = ids
    mask = np.arange(length)[None] < len(ids)
    n_images = sum(1 for a, b in zip((None,) + ids, ids) if b == image_token_id and a != image_token_id)
    grids = np.array([grid] * n_images) if n_images else None
    pos, delta = rope(padded, mask, grids)
    return np.asarray(pos)[:, 0], int(np.asarray(delta)[0, 0]) + len(ids)
