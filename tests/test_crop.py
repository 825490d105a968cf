"""crop_and_resize against PIL, compile-once, vmap; every box rule with hand-computed values."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from pixel_jax.tools import crop
from pixel_jax.tools.errors import ToolError


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def gradient_image(height, width):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], -1).astype(
        np.uint8
    )


def pil_crop_and_resize(image, region, out_hw):
    """The reference: PIL's crop of the fitted integer region, then BILINEAR resize."""
    cropped = PIL.Image.fromarray(image).crop(tuple(int(v) for v in region))
    return np.asarray(cropped.resize((out_hw[1], out_hw[0]), PIL.Image.BILINEAR), np.float32)


def assert_matches_pil(image, box, out_hw):
    region = np.asarray(crop.fit_box_to_grid(box, image.shape[1::-1], out_hw))
    ours = crop.crop_and_resize(jnp.asarray(image), jnp.asarray(box, jnp.float32), out_hw)
    mean_abs = np.abs(np.asarray(ours) - pil_crop_and_resize(image, region, out_hw)).mean() / 255
    assert mean_abs <= 1 / 255, f"box {box} → region {region}: mean |Δ| = {mean_abs * 255:.3f}/255"
    return mean_abs


# ---------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("make_image", [random_image, gradient_image])
@pytest.mark.parametrize(
    "box, out_hw",
    [
        ((0, 0, 160, 120), (24, 32)),  # whole image, downscale 5×
        ((40.3, 30.7, 52.9, 41.2), (48, 48)),  # small non-integer box, upscale ~4×
        ((0, 0, 20, 10), (32, 32)),  # touching the top-left border
        ((150, 100, 160, 120), (40, 24)),  # bottom-right border, tall grid
        ((10, 5, 150, 115), (8, 8)),  # heavy downscale ~15×
        ((-20, 60, 90, 140), (16, 48)),  # partly outside the image, wide grid
        ((12.5, 8, 140, 100), (15, 21)),  # odd grid: the last block of rows is padded
        ((30, 20, 90, 80), (1, 3)),  # a single output row
    ],
)
def test_crop_matches_pil_bilinear(make_image, box, out_hw):
    assert_matches_pil(make_image(120, 160), box, out_hw)


def test_heavy_downscale_uses_antialiasing_filter():
    # 20× reduction: a 2-tap bilinear would alias badly on random pixels; Pillow's widened
    # triangle (support = scale) averages ~40 px per axis. Both must agree.
    assert_matches_pil(random_image(320, 400, seed=3), (0, 0, 400, 320), (16, 20))


def test_padded_image_crops_like_the_unpadded_one():
    image = random_image(50, 70, seed=1)
    padded = np.zeros((64, 96, 3), np.uint8)
    padded[:50, :70] = image
    box = jnp.array([40.0, 20.0, 75.0, 60.0])  # beyond the true image: clamped to 70×50, not 96×64
    expected = crop.crop_and_resize(jnp.asarray(image), box, (16, 16))
    actual = crop.crop_and_resize(jnp.asarray(padded), box, (16, 16), image_wh=jnp.array([70, 50]))
    np.testing.assert_allclose(actual, expected, atol=1e-3)


def test_float_image_is_resampled_like_uint8():
    image = random_image(40, 60, seed=2)
    box = jnp.array([5.0, 7.0, 33.0, 30.0])
    from_uint8 = crop.crop_and_resize(jnp.asarray(image), box, (20, 20))
    from_float = crop.crop_and_resize(jnp.asarray(image, jnp.float32) / 255, box, (20, 20))
    np.testing.assert_allclose(from_float * 255, from_uint8, atol=1e-3)


def test_jit_with_traced_box_compiles_once():
    traces = []

    def crop_32(image, box):
        traces.append(box)
        return crop.crop_and_resize(image, box, (32, 32))

    jitted = jax.jit(crop_32)
    image = jnp.asarray(random_image(60, 80))
    boxes = [(0, 0, 80, 60), (10.5, 3.2, 20.1, 9.9), (70, 50, 80, 60), (-5, -5, 200, 200)]
    outputs = [jitted(image, jnp.array(box, jnp.float32)) for box in boxes]
    assert len(traces) == 1
    assert jitted._cache_size() == 1
    assert not np.allclose(outputs[0], outputs[1])  # the traced box really changes the crop


def test_vmap_over_rows_equals_per_row_calls():
    images = jnp.asarray(np.stack([random_image(48, 64, seed=s) for s in range(3)]))
    boxes = jnp.array([[0, 0, 64, 48], [10, 12, 30, 20], [50.5, 40.5, 64, 48]], jnp.float32)
    crop_row = functools.partial(crop.crop_and_resize, out_hw=(16, 24))
    batched = jax.jit(jax.vmap(crop_row))(images, boxes)
    for row in range(3):
        np.testing.assert_allclose(batched[row], crop_row(images[row], boxes[row]), atol=1e-3)


