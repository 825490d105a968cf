"""Host-side tables of the token chunks injected after a tool call (per call index and outcome).

Outcome ToolError.OK is the protocol's success text around the crop's image tokens; every other
ToolError is its error text. Rows are padded to the longest one (the padding
becomes holes in the cache). Positions come from `get_rope_index` of the chunk alone, so they
follow exactly the rule the model was trained with.
"""

from __future__ import annotations

import numpy as np

from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from pixel_jax.models.qwen2_5_vl.rope_index import get_rope_index
from pixel_jax.processing.tokenizer import Tokenizer
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols.base import ToolProtocol


def build_chunks(
    tok: Tokenizer, config: Qwen2_5_VLConfig, protocol: ToolProtocol, crop_hw: tuple[int, int], max_calls: int
) -> dict[str, np.ndarray]:
    """Tables indexed [call (0-based), ToolError, ...]: chunk_tokens [C, n, L] int32,
    chunk_length [C, n], chunk_positions [C, n, 3, L] (relative), chunk_advance [C, n]."""
    merge = config.vision.spatial_merge_size
    factor = config.vision.patch_size * merge
    if crop_hw[0] % factor or crop_hw[1] % factor:
        raise ValueError(f"crop grid {crop_hw} must be a multiple of {factor} px on both sides")
    grid = np.array([[1, crop_hw[0] // config.vision.patch_size, crop_hw[1] // config.vision.patch_size]])
    n_image_tokens = crop_hw[0] * crop_hw[1] // factor**2
    crop_wh = (crop_hw[1], crop_hw[0])
    rows = []
    for call in range(1, max_calls + 1):
        for code in ToolError:
            text = protocol.crop_result(crop_wh, call) if code == ToolError.OK else protocol.error_result(code, call)
            if text.num_images != (code == ToolError.OK):
                raise ValueError(f"{protocol.name}: the {code.name} result shows {text.num_images} images")
            segments = text.token_chunks(tok)
            ids = list(segments[0])
            for segment in segments[1:]:
                ids += [config.image_token_id] * n_image_tokens + list(segment)
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
    shape = (max_calls, len(ToolError))
    return dict(chunk_tokens=tokens.reshape(shape + (length,)),
                chunk_length=np.array([len(r) for r in rows], np.int32).reshape(shape),
                chunk_positions=positions.reshape(shape + (3, length)), chunk_advance=advance.reshape(shape))
