"""Qwen2-VL / Qwen2.5-VL image and video pre-processing (HF `Qwen2VLImageProcessorPil` semantics).

Two paths share one set of building blocks:
- host (numpy): `preprocess_images` / `preprocess_video` resize uint8 RGB pictures with PIL bicubic
  to the `smart_resize` size (exactly as the HF PIL backend does), then call `to_pixel_values`;
- device (jax.numpy, inside `jax.jit`): the rollout resamples its crops to a fixed, already valid
  size itself and calls `to_pixel_values` on them directly.
`normalize`, `patchify` and `to_pixel_values` are written once against the array namespace of their
input (numpy or jax.numpy); they use only elementwise ops, reshape, transpose and concatenate, and
every shape is a Python int, so they trace under `jax.jit`.

Legend: T frames, H height, W width, C channels (3, RGB), p patch_size, tp temporal_patch_size,
m merge_size. The vision tower embeds one patch of tp×p×p pixels; one visual token of the language
model is an m×m block of patches (28×28 pixels for p = 14, m = 2).
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, per RGB channel
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PIXEL_VALUE = 255.0  # rescale 1/255: uint8 pixel values → [0, 1]
MIN_PIXELS = 56 * 56  # defaults of HF Qwen2VLImageProcessorPil
MAX_PIXELS = 28 * 28 * 1280
VIDEO_MIN_PIXELS = 128 * 28 * 28  # defaults of HF Qwen2VLVideoProcessor
VIDEO_MAX_PIXELS = 28 * 28 * 768
MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) HF resizes an image to: both multiples of `factor` (= p·m), closest to
    the original size, aspect ratio kept as well as possible, area within [min_pixels, max_pixels]
    (an area that rounds to zero is scaled up to at least one factor×factor block)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"smart_resize: height and width must be positive, got {height}x{width}")
    aspect_ratio = max(height, width) / min(height, width)
    if aspect_ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"smart_resize: absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
            f"got {aspect_ratio} for a {height}x{width} image"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patch_grid(
    num_frames: int,
    height: int,
    width: int,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
) -> tuple[int, int, int]:
    """(grid_t, grid_h, grid_w) of T frames of H×W pixels; T is padded up to a multiple of tp."""
    factor = patch_size * merge_size
    if num_frames < 1:
        raise ValueError(f"frames: need at least one frame, got {num_frames}")
    if height % factor or width % factor:
        raise ValueError(
            f"frames: height and width must be multiples of patch_size*merge_size={factor}, "
            f"got {height}x{width} (resize to smart_resize's size first)"
        )
    return -(-num_frames // temporal_patch_size), height // patch_size, width // patch_size


def num_image_tokens(grid_thw, merge_size: int = 2):
    """Merged visual tokens (`<|image_pad|>` count) of a grid (t, h, w): t·h·w / m².

    `grid_thw` is one grid (3 ints → int) or an array of grids [N, 3] (→ int64 array [N]).
    """
    grid = np.asarray(grid_thw, dtype=np.int64)  # [..., 3]
    if grid.ndim not in (1, 2) or grid.shape[-1] != 3:
        raise ValueError(f"grid_thw: expected shape [3] or [N, 3], got {grid.shape}")
    if np.any(grid[..., 1:] % merge_size):
        raise ValueError(f"grid_thw: grid_h and grid_w must be multiples of merge_size={merge_size}, got {grid.tolist()}")
    tokens = np.prod(grid, axis=-1) // merge_size**2  # [] or [N]
    return int(tokens) if tokens.ndim == 0 else tokens


def _namespace(array):
    """jax.numpy for jax arrays (and tracers under jit), numpy otherwise."""
    return jnp if isinstance(array, jax.Array) else np


def normalize(frames):
    """[..., C] pixel values in [0, 255] → float32 (x/255 − IMAGE_MEAN) / IMAGE_STD (HF rescale + normalize).

    Dividing in float32 rounds x/255 correctly, which reproduces HF's float64 rescale bit for bit.
    """
    xp = _namespace(frames)
    if frames.shape[-1] != len(IMAGE_MEAN):
        raise ValueError(f"frames: expected {len(IMAGE_MEAN)} channels (RGB) last, got shape {frames.shape}")
    mean = xp.asarray(IMAGE_MEAN, dtype=xp.float32)  # [C]
    std = xp.asarray(IMAGE_STD, dtype=xp.float32)  # [C]
    return (xp.asarray(frames, dtype=xp.float32) / MAX_PIXEL_VALUE - mean) / std


def patchify(frames, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2):
    """[T, H, W, C] → [grid_t·grid_h·grid_w, C·tp·p·p] in HF's order.

    Rows run over (t, h//m, w//m, m, m), so the m×m patches of one merged token are contiguous;
    columns over (C, tp, p, p). T is padded to a multiple of tp by repeating the last frame, so an
    image (T = 1) becomes tp copies of itself, as in HF.
    """
    xp = _namespace(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames: expected [T, H, W, C], got shape {frames.shape}")
    num_frames, height, width, channels = frames.shape
    grid_t, grid_h, grid_w = patch_grid(num_frames, height, width, patch_size, temporal_patch_size, merge_size)
    if pad := grid_t * temporal_patch_size - num_frames:
        last = xp.broadcast_to(frames[-1:], (pad, height, width, channels))  # [pad, H, W, C]
        frames = xp.concatenate([frames, last], axis=0)  # [grid_t·tp, H, W, C]
    patches = xp.reshape(
        frames,
        (grid_t, temporal_patch_size, grid_h // merge_size, merge_size, patch_size,
         grid_w // merge_size, merge_size, patch_size, channels),
    )
    patches = xp.transpose(patches, (0, 2, 5, 3, 6, 8, 1, 4, 7))  # [gt, gh/m, gw/m, m, m, C, tp, p, p]
    return xp.reshape(patches, (grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size**2))


def normalize_patches(pixel_values):
    """Raw patches [..., C·tp·p·p] in [0, 255] (`patchify` of uint8 frames, 4x smaller than float32)
    → the vision-tower input `to_pixel_values` gives: `normalize` channel by channel, as columns run
    over C first."""
    xp = _namespace(pixel_values)
    *lead, width = pixel_values.shape
    channels = len(IMAGE_MEAN)
    if width % channels:
        raise ValueError(f"pixel_values: rows of {width} values do not split into {channels} channels")
    by_channel = xp.reshape(pixel_values, (*lead, channels, width // channels))  # [..., C, tp·p·p]
    normalized = xp.swapaxes(normalize(xp.swapaxes(by_channel, -1, -2)), -1, -2)  # [..., C, tp·p·p]
    return xp.reshape(normalized, (*lead, width))


def to_pixel_values(frames, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2):
    """Resized frames [T, H, W, C] in [0, 255] → vision-tower input [grid_t·grid_h·grid_w, C·tp·p·p] float32."""
    return patchify(normalize(frames), patch_size, temporal_patch_size, merge_size)


def _check_uint8_rgb(array, name: str, ndim: int, layout: str) -> None:
    """Raise unless `array` is a uint8 numpy array of `ndim` dims, RGB channels last (`layout`)."""
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{name}: expected a uint8 numpy array {layout}, got {kind}")
    if array.ndim != ndim or array.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape {layout} with 3 (RGB) channels, got {array.shape}")


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w, 3] uint8 → [height, width, 3] uint8 with PIL bicubic, as HF's PIL backend."""
    return np.asarray(PIL.Image.fromarray(image).resize((width, height), resample=PIL.Image.Resampling.BICUBIC))


def preprocess_images(
    images: Sequence[np.ndarray],
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images [H_i, W_i, 3] → (pixel_values [Σ h_i·w_i, 3·tp·p·p] float32, grid_thw [N, 3] int64).

    Each image is resized to `smart_resize`'s size, normalised and patchified with t = 1;
    the rows of all images are concatenated in order, as HF `Qwen2VLImageProcessorPil`.
    """
    if isinstance(images, np.ndarray) or len(images) == 0:
        raise ValueError("images: expected a non-empty list of [H, W, 3] uint8 arrays")
    all_pixel_values, grids = [], []
    for index, image in enumerate(images):
        _check_uint8_rgb(image, f"images[{index}]", 3, "[H, W, 3]")
        height, width = smart_resize(*image.shape[:2], patch_size * merge_size, min_pixels, max_pixels)
        frames = _resize(image, height, width)[None]  # [1, height, width, 3]
        all_pixel_values.append(to_pixel_values(frames, patch_size, temporal_patch_size, merge_size))
        grids.append(patch_grid(1, height, width, patch_size, temporal_patch_size, merge_size))
    return np.concatenate(all_pixel_values, axis=0), np.asarray(grids, dtype=np.int64)


def preprocess_video(
    frames: np.ndarray,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """One video, uint8 frames [T, H, W, 3] → (pixel_values_videos [grid_t·h·w, 3·tp·p·p] float32,
    video_grid_thw [1, 3] int64).

    Every frame is resized to `smart_resize(H, W)` (PIL bicubic; HF's video processor resizes with
    torchvision instead, so pixel values can differ by resampling, never in size or order); T is
    padded to a multiple of tp by repeating the last frame, as HF does.
    """
    _check_uint8_rgb(frames, "frames", 4, "[T, H, W, 3]")
    if frames.shape[0] == 0:
        raise ValueError("frames: the video has no frames")
    height, width = smart_resize(*frames.shape[1:3], patch_size * merge_size, min_pixels, max_pixels)
    resized = np.stack([_resize(frame, height, width) for frame in frames])  # [T, height, width, 3]
    grid = patch_grid(len(frames), height, width, patch_size, temporal_patch_size, merge_size)
    return to_pixel_values(resized, patch_size, temporal_patch_size, merge_size), np.asarray([grid], dtype=np.int64)
