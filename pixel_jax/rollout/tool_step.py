"""Executing a visual operation inside the compiled rollout, for one row (the engine vmaps it).

The call's tokens → the protocol's on-device parser → the paper's box semantics on the target
image → a crop of the ORIGINAL full-resolution image at the fixed crop grid, rounded to uint8
(as a PIL crop would be, so the learner re-patchifies exactly what the sampler showed).
Any failure is a `ToolError` code; the engine injects the matching error text instead.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from pixel_jax.processing.tokenizer import Tokenizer
from pixel_jax.rollout.chunks import build_chunks
from pixel_jax.tools import crop as crop_ops
from pixel_jax.tools.errors import ToolError, first_error
from pixel_jax.tools.protocols import ToolId, ToolProtocol
from pixel_jax.tools.protocols.device_parser import CallParser, ParsedCall


@dataclasses.dataclass(frozen=True)
class ToolTables:
    """Everything the engine needs from a tool protocol, as static host data.

    close_ids: the token sequence that closes a call (matched as a suffix of the sampled tokens).
    parse: the protocol's on-device parser, reading the call that a token window ends with.
    chunk_tokens [C, n_codes, L]: the tokens injected after call c, per outcome (ToolError.OK =
      the success text with the crop's image pads; others = the error text); see `chunks.py`.
    chunk_length [C, n_codes]: valid prefix of each chunk; the rest are holes.
    chunk_positions [C, n_codes, 3, L]: M-RoPE positions relative to the chunk's first position.
    chunk_advance [C, n_codes]: how far the text position moves over the chunk.
    """

    close_ids: tuple[int, ...]
    parse: CallParser
    window: int  # tokens handed to the parser (ending with the close marker)
    crop_tool: ToolId  # the protocol's zoom operation (CROP_IMAGE or ZOOM)
    crop_hw: tuple[int, int]
    chunk_tokens: np.ndarray
    chunk_length: np.ndarray
    chunk_positions: np.ndarray
    chunk_advance: np.ndarray

    @classmethod
    def build(
        cls,
        protocol: ToolProtocol,
        tok: Tokenizer,
        config: Qwen2_5_VLConfig,
        *,
        crop_hw: tuple[int, int],
        max_calls: int,
        window: int = 96,
    ) -> "ToolTables":
        if ToolId.SELECT_FRAMES in protocol.tools and ToolId.CROP_IMAGE not in protocol.tools:
            raise ValueError(f"protocol {protocol.name!r} has no zoom operation for image rollouts")
        return cls(
            close_ids=protocol.call_close_ids(tok),
            parse=CallParser.build(protocol, tok, max_chars=8 * window), window=window,
            crop_tool=ToolId.CROP_IMAGE if ToolId.CROP_IMAGE in protocol.tools else ToolId.ZOOM,
            crop_hw=tuple(crop_hw), **build_chunks(tok, config, protocol, crop_hw, max_calls),
        )

    @property
    def chunk_len(self) -> int:
        return self.chunk_tokens.shape[-1]


class CropResult(NamedTuple):
    error: jax.Array  # int32 ToolError
    pixels: jax.Array  # [h, w, 3] uint8 the new image (zeros on error)
    source_box: jax.Array  # [4] float32 region shown, in original pixels
    box: jax.Array  # [4] float32 the requested box in the target image's frame (for records)


def execute_crop(
    tables: ToolTables,
    parsed: ParsedCall,
    original: jax.Array,  # [Hmax, Wmax, 3] uint8, the full-resolution image (padded)
    original_wh: jax.Array,  # [2] its true size
    source_boxes: jax.Array,  # [I, 4] region of each image shown so far, in original pixels
    shown_wh: jax.Array,  # [I, 2] size each image was shown at (frame of absolute coordinates)
    n_shown: jax.Array,  # int32 images shown so far
) -> CropResult:
    """One row's zoom: parse result + images so far -> the new image or an error code."""
    if tables.crop_tool == ToolId.CROP_IMAGE:  # Pixel Reasoner: bbox_2d on any image shown so far
        target = parsed.target_image
        arity, arity_error = 4, ToolError.BOX_NOT_FOUR_NUMBERS
    else:  # Groundlight: a keypoint on the input image
        target = jnp.int32(1)
        arity, arity_error = 2, ToolError.KEYPOINT_NOT_TWO_NUMBERS
    source_box, target_wh, target_error = crop_ops.select_target(source_boxes, shown_wh, n_shown, target)
    numbers = parsed.numbers[:arity]
    if tables.crop_tool == ToolId.CROP_IMAGE:
        box, box_error = crop_ops.pixel_reasoner_box(numbers, target_wh)
    else:
        box, box_error = crop_ops.groundlight_zoom_box(numbers, target_wh)
    error = first_error(
        (parsed.error != ToolError.OK, parsed.error),
        (parsed.tool != tables.crop_tool, ToolError.UNKNOWN_TOOL),
        (parsed.count != arity, arity_error),
        (target_error != ToolError.OK, target_error),
        (box_error != ToolError.OK, box_error),
    )
    original_box = crop_ops.to_original_box(box, source_box, target_wh)
    shown = crop_ops.fit_box_to_grid(original_box, original_wh, tables.crop_hw).astype(jnp.float32)
    pixels = crop_ops.crop_and_resize(original, original_box, tables.crop_hw, original_wh)
    pixels = jnp.clip(jnp.round(pixels), 0, 255).astype(jnp.uint8)
    ok = error == ToolError.OK
    return CropResult(error, jnp.where(ok, pixels, 0), shown, box)
