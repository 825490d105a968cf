"""Zoom-in on device: the crop tools' box semantics, crops of crops, and crop-and-resize.

Every function here traces with a traced box (a new box never recompiles) and vmaps over rows, so
it runs inside the rollout's single compiled program. An invalid call becomes a `ToolError` code,
never an exception.

Coordinate frames. The rollout keeps the ORIGINAL full-resolution image on device. Every image shown
to the model (image 1 = the input, later ones = crops) is described by
  source_box [4]  (x1, y1, x2, y2) of the region it shows, in original-image pixels;
  shown_wh   [2]  (W, H) the size the model was told, the frame of its absolute coordinates.
A call's box is read in its target image's shown frame (`pixel_reasoner_box`,
`groundlight_zoom_box`), mapped to original pixels (`to_original_box`) and cropped from the original
(`crop_and_resize`): a crop of a crop is cut from full-resolution pixels, never from resized ones.
The source_box of the new image is `fit_box_to_grid` of that box, the region actually shown.

Boxes are float32 (x1, y1, x2, y2) with x to the right and y down, in pixel-edge coordinates: a W-px
wide image spans x ∈ [0, W] (PIL's convention).
"""

import functools
import math

import jax
import jax.numpy as jnp

from pixel_jax.processing import image as image_processing
from pixel_jax.tools.errors import ToolError, first_error

PIXEL_REASONER_PADDING = 0.1  # added on each side, in units of the target image's W (x) or H (y)
PIXEL_REASONER_MIN_SIDE = 28  # each side of the padded crop must be larger than this (pixels)
GROUNDLIGHT_BOX_SIZE = 400  # side of the zoom box (pixels of the image the model saw)
_HORIZONTAL_PASS_BLOCKS = 2  # trips of `crop_and_resize`'s loop (XLA inlines a one-trip loop)


# ---------------------------------------------------------------- box semantics of the two papers


def pixel_reasoner_box(bbox_2d, image_wh):
    """Pixel Reasoner's `crop_image(bbox_2d, target_image)` box → (box [4] float32, error int32).

    bbox_2d [4]: (x1, y1, x2, y2) as the model wrote them. image_wh [2]: (W, H), the target image's
    shown size. Rules of the authors' code (`crop_image_normalized`, the tool of their RL runs):
    - normalised when all four values are < 1 (negative values included), else absolute pixels of
      the target image. So [0.5, 0.5, 1.0, 1.0] is read as absolute pixels: a 0.5-px box;
    - padded by 0.1·W left and right, 0.1·H above and below (no 600-px cap: the capped variant is
      commented out in their code), then clamped to the image;
    - each side of the crop as PIL would cut it (corners rounded half-to-even) must exceed 28 px
      (CROP_TOO_SMALL; a box entirely outside the image ends here too, with a 0-px side).
    One deliberate difference: a box with x2 ≤ x1 or y2 ≤ y1 is BOX_EMPTY_OR_INVERTED, whereas
    the authors' padding turns a slightly inverted or empty box into a valid 0.2·W-wide crop.
    A non-finite value is BOX_NOT_FOUR_NUMBERS. Checks apply in that order, first failure wins.
    The returned box is the padded, clamped one (unrounded), in the target image's shown pixels.
    """
    bbox = jnp.asarray(bbox_2d, jnp.float32)  # [4]
    size4 = jnp.tile(jnp.asarray(image_wh, jnp.float32), 2)  # [4] (W, H, W, H)
    pixels = jnp.where(jnp.all(bbox < 1.0), bbox * size4, bbox)
    padding = PIXEL_REASONER_PADDING * size4 * jnp.array([-1.0, -1.0, 1.0, 1.0])
    box = jnp.clip(pixels + padding, 0.0, size4)
    crop_side = jnp.round(box[2:]) - jnp.round(box[:2])  # [2] PIL rounds crop corners
    error = first_error(
        (~jnp.all(jnp.isfinite(bbox)), ToolError.BOX_NOT_FOUR_NUMBERS),
        (jnp.any(bbox[2:] <= bbox[:2]), ToolError.BOX_EMPTY_OR_INVERTED),
        (jnp.any(crop_side <= PIXEL_REASONER_MIN_SIDE), ToolError.CROP_TOO_SMALL),
    )
    return box, error


