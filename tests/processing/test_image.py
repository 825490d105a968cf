"""pixel_jax.processing.image against HF Qwen2VLImageProcessorPil, HF smart_resize and a loop reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import image_transforms as transforms
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf

from pixel_jax.processing import image as pim

SMALL_MAX_PIXELS = 28 * 28 * 64  # keeps the large-image cases cheap while still hitting the cap


def _random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _hf_preprocess(images, **processor_kwargs):
    processor = hf.Qwen2VLImageProcessorPil(**processor_kwargs)
    out = processor(images=list(images), input_data_format="channels_last", return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


def _loop_patchify(frames, patch_size, temporal_patch_size, merge_size):
    """Element-by-element HF order: row (t, h//m, w//m, m, m), column (C, tp, p, p)."""
    num_frames, height, width, channels = frames.shape
    frames = np.concatenate([frames] + [frames[-1:]] * (-num_frames % temporal_patch_size))
    grid_t, grid_h, grid_w = len(frames) // temporal_patch_size, height // patch_size, width // patch_size
    m, p, tp = merge_size, patch_size, temporal_patch_size
    rows = []
    for t, bh, bw, mh, mw in itertools.product(range(grid_t), range(grid_h // m), range(grid_w // m), range(m), range(m)):
        rows.append([
            frames[t * tp + dt, (bh * m + mh) * p + y, (bw * m + mw) * p + x, c]
            for c, dt, y, x in itertools.product(range(channels), range(tp), range(p), range(p))
        ])
    return np.asarray(rows, dtype=frames.dtype)


# ---------------------------------------------------------------- smart_resize

def test_smart_resize_matches_hf_on_random_sizes():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        height, width = (int(v) for v in rng.integers(1, 4000, size=2))
        if max(height, width) / min(height, width) > 200:
            continue
        min_pixels = int(rng.integers(1, 300)) * 28 * 28
        max_pixels = min_pixels + int(rng.integers(0, 3000)) * 28 * 28
        expected = hf.smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
        assert pim.smart_resize(height, width, 28, min_pixels, max_pixels) == expected, (height, width)


def test_smart_resize_hand_computed():
    assert pim.smart_resize(10, 12) == (56, 84)  # rounds to 0×0, scaled up by sqrt(3136/120)
    assert pim.smart_resize(280, 420) == (280, 420)  # already multiples of 28, within bounds
    assert pim.smart_resize(2800, 2800, max_pixels=28 * 28 * 100) == (280, 280)


def test_smart_resize_rejects_extreme_aspect_ratio_and_empty_sides():
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200, got 201"):
        pim.smart_resize(10, 2010)
    with pytest.raises(ValueError, match="height and width must be positive"):
        pim.smart_resize(0, 10)


# ---------------------------------------------------------------- images vs HF

@pytest.mark.parametrize(
    "height, width, max_pixels",
    [(30, 900, SMALL_MAX_PIXELS), (1000, 40, SMALL_MAX_PIXELS), (10, 12, SMALL_MAX_PIXELS),
     (224, 336, SMALL_MAX_PIXELS), (640, 800, SMALL_MAX_PIXELS), (333, 517, 28 * 28 * 1280)],
)
def test_preprocess_images_matches_hf(height, width, max_pixels):
    image = _random_image(height, width)
    pixel_values, grid_thw = pim.preprocess_images([image], min_pixels=56 * 56, max_pixels=max_pixels)
    ref_values, ref_grid = _hf_preprocess([image], min_pixels=56 * 56, max_pixels=max_pixels)
    assert grid_thw.dtype == np.int64 and pixel_values.dtype == np.float32
    np.testing.assert_array_equal(grid_thw, ref_grid)
    assert pixel_values.shape == ref_values.shape == (int(np.prod(grid_thw)), 3 * 2 * 14 * 14)
    assert np.abs(pixel_values - ref_values).max() <= 1e-5


def test_large_image_is_capped_by_max_pixels():
    _, grid_thw = pim.preprocess_images([_random_image(640, 800)], max_pixels=SMALL_MAX_PIXELS)
    assert int(np.prod(grid_thw)) * 14 * 14 <= SMALL_MAX_PIXELS
    np.testing.assert_array_equal(grid_thw, [[1, 14, 16]])  # 196×224 px = floor(640|800 / √(512000/50176) / 28)·28


def test_several_images_with_default_pixel_bounds_match_hf():
    images = [_random_image(h, w, seed) for seed, (h, w) in enumerate([(30, 900), (10, 12), (1000, 40), (1100, 1000)])]
    pixel_values, grid_thw = pim.preprocess_images(images)
    ref_values, ref_grid = _hf_preprocess(images)
    np.testing.assert_array_equal(grid_thw, ref_grid)
    assert pixel_values.shape == ref_values.shape
    assert np.abs(pixel_values - ref_values).max() <= 1e-5
    np.testing.assert_array_equal(pim.num_image_tokens(grid_thw), np.prod(ref_grid, axis=-1) // 4)


# ---------------------------------------------------------------- building blocks

def test_patchify_order_matches_loop_reference_with_padding():
    frames = np.arange(3 * 8 * 12 * 3, dtype=np.float32).reshape(3, 8, 12, 3)  # odd T, p=2, m=2
    np.testing.assert_array_equal(pim.patchify(frames, 2, 2, 2), _loop_patchify(frames, 2, 2, 2))
    padded = np.concatenate([frames, frames[-1:]])
    np.testing.assert_array_equal(pim.patchify(frames, 2, 2, 2), pim.patchify(padded, 2, 2, 2))


def test_normalize_hand_computed():
    pixel = np.array([[0.0, 255.0, 127.5]], dtype=np.float32)
    expected = [(0 - 0.48145466) / 0.26862954, (1 - 0.4578275) / 0.26130258, (0.5 - 0.40821073) / 0.27577711]
    np.testing.assert_allclose(pim.normalize(pixel)[0], expected, rtol=1e-6)


def test_normalize_is_bit_exact_with_hf_rescale_then_normalize():
    every_value = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)  # [256, C]
    reference = transforms.normalize(
        transforms.rescale(every_value, 1 / 255), hf.OPENAI_CLIP_MEAN, hf.OPENAI_CLIP_STD, input_data_format="channels_last"
    )
    np.testing.assert_array_equal(pim.normalize(every_value), reference)


@pytest.mark.parametrize("num_frames, height, width", [(1, 56, 84), (3, 28, 56), (4, 56, 56)])
def test_jitted_jnp_path_matches_numpy_path(num_frames, height, width):
    frames = np.random.default_rng(1).uniform(0, 255, (num_frames, height, width, 3)).astype(np.float32)
    on_device = jax.jit(pim.to_pixel_values)(jnp.asarray(frames))
    assert isinstance(on_device, jax.Array)
    on_host = pim.to_pixel_values(frames)
    assert on_device.shape == on_host.shape
    assert np.abs(np.asarray(on_device) - on_host).max() <= 1e-6


@pytest.mark.parametrize("num_frames, height, width", [(1, 56, 84), (3, 28, 56)])
def test_raw_uint8_patches_normalize_to_the_vision_tower_input(num_frames, height, width):
    """patchify(uint8) then normalize_patches == to_pixel_values: bit-exact in numpy, 1e-6 jitted."""
    frames = np.random.default_rng(2).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    raw = pim.patchify(frames)  # [t·h·w, 3·tp·p·p] uint8
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(pim.normalize_patches(raw), pim.to_pixel_values(frames))
    on_device = jax.jit(pim.normalize_patches)(jnp.asarray(raw))
    assert np.abs(np.asarray(on_device) - pim.to_pixel_values(frames)).max() <= 1e-6
    with pytest.raises(ValueError, match="rows of 1177 values do not split into 3 channels"):
        pim.normalize_patches(np.zeros((4, 1177), np.uint8))


def test_num_image_tokens():
    assert pim.num_image_tokens([1, 4, 6]) == 6
    np.testing.assert_array_equal(pim.num_image_tokens(np.array([[1, 4, 6], [2, 2, 2]])), [6, 2])
    assert pim.num_image_tokens((1, 3, 3), merge_size=1) == 9
    with pytest.raises(ValueError, match="multiples of merge_size=2"):
        pim.num_image_tokens([1, 3, 4])


# ---------------------------------------------------------------- video

def test_video_equals_image_processor_on_repeated_frame_pairs():
    first, second = _random_image(100, 150, 1), _random_image(100, 150, 2)
    video = np.stack([first, first, second, second])  # each temporal patch holds one frame twice
    bounds = dict(min_pixels=56 * 56, max_pixels=SMALL_MAX_PIXELS)
    pixel_values_videos, video_grid_thw = pim.preprocess_video(video, **bounds)
    ref_values, ref_grid = _hf_preprocess([first, second], **bounds)
    np.testing.assert_array_equal(video_grid_thw, [[2, *ref_grid[0, 1:]]])
    assert np.abs(pixel_values_videos - ref_values).max() <= 1e-5


def test_video_distinct_frames_follow_hf_order_and_pad_odd_frame_count():
    frames = np.random.default_rng(3).integers(0, 256, (3, 56, 28, 3), dtype=np.uint8)  # already 28-multiples
    pixel_values_videos, video_grid_thw = pim.preprocess_video(frames, min_pixels=28 * 28, max_pixels=56 * 28)
    np.testing.assert_array_equal(video_grid_thw, [[2, 4, 2]])  # 3 frames padded to 4
    expected = _loop_patchify(pim.normalize(frames), 14, 2, 2)
    np.testing.assert_array_equal(pixel_values_videos, expected)
    last_pair = pixel_values_videos[8:].reshape(8, 3, 2, 14 * 14)  # grid_t = 1 rows: frames 2 and its copy
    np.testing.assert_array_equal(last_pair[:, :, 0], last_pair[:, :, 1])


# ---------------------------------------------------------------- input validation

@pytest.mark.parametrize(
    "images, message",
    [([], "non-empty list"),
     (_random_image(8, 8), "non-empty list"),
     ([_random_image(8, 8).astype(np.float32)], r"images\[0\]: expected a uint8 numpy array"),
     ([_random_image(8, 8), np.zeros((8, 8), np.uint8)], r"images\[1\]: expected shape \[H, W, 3\]"),
     ([np.zeros((8, 8, 4), np.uint8)], "3 \\(RGB\\) channels")],
)
def test_preprocess_images_rejects_bad_input(images, message):
    with pytest.raises(ValueError, match=message):
        pim.preprocess_images(images)


def test_video_and_patchify_reject_bad_input():
    with pytest.raises(ValueError, match=r"frames: expected shape \[T, H, W, 3\]"):
        pim.preprocess_video(_random_image(28, 28))
    with pytest.raises(ValueError, match="no frames"):
        pim.preprocess_video(np.zeros((0, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="multiples of patch_size\\*merge_size=28"):
        pim.patchify(np.zeros((1, 30, 28, 3), np.float32))
    with pytest.raises(ValueError, match="expected 3 channels"):
        pim.normalize(np.zeros((1, 28, 28, 1), np.float32))
