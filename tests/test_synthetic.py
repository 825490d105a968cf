"""The embedded synthetic task: determinism, splits, the answers against the pixels, and the
legibility of the target (lost in the model's view, kept by a zoom)."""

import collections
import hashlib

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import pytest

from pixel_jax.data import synthetic
from pixel_jax.rl.rewards import REWARD_PARTS, Response

TINY = synthetic.SyntheticConfig(view_sizes=((56, 56), (56, 84)), downsample_factors=(3,),
                                 clutter_density=0.5, num_frames=3)
WHITE = np.array(synthetic.SIGN_FILL, np.uint8)


def tiny(**kind_weights) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(**{**TINY.__dict__, "kind_weights": kind_weights})


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def pictures(example) -> np.ndarray:
    return example.image if example.image is not None else example.frames


def white_pixels(image: np.ndarray) -> np.ndarray:
    return np.all(image == WHITE, axis=-1)  # [H, W]


def sign_interior(example, image, glyph_scale=1):
    """The part of the sign inside its border and padding (3·glyph_scale px)."""
    margin = 3 * glyph_scale
    x1, y1, x2, y2 = map(int, example.target_box)
    return image[y1 + margin:y2 - margin, x1 + margin:x2 - margin]


# ------------------------------------------------------------------------------ determinism


def test_same_seed_gives_byte_identical_examples_in_any_order():
    first = [synthetic.generate(TINY, "train", i) for i in range(6)]
    again = [synthetic.generate(TINY, "train", i) for i in reversed(range(6))][::-1]
    for a, b in zip(first, again):
        assert digest(pictures(a)) == digest(pictures(b))
        assert (a.question, a.answers, a.kind, a.target_boxes) == (b.question, b.answers, b.kind,
                                                                   b.target_boxes)
    assert len({digest(pictures(e)) for e in first}) == 6
    other_seed = synthetic.SyntheticConfig(**{**TINY.__dict__, "seed": 1})
    assert digest(pictures(synthetic.generate(other_seed, "train", 0))) != digest(
        pictures(first[0]))


def test_train_and_eval_splits_are_disjoint():
    def digests(split):
        return {digest(pictures(synthetic.generate(TINY, split, i))) for i in range(20)}

    assert not digests("train") & digests("eval")
    assert synthetic.generate(TINY, "eval", 3).id == "synthetic/eval/3"
    with pytest.raises(ValueError, match="split must be one of \\['eval', 'train'\\], got 'test'"):
        synthetic.generate(TINY, "test", 0)


def test_source_is_random_access():
    source = synthetic.SyntheticSource(TINY, "eval", 4)
    assert len(source) == 4
    assert digest(pictures(source[2])) == digest(pictures(synthetic.generate(TINY, "eval", 2)))
    with pytest.raises(IndexError, match="index 4 out of range for 4 examples"):
        source[4]


# ------------------------------------------------------------------------------ kinds and sizes


def test_canvas_is_a_view_size_times_the_factor():
    config = synthetic.SyntheticConfig(**{**TINY.__dict__, "downsample_factors": (2, 3)})
    sizes = {synthetic.generate(config, "train", i).image.shape[:2]
             for i in range(40) if synthetic.generate(config, "train", i).image is not None}
    assert sizes == {(112, 112), (112, 168), (168, 168), (168, 252)}


def test_kinds_follow_the_weights():
    kinds = collections.Counter(synthetic.generate(tiny(text=3.0, corner=1.0), "train", i).kind
                                for i in range(200))
    assert set(kinds) == {"text", "corner"}
    assert 0.65 < kinds["text"] / 200 < 0.85  # p = 0.75, binomial sd 0.031
    assert {synthetic.generate(tiny(count=1.0), "train", i).kind for i in range(5)} == {"count"}