def test_out_hw_must_be_positive():
    with pytest.raises(ValueError, match="out_hw"):
        crop.crop_and_resize(jnp.zeros((8, 8, 3)), jnp.array([0.0, 0, 8, 8]), (0, 4))


# --------------------------------------------------------------------------- fit_box_to_grid


@pytest.mark.parametrize(
    "box, image_wh, out_hw, expected",
    [
        ((100, 100, 300, 200), (1000, 800), (448, 448), (100, 50, 300, 250)),  # grown to square
        ((950, 10, 1000, 110), (1000, 800), (448, 448), (900, 10, 1000, 110)),  # shifted left
        ((100, 100, 200, 200), (1000, 800), (224, 448), (50, 100, 250, 200)),  # wide grid 2:1
        ((0, 0, 1000, 100), (1000, 300), (448, 448), (0, 0, 1000, 300)),  # clipped: loses aspect
        ((10.5, 20.5, 110.5, 120.5), (1000, 800), (64, 64), (10, 20, 110, 120)),  # half to even
        ((11.5, 0, 111.5, 100), (1000, 800), (64, 64), (12, 0, 112, 100)),
        ((50, 50, 50, 50), (1000, 800), (64, 64), (50, 50, 51, 51)),  # empty: still 1 px
    ],
)
def test_fit_box_to_grid(box, image_wh, out_hw, expected):
    region = crop.fit_box_to_grid(jnp.array(box, jnp.float32), jnp.array(image_wh), out_hw)
    assert region.tolist() == list(expected)


# ------------------------------------------------------------------------ pixel reasoner box


@pytest.mark.parametrize(
    "bbox_2d, image_wh, expected_box, expected_error",
    [
        # normalised (all < 1) and the same box in absolute pixels: padded 0.1·W, 0.1·H
        ((0.2, 0.4, 0.5, 0.6), (1000, 500), (100, 150, 600, 350), ToolError.OK),
        ((200, 200, 500, 300), (1000, 500), (100, 150, 600, 350), ToolError.OK),
        # 1.0 is not < 1: read as absolute pixels, a 0.5-px box, padded then clamped
        ((0.5, 0.5, 1.0, 1.0), (1000, 500), (0, 0, 101, 51), ToolError.OK),
        ((0.0, 0.0, 0.1, 0.1), (1000, 500), (0, 0, 200, 100), ToolError.OK),  # clamped at 0
        # a negative value is < 1 too: normalised
        ((-0.1, 0.2, 0.3, 0.4), (1000, 500), (0, 50, 400, 250), ToolError.OK),
        ((0.4, 0.4, 0.49, 0.49), (100, 100), (30, 30, 59, 59), ToolError.OK),  # 29 px sides
        ((0.4, 0.4, 0.48, 0.48), (100, 100), (30, 30, 58, 58), ToolError.CROP_TOO_SMALL),  # 28
        ((2000, 100, 2100, 200), (1000, 500), (1000, 50, 1000, 250), ToolError.CROP_TOO_SMALL),
        ((0.5, 0.2, 0.4, 0.6), (1000, 500), (400, 50, 500, 350), ToolError.BOX_EMPTY_OR_INVERTED),
        ((0.3, 0.2, 0.3, 0.6), (1000, 500), (200, 50, 400, 350), ToolError.BOX_EMPTY_OR_INVERTED),
    ],
)
def test_pixel_reasoner_box(bbox_2d, image_wh, expected_box, expected_error):
    box, error = crop.pixel_reasoner_box(jnp.array(bbox_2d, jnp.float32), jnp.array(image_wh))
    np.testing.assert_allclose(box, expected_box, atol=1e-3)
    assert int(error) == expected_error


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_pixel_reasoner_box_not_finite(bad):
    _, error = crop.pixel_reasoner_box(jnp.array([0.1, 0.1, bad, 0.5]), jnp.array([100, 100]))
    assert int(error) == ToolError.BOX_NOT_FOUR_NUMBERS


# ----------------------------------------------------------------------------- groundlight box