def groundlight_zoom_box(keypoint, image_wh, box_size: int = GROUNDLIGHT_BOX_SIZE):
    """Groundlight's `zoom(keypoint)` box → (box [4] float32, error int32).

    keypoint [2]: (x, y) in pixels of the image the model saw, of shown size image_wh [2] (W, H).
    The box is box_size × box_size with its top-left corner at keypoint − box_size // 2, shifted to
    stay inside the image; on an axis shorter than box_size it spans the whole axis (the authors'
    `calculate_crop_coordinates`). A keypoint outside [0, W) × [0, H), or not finite, is
    KEYPOINT_OUT_OF_RANGE. Fractional keypoints are accepted (the authors' parser demands ints).
    """
    point = jnp.asarray(keypoint, jnp.float32)  # [2]
    size = jnp.asarray(image_wh, jnp.float32)  # [2]
    side = jnp.minimum(float(box_size), size)  # [2]
    top_left = jnp.clip(point - box_size // 2, 0.0, size - side)
    inside = jnp.all(jnp.isfinite(point) & (point >= 0.0) & (point < size))
    return jnp.concatenate([top_left, top_left + side]), first_error(
        (~inside, ToolError.KEYPOINT_OUT_OF_RANGE)
    )


def groundlight_output_hw(
    input_longer_side: int,
    box_size: int = GROUNDLIGHT_BOX_SIZE,
    min_pixels: int = image_processing.MIN_PIXELS,
    max_pixels: int = image_processing.MAX_PIXELS,
) -> tuple[int, int]:
    """Static (out_h, out_w) of a Groundlight zoom (host side, from the config).

    The authors resize the square crop so its longer side equals max(input's longer side,
    box_size); the processor then `smart_resize`s it to multiples of 28 within the pixel budget.
    Resampling straight to that final size skips the intermediate resize.
    """
    if input_longer_side <= 0 or box_size <= 0:
        raise ValueError(
            f"groundlight_output_hw: input_longer_side and box_size must be positive, got "
            f"{input_longer_side} and {box_size}"
        )
    side = max(input_longer_side, box_size)
    return image_processing.smart_resize(side, side, min_pixels=min_pixels, max_pixels=max_pixels)


# ---------------------------------------------------------------------------- crops of crops


def to_original_box(box, source_box, shown_wh):
    """A box in a shown image's frame → the same region in original-image pixels.

    box [4] in the shown image's pixels (W×H = shown_wh [2]); source_box [4] the region of the
    original that image shows. Pixel edges map linearly (0 → x1, W → x2), the same mapping the
    resampler uses, so crop(original, to_original_box(b, s, wh)) is the crop b of the shown image,
    taken from full-resolution pixels.
    """
    source = jnp.asarray(source_box, jnp.float32)  # [4]
    shown = jnp.asarray(shown_wh, jnp.float32)  # [2]
    scale = (source[2:] - source[:2]) / shown  # [2] original px per shown px
    return jnp.tile(source[:2], 2) + jnp.asarray(box, jnp.float32) * jnp.tile(scale, 2)


def select_target(source_boxes, shown_wh, n_shown, target_image):
    """The image a call targets → (source_box [4], shown_wh [2], error int32).

    source_boxes [I, 4] and shown_wh [I, 2] describe the I image slots of a row, of which the first
    n_shown are filled; target_image is 1-based (1 = the original image). Outside [1, n_shown] it
    is TARGET_IMAGE_OUT_OF_RANGE (and slot 1 or the last slot is returned, to be ignored).
    """
    target = jnp.asarray(target_image, jnp.int32)
    slot = jnp.clip(target - 1, 0, source_boxes.shape[0] - 1)
    error = first_error(
        ((target < 1) | (target > n_shown), ToolError.TARGET_IMAGE_OUT_OF_RANGE)
    )
    return source_boxes[slot], shown_wh[slot], error


# ---------------------------------------------------------------------------- crop and resize


def fit_box_to_grid(box, image_wh, out_hw: tuple[int, int]):
    """The region `crop_and_resize` actually cuts: int32 [4] (x1, y1, x2, y2).

    1. Grow the box around its centre to the aspect ratio out_w / out_h of the output grid, so
       resizing stretches nothing.
    2. Clip the grown size to the image (W, H) = image_wh, then shift the box inside the image.
       Only when the grown box is larger than the image on an axis (an image much more elongated
       than the grid) is the aspect ratio lost: that axis spans the whole image and the crop is
       squeezed along it on resize, by (image side / grown side).
    3. Round the corners half-to-even, as PIL's `Image.crop` does, keeping at least 1 px inside
       the image on each axis (so even a garbage box gives a finite crop).
    """
    out_h, out_w = out_hw
    box = jnp.asarray(box, jnp.float32)  # [4]
    size = jnp.asarray(image_wh, jnp.float32)  # [2] (W, H)
    extent = box[2:] - box[:2]  # [2] (w, h)
    grown = jnp.maximum(extent, jnp.stack([extent[1] * out_w / out_h, extent[0] * out_h / out_w]))
    grown = jnp.minimum(grown, size)
    start = jnp.clip((box[:2] + box[2:]) / 2 - grown / 2, 0.0, size - grown)
    limit = jnp.asarray(image_wh, jnp.int32)  # [2]
    first = jnp.clip(jnp.round(start).astype(jnp.int32), 0, limit - 1)
    last = jnp.clip(jnp.round(start + grown).astype(jnp.int32), first + 1, limit)
    return jnp.concatenate([first, last])


@functools.partial(jax.jit, static_argnames="out_hw")  # compiled once per shape, even eagerly
def crop_and_resize(image, box, out_hw: tuple[int, int], image_wh=None):
    """Crop `box` of `image` (grown to the grid's aspect) and resample it to out_hw, on device.

    image [H, W, C] uint8 or float: the original full-resolution image, or one stored top-left in
    a larger padded array, with its true (W, H) in image_wh [2] (traced; default: the array size).
    box [4] float32 (x1, y1, x2, y2) in its pixels (traced); out_hw = (out_h, out_w) static.
    Returns [out_h, out_w, C] float32 in the input's value range (0..255 for uint8).

    The region is `fit_box_to_grid(box, image_wh, out_hw)`; the resampling is PIL's
    `Image.crop(region).resize((out_w, out_h), Image.BILINEAR)` (see `_bilinear_taps`) computed in
    float32, without PIL's rounding to uint8 between and after its two passes (mean |Δ| ≈ 0.3/255
    on random uint8 images).

    Formulation, chosen by measuring on 2 CPU cores, alone (`benchmarks/crop.py`) and inside the
    compiled rollout (`benchmarks/rollout.py`: 16 rows, 896×672 → 224×224, then the patchify):
    - gathered taps with a static tap count, out_h·W·Ky·C + out_h·out_w·Kx·C ≈ 31 M MAC for
      2048×1536 → 448×448, not two dense weight matrices (out_h·H·W·C + out_h·out_w·W·C ≈ 5.4 G,
      80–160 ms per crop); unrolled over the K taps so XLA fuses each pass into one loop (a
      `fori_loop` over taps measured 3× slower, one gather of all K taps 8×, a block-banded
      matmul pass 4×);
    - the vertical pass first, over every column of the image: it gathers whole rows, 1.4× faster
      than the horizontal pass over every row (22 against 31 ms for the rollout's 16 rows);
    - the horizontal pass in a `lax.map` over blocks of output rows. That loop is a fusion barrier,
      the one XLA:CPU keeps (it drops `optimization_barrier` before fusing). Without it XLA fuses
      the whole resampling into the crop's consumers and recomputes it in each: in the rollout,
      in the patchify's transpose, which visits every pixel twice (temporal patch) in patch order,
      and in the uint8 copy kept in the rollout state. The rollout's 16 crops then cost 15–25 ms
      alone but 170–340 ms with the patchify, and 90 ms of a 0.65 s rollout (240 ms of 1.2 s on a
      loaded machine); with the loop, 28–32 ms alone, ~36 ms with the patchify and ~37 ms of the
      rollout. Alone, XLA runs the loop's pass on one thread: a 2048×1536 → 448² crop takes 6 ms
      with the loop, 10–13 ms without; a vmapped batch of 8 crops to 1036² 36–48 ms per crop
      with it, 31–40 ms without.
    Not measured on TPU, where the dense matmul form might win.
    """
    out_h, out_w = out_hw
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"crop_and_resize: out_hw must be positive, got {out_hw}")
    if image.ndim != 3:
        raise ValueError(f"crop_and_resize: image must be [H, W, C], got shape {image.shape}")
    height, width, channels = image.shape
    if image_wh is None:
        image_wh = (width, height)
    x1, y1, x2, y2 = fit_box_to_grid(box, image_wh, out_hw)
    row, row_weight = _bilinear_taps(y1, y2 - y1, out_h, height)  # [out_h, Ky] each
    column, column_weight = _bilinear_taps(x1, x2 - x1, out_w, width)  # [out_w, Kx] each
    block = -(-out_h // _HORIZONTAL_PASS_BLOCKS)  # output rows per trip of the loop
    resized_columns = sum(  # [out_h, W, C]
        row_weight[:, k, None, None] * image[row[:, k]].astype(jnp.float32)
        for k in range(row.shape[1])
    )
    resized_columns = jnp.pad(  # [blocks · block, W, C]
        resized_columns, ((0, _HORIZONTAL_PASS_BLOCKS * block - out_h), (0, 0), (0, 0))
    )

    def horizontal_pass(index):  # → [block, out_w, C]
        rows = jax.lax.dynamic_slice_in_dim(resized_columns, index * block, block)  # [block, W, C]
        return sum(
            column_weight[None, :, k, None] * rows[:, column[:, k]]
            for k in range(column.shape[1])
        )

    resized = jax.lax.map(  # [blocks, block, out_w, C]
        horizontal_pass, jnp.arange(_HORIZONTAL_PASS_BLOCKS)
    )
    return resized.reshape(-1, out_w, channels)[:out_h]


def _bilinear_taps(start, size, out_size: int, axis_size: int):
    """Pillow's BILINEAR resampling of one axis of a crop, as gather taps.

    The crop covers [start, start + size) of an axis of static length axis_size (traced ints,
    size ≥ 1). Pillow's resample.c (`precompute_coeffs`) gives output pixel i, with
    scale = size / out_size and filterscale s = max(scale, 1) (antialiasing when downscaling):
        centre c_i = (i + 0.5)·scale,
        taps x ∈ [max(0, ⌊c_i − s + 0.5⌋), min(size, ⌊c_i + s + 0.5⌋)),
        weight ∝ max(0, 1 − |x + 0.5 − c_i| / s), normalised to sum 1.
    At most 2·⌈s⌉ + 1 taps are non-zero and s ≤ axis_size / out_size, hence the static count K.
    Returns index [out_size, K] int32 into the axis and weight [out_size, K] float32.
    """
    num_taps = 2 * math.ceil(max(axis_size / out_size, 1.0)) + 1
    size = size.astype(jnp.float32)
    scale = size / out_size
    support = jnp.maximum(scale, 1.0)
    centre = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale  # [out], crop coordinates
    first_tap = jnp.maximum(jnp.floor(centre - support + 0.5), 0.0)  # [out]
    tap = first_tap[:, None] + jnp.arange(num_taps, dtype=jnp.float32)  # [out, K]
    weight = jnp.maximum(1.0 - jnp.abs(tap + 0.5 - centre[:, None]) / support, 0.0)
    weight = jnp.where(tap < size, weight, 0.0)
    weight = weight / jnp.sum(weight, axis=1, keepdims=True)
    index = jnp.clip(tap.astype(jnp.int32) + start, 0, axis_size - 1)
    return index, weight