def test_every_answer_scores_one_with_its_metric():
    for i in range(30):
        example = synthetic.generate(TINY, "train", i)
        response = Response(turns=(f"\\boxed{{{example.answers[0]}}}",), protocol="hermes",
                            gold_answers=example.answers, answer_metric=example.answer_metric,
                            options=example.options)
        assert REWARD_PARTS.get("correct")(response) == 1.0, example.id
        coarse = example.category == "coarse"
        assert example.needs_zoom is not coarse and bool(example.target_boxes) is not coarse


# ------------------------------------------------------------------------------ answers vs pixels


def test_sign_is_the_only_white_patch_and_its_box_is_exact():
    for i in range(10):
        example = synthetic.generate(tiny(text=1.0, count=1.0), "train", i)
        ys, xs = np.nonzero(white_pixels(example.image))
        x1, y1, x2, y2 = example.target_box
        # The white card fills the box except its 1-px black border.
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1 + 1, y1 + 1, x2 - 1, y2 - 1)
        assert np.all(example.image[int(y1), int(x1):int(x2)] == 0)


def test_text_on_the_sign_is_the_answer_in_the_bitmap_font():
    font = PIL.ImageFont.load_default_imagefont()
    for i in range(6):
        example = synthetic.generate(tiny(text=1.0), "train", i)
        reference = PIL.Image.new("L", (6 * len(example.answers[0]), 11), 0)
        PIL.ImageDraw.Draw(reference).text((0, 0), example.answers[0], fill=255, font=font)
        dark = np.all(sign_interior(example, example.image) == 0, axis=-1)
        np.testing.assert_array_equal(dark, np.asarray(reference) > 0)


def test_colour_answer_is_the_colour_of_the_glyphs():
    for i in range(6):
        example = synthetic.generate(tiny(colour=1.0), "train", i)
        interior = sign_interior(example, example.image).reshape(-1, 3)
        inked = {tuple(p) for p in interior if tuple(p) != synthetic.SIGN_FILL}
        assert inked == {synthetic.TEXT_COLOURS[example.answers[0]]}


def count_components(mask: np.ndarray) -> int:
    """4-connected components of a boolean mask (a small flood fill)."""
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count, stack = count + 1, [start]
        while stack:
            y, x = stack.pop()
            if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x] and not seen[y, x]:
                seen[y, x] = True
                stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    return count


def test_count_answer_is_the_number_of_dots():
    answers = set()
    for i in range(8):
        example = synthetic.generate(tiny(count=1.0), "train", i)
        dark = np.all(sign_interior(example, example.image) == 0, axis=-1)
        assert count_components(dark) == int(example.answers[0])
        answers.add(example.answers[0])
    assert len(answers) > 1


def test_background_answer_is_the_dominant_colour():
    for i in range(6):
        example = synthetic.generate(tiny(background=1.0), "train", i)
        colours, counts = np.unique(example.image.reshape(-1, 3), axis=0, return_counts=True)
        assert tuple(colours[counts.argmax()]) == synthetic.BACKGROUND_COLOURS[example.answers[0]]
        assert counts.max() / counts.sum() > 0.5


def test_corner_answer_holds_the_large_shape():
    for i in range(8):
        example = synthetic.generate(tiny(corner=1.0), "train", i)
        pixels = example.image.reshape(-1, 3)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        shape_colour = colours[np.argsort(counts)[-2]]  # second most common: the large shape
        ys, xs = np.nonzero(np.all(example.image == shape_colour, axis=-1))
        height, width = example.image.shape[:2]
        corner = 2 * (ys.mean() > height / 2) + (xs.mean() > width / 2)
        assert example.options[corner] == synthetic.CORNERS[corner]
        assert example.answers == (chr(ord("A") + corner),)


def test_video_shows_the_sign_in_one_frame_only():
    for i in range(4):
        example = synthetic.generate(tiny(video=1.0), "train", i)
        assert example.frames.shape[0] == 3 and example.image is None
        with_sign = [t for t, frame in enumerate(example.frames) if white_pixels(frame).any()]
        assert with_sign == list(example.target_frames)
        frame = example.frames[example.target_frames[0]]
        ys, xs = np.nonzero(white_pixels(frame))
        x1, y1, x2, y2 = example.target_box
        assert x1 < xs.min() and xs.max() < x2 and y1 < ys.min() and ys.max() < y2


