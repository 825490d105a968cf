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
from pixel_jax.tools.frames import select_frames
from pixel_jax.tools.errors import ToolError, first_error
from pixel_jax.tools.protocols import ToolId, ToolProtocol
from pixel_jax.tools.protocols.device_parser import CallParser, ParsedCall


@dataclasses.dataclass(frozen=True)
class ToolTables:
    """Everything the engine needs from a tool protocol, as static host data.

    close_ids: the token sequence that closes a call (matched as a suffix of the sampled tokens).
    parse: the protocol's on-device parser, reading the call that a token window ends with.
    tool: the operation rows of this rollout may run: a zoom (CROP_IMAGE / ZOOM) on image rows,
      SELECT_FRAMES on video rows (one engine serves one modality; batches are bucketed by it).
    image_hw: (H, W) of every image a call shows (the crop grid, or the frame size).
    images_per_call: 1 for a zoom, max_frames for select_frames.
    chunk_*: the injected chunks, indexed [call, shown − 1, outcome] (see `chunks.py`).
    """

    close_ids: tuple[int, ...]
    parse: CallParser
    window: int  # tokens handed to the parser (ending with the close marker)
    tool: ToolId
    image_hw: tuple[int, int]
    images_per_call: int
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
        max_calls: int,
        crop_hw: tuple[int, int] | None = None,
        frame_hw: tuple[int, int] | None = None,
        max_frames: int = 8,
        window: int = 96,
    ) -> "ToolTables":
        """Tables for zoom rollouts (crop_hw) or select_frames rollouts (frame_hw) — one of them."""
        if (crop_hw is None) == (frame_hw is None):
            raise ValueError("give exactly one of crop_hw (zoom rollouts) and frame_hw (select_frames rollouts)")
        frames = frame_hw is not None
        if frames:
            tool, per_call = ToolId.SELECT_FRAMES, max_frames
        else:
            tool, per_call = (ToolId.CROP_IMAGE if ToolId.CROP_IMAGE in protocol.tools else ToolId.ZOOM), 1
        if tool not in protocol.tools:
            raise ValueError(f"protocol {protocol.name!r} has no {tool.name} operation")
        image_hw = tuple(frame_hw if frames else crop_hw)
        parser = CallParser.build(protocol, tok, max_chars=8 * window, num_slots=max(8, per_call))
        return cls(
            close_ids=protocol.call_close_ids(tok), parse=parser, window=window, tool=tool, image_hw=image_hw,
            images_per_call=per_call,
            **build_chunks(tok, config, protocol, image_hw=image_hw, max_calls=max_calls,
                           images_per_call=per_call, frames=frames),
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
    if tables.tool == ToolId.CROP_IMAGE:  # Pixel Reasoner: bbox_2d on any image shown so far
        target = parsed.target_image
        arity, arity_error = 4, ToolError.BOX_NOT_FOUR_NUMBERS
    else:  # Groundlight: a keypoint on the input image
        target = jnp.int32(1)
        arity, arity_error = 2, ToolError.KEYPOINT_NOT_TWO_NUMBERS
    source_box, target_wh, target_error = crop_ops.select_target(source_boxes, shown_wh, n_shown, target)
    numbers = parsed.numbers[:arity]
    if tables.tool == ToolId.CROP_IMAGE:
        box, box_error = crop_ops.pixel_reasoner_box(numbers, target_wh)
    else:
        box, box_error = crop_ops.groundlight_zoom_box(numbers, target_wh)
    error = first_error(
        (parsed.error != ToolError.OK, parsed.error),
        (parsed.tool != tables.tool, ToolError.UNKNOWN_TOOL),
        (parsed.count != arity, arity_error),
        (target_error != ToolError.OK, target_error),
        (box_error != ToolError.OK, box_error),
    )
    original_box = crop_ops.to_original_box(box, source_box, target_wh)
    shown = crop_ops.fit_box_to_grid(original_box, original_wh, tables.image_hw).astype(jnp.float32)
    pixels = crop_ops.crop_and_resize(original, original_box, tables.image_hw, original_wh)
    pixels = jnp.clip(jnp.round(pixels), 0, 255).astype(jnp.uint8)
    ok = error == ToolError.OK
    return CropResult(error, jnp.where(ok, pixels, 0), shown, box)


class FramesResult(NamedTuple):
    error: jax.Array  # int32 ToolError
    images: jax.Array  # [K, h, w, 3] uint8 the selected frames, in the order given (zeros after)
    count: jax.Array  # int32 frames shown (0 on error)
    frames: jax.Array  # [K] int32 1-based frame numbers as written (0 where unused)


def execute_frames(tables: ToolTables, parsed: ParsedCall, video: jax.Array, n_frames: jax.Array) -> FramesResult:
    """One row's select_frames: video [F, h, w, 3] uint8 (frames at the shown size, padded to F),
    n_frames its true length -> the frames to show, or an error code."""
    k = tables.images_per_call
    numbers = parsed.numbers[:k]
    written = jnp.arange(k) < parsed.count
    integral = jnp.all(jnp.where(written, numbers == jnp.round(numbers), True))
    frames = jnp.where(written, jnp.round(numbers), 0).astype(jnp.int32)
    images, valid, frame_error = select_frames(video, frames, parsed.count, k, n_frames)
    error = first_error(
        (parsed.error != ToolError.OK, parsed.error),
        (parsed.tool != tables.tool, ToolError.UNKNOWN_TOOL),
        (~integral, ToolError.ARGUMENT_NOT_INTEGER),
        (frame_error != ToolError.OK, frame_error),
    )
    ok = error == ToolError.OK
    shown = valid & ok
    return FramesResult(error, jnp.where(shown[:, None, None, None], images, 0).astype(jnp.uint8),
                        jnp.sum(shown).astype(jnp.int32), jnp.where(written, frames, 0))