@pytest.mark.parametrize(
    "keypoint, image_wh, expected_box",
    [
        ((500, 400), (1000, 800), (300, 200, 700, 600)),  # centred
        ((50, 30), (1000, 800), (0, 0, 400, 400)),  # shifted right and down
        ((990, 799), (1000, 800), (600, 400, 1000, 800)),  # shifted left and up
        ((100, 400), (300, 800), (0, 200, 300, 600)),  # narrow image: the whole x axis
        ((250.5, 300.25), (1000, 800), (50.5, 100.25, 450.5, 500.25)),
    ],
)
def test_groundlight_zoom_box(keypoint, image_wh, expected_box):
    box, error = crop.groundlight_zoom_box(jnp.array(keypoint, jnp.float32), jnp.array(image_wh))
    np.testing.assert_allclose(box, expected_box)
    assert int(error) == ToolError.OK


@pytest.mark.parametrize("keypoint", [(1000, 10), (10, 800), (-1, 10), (np.nan, 10)])
def test_groundlight_keypoint_outside_image(keypoint):
    _, error = crop.groundlight_zoom_box(jnp.array(keypoint, jnp.float32), jnp.array([1000, 800]))
    assert int(error) == ToolError.KEYPOINT_OUT_OF_RANGE


def test_groundlight_output_hw():
    # 1024 → the nearest multiple of 28, unless the pixel budget shrinks it (default 1280 tokens)
    assert crop.groundlight_output_hw(1024, max_pixels=2048 * 2048) == (1036, 1036)
    assert crop.groundlight_output_hw(1024) == (980, 980)
    assert crop.groundlight_output_hw(300) == (392, 392)  # never below the 400-px box: 400 → 392
    assert crop.groundlight_output_hw(1024, max_pixels=448 * 448) == (448, 448)
    with pytest.raises(ValueError, match="input_longer_side"):
        crop.groundlight_output_hw(0)


# ----------------------------------------------------------------------------- crops of crops


def test_to_original_box():
    source_box = jnp.array([100, 200, 500, 600])
    box = crop.to_original_box(jnp.array([0.0, 0, 224, 448]), source_box, (448, 448))
    np.testing.assert_allclose(box, [100, 200, 300, 600])
    box = crop.to_original_box(jnp.array([10.0, 20, 30, 40]), jnp.array([0, 0, 64, 48]), (32, 24))
    np.testing.assert_allclose(box, [20, 40, 60, 80])


def test_crop_of_crop_equals_direct_crop_of_the_composed_box():
    # On a linear ramp, bilinear resampling at an integer scale returns the ramp at each output
    # pixel's centre (away from crop borders), so re-cropping the shown crop and cropping the
    # composed box from the original agree in the interior iff the composition maps the same points.
    y, x = np.mgrid[0:400, 0:600].astype(np.float32)
    original = jnp.asarray(np.stack([0.5 * x + 0.25 * y, x, y], -1))  # [400, 600, 3]
    out_hw = (64, 64)
    first_box = jnp.array([100.0, 100, 356, 356])  # 256 px → 64: 4 original px per shown px
    first_source = crop.fit_box_to_grid(first_box, (600, 400), out_hw)
    first_crop = crop.crop_and_resize(original, first_box, out_hw)
    second_box = jnp.array([16.0, 16, 48, 48])  # in the first crop's shown frame
    composed = crop.to_original_box(second_box, first_source, (64, 64))
    np.testing.assert_allclose(composed, [164, 164, 292, 292])
    direct = crop.crop_and_resize(original, composed, out_hw)  # 128 px → 64
    recropped = crop.crop_and_resize(first_crop, second_box, out_hw)  # 32 px → 64
    np.testing.assert_allclose(direct[4:-4, 4:-4], recropped[4:-4, 4:-4], atol=1e-3)


def test_select_target():
    source_boxes = jnp.array([[0, 0, 800, 600], [100, 100, 300, 300], [0, 0, 0, 0]], jnp.float32)
    shown_wh = jnp.array([[400, 300], [448, 448], [0, 0]])
    box, wh, error = crop.select_target(source_boxes, shown_wh, n_shown=2, target_image=2)
    assert box.tolist() == [100, 100, 300, 300] and wh.tolist() == [448, 448]
    assert int(error) == ToolError.OK
    for target in (0, 3, -1):
        *_, error = crop.select_target(source_boxes, shown_wh, n_shown=2, target_image=target)
        assert int(error) == ToolError.TARGET_IMAGE_OUT_OF_RANGE


@pytest.mark.parametrize("box", [(np.nan, 0, 10, 10), (30, 30, 10, 10), (np.inf, -np.inf, 5, 5)])
def test_garbage_box_still_gives_a_finite_crop(box):
    # the rollout crops every row and masks failed calls afterwards: no NaN may leak out
    image = jnp.asarray(random_image(20, 30))
    out = crop.crop_and_resize(image, jnp.array(box, jnp.float32), (8, 8))
    assert np.isfinite(np.asarray(out)).all()