# ------------------------------------------------------------------------------ legibility


def gradient_energy(gray: np.ndarray) -> float:
    return float(np.mean(np.diff(gray, axis=0) ** 2) + np.mean(np.diff(gray, axis=1) ** 2))


def detail_retained(example, factor: int, glyph_scale: int = 1) -> float:
    """Gradient energy of the sign's content after downsampling the canvas by `factor` (PIL
    bicubic, as the model's view is made) and upsampling back, over the energy at full size."""
    height, width = example.image.shape[:2]
    view = PIL.Image.fromarray(example.image).resize((width // factor, height // factor),
                                                     PIL.Image.Resampling.BICUBIC)
    back = np.asarray(view.resize((width, height), PIL.Image.Resampling.BICUBIC))
    energies = [gradient_energy(sign_interior(example, image, glyph_scale).astype(np.float64)
                                @ [0.299, 0.587, 0.114]) for image in (back, example.image)]
    return energies[0] / energies[1]


@pytest.mark.parametrize("factor", [3, 4])
def test_target_detail_is_lost_in_the_view(factor):
    config = synthetic.SyntheticConfig(downsample_factors=(factor,),
                                       kind_weights={"text": 1, "colour": 1, "count": 1})
    retained = [detail_retained(synthetic.generate(config, "train", i), factor) for i in range(8)]
    assert max(retained) < 0.1  # measured: max 0.046 at f = 3, 0.021 at f = 4


def test_a_legible_control_keeps_its_detail():
    """The criterion separates: glyphs 3x larger (18x33 px) seen at f = 2 keep > 0.2."""
    config = synthetic.SyntheticConfig(downsample_factors=(2,), glyph_scale=3,
                                       kind_weights={"text": 1})
    retained = [detail_retained(synthetic.generate(config, "train", i), 2, glyph_scale=3)
                for i in range(6)]
    assert min(retained) > 0.2


@pytest.mark.parametrize("factor", [3, 4])
def test_a_zoom_shows_the_target_at_full_resolution_or_more(factor):
    """Pixel Reasoner's crop of the target box (padded by 0.1·W, 0.1·H, clamped) shown at the
    view's size is magnified (≥ 1 screen pixel per canvas pixel), so no detail is lost."""
    config = synthetic.SyntheticConfig(downsample_factors=(factor,), kind_weights={"text": 1})
    for i in range(8):
        example = synthetic.generate(config, "train", i)
        height, width = example.image.shape[:2]
        x1, y1, x2, y2 = example.target_box
        crop_w = min(width, x2 + 0.1 * width) - max(0.0, x1 - 0.1 * width)
        crop_h = min(height, y2 + 0.1 * height) - max(0.0, y1 - 0.1 * height)
        magnification = min(width / factor / crop_w, height / factor / crop_h)
        assert magnification >= 1.0, (example.id, magnification)


# ------------------------------------------------------------------------------ config errors


@pytest.mark.parametrize("overrides, message", [
    (dict(view_sizes=((224, 200),)), "view_sizes must be \\(H, W\\) pairs of positive multiples"),
    (dict(downsample_factors=(0,)), "downsample_factors must be integers >= 1"),
    (dict(text_length=(3, 2)), "text_length must be an inclusive range"),
    (dict(num_frames=1), "num_frames must be >= 2"),
    (dict(kind_weights={"zoom": 1.0}), "kind_weights must map kinds of"),
    (dict(kind_weights={"text": 0.0}), "kind_weights must map kinds of"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        synthetic.SyntheticConfig(**overrides)


def test_a_sign_too_large_for_the_canvas_is_an_error():
    config = synthetic.SyntheticConfig(**{**tiny(text=1.0).__dict__, "glyph_scale": 8})
    with pytest.raises(ValueError, match="sign does not fit in a quadrant .* lower glyph_scale"):
        synthetic.generate(config, "train", 0)
