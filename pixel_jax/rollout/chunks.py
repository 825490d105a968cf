"""Host-side tables of the token chunks injected after a tool call (one row per outcome).

Outcome ToolError.OK is the success template around the crop's image tokens; every other
ToolError is its `Execution error:` text. Rows are padded to the longest one (the padding
becomes holes in the cache). Positions come from `get_rope_index` of the chunk alone, so they
follow exactly the rule the model was trained with.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from pixel_jax.models.qwen2_5_vl.rope_index import get_rope_index
from pixel_jax.processing.tokenizer import Tokenizer
from pixel_jax.tools.errors import ToolError

# (before the image, after the image); after is None for outcomes without an image.
ResultText = Callable[[ToolError], tuple[str, str | None]]


def build_chunks(
    tok: Tokenizer, config: Qwen2_5_VLConfig, result_text: ResultText, crop_hw: tuple[int, int]
) -> dict[str, np.ndarray]:
    """-> chunk_tokens [n, L] int32, chunk_length [n], chunk_positions [n, 3, L], chunk_advance [n]."""
    merge = config.vision.spatial_merge_size
    factor = config.vision.patch_size * merge
    if crop_hw[0] % factor or crop_hw[1] % factor:
        raise ValueError(f"crop grid {crop_hw} must be a multiple of {factor} px on both sides")
    grid = np.array([[1, crop_hw[0] // config.vision.patch_size, crop_hw[1] // config.vision.patch_size]])
    n_image_tokens = crop_hw[0] * crop_hw[1] // factor**2
    rows = []
    for code in ToolError:
        before, after = result_text(code)
        ids = tok.encode(before)
        if after is not None:
            if code != ToolError.OK:
                raise ValueError(f"only the success result may show an image, not {code.name}")
            ids = ids + [config.vision_start_token_id] + [config.image_token_id] * n_image_tokens
            ids = ids + [config.vision_end_token_id] + tok.encode(after)
        rows.append(np.asarray(ids, np.int32))
    length = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), length), np.int32)
    positions = np.zeros((len(rows), 3, length), np.int32)
    advance = np.zeros(len(rows), np.int32)
    for i, ids in enumerate(rows):
        tokens[i, : len(ids)] = ids
        has_image = bool(np.any(ids == config.image_token_id))
        pos, delta = get_rope_index(config, ids[None], None, grid if has_image else None)
        positions[i, :, : len(ids)] = np.asarray(pos)[:, 0]
        advance[i] = int(np.asarray(delta)[0, 0]) + len(ids)
    return dict(chunk_tokens=tokens, chunk_length=np.array([len(r) for r in rows], np.int32),
                chunk_positions=positions, chunk_advance=advance)
