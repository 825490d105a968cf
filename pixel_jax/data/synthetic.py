"""The embedded default task: procedurally drawn pixel-reasoning questions, offline and seeded.

Every picture is a high-resolution canvas with a plain background colour, one large shape in a
corner, clutter (small shapes, lines and text-like glyph marks in many colours) and ONE small
target: a white sign with a black border that holds a short code, coloured glyphs or a few dots.
The sign is the visual target of Pixel Reasoner's warm start: findable in the model's view, but its
content is unreadable there and readable after a zoom.

Model's view and downsampling factor. A canvas is `view × f` pixels: (H, W) is one of
`view_sizes` (multiples of 28, the model's input, e.g. 224×224) and f one of `downsample_factors`
(default 3 or 4, so canvases are 672–1120 px). The model receives the canvas resized by 1/f; the
sign's glyphs are 6×11 px bitmap characters with 1-px strokes (`glyph_scale` 1), which shrink to
~1.5×2.75 px with sub-pixel strokes in the view, and come back at full resolution after a zoom (a
Pixel Reasoner crop, padded by 0.1·W, is about 0.2·f·view + sign wide: shown at the view size it
is magnified for f ≤ 4). Measured (tests/test_synthetic.py): the gradient energy of the sign's
content kept after down- and up-sampling by f is at most 0.05 (f = 3) and 0.02 (f = 4), against
more than 0.25 for a legible control (glyphs 3× larger at f = 2).

Question kinds (`kind_weights`; `Example.kind`, with `Example.category` in brackets):
  text        (fine_detail)  "What is written on the small white sign?"             exact_match
  colour      (fine_detail)  "What colour is the text on the small white sign?"     exact_match
  count       (counting)     "How many dots are on the small white sign?"           counting
  background  (coarse)       "What is the main background colour of the image?"     exact_match
  corner      (coarse)       "In which corner is the large <shape>?" (4 options)    multiple_choice
  video       (video)        `num_frames` frames, only one holds a sign; "What is written on it?"
Coarse questions are answerable from the global view (target_boxes empty, needs_zoom False), so a
text-only answer sometimes pays: the learning trap of the paper is possible.

Determinism: example `index` of `split` ("train" or "eval") is drawn from
`SeedSequence([seed, split_id, index])` alone, so the same (config, split, index) gives a
byte-identical example in any order or process, and the two splits use disjoint seed streams.
"""

import dataclasses
import functools
import math
import types
from collections.abc import Mapping, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from pixel_jax.data.example import Box, Example

SPLIT_IDS = types.MappingProxyType({"train": 0, "eval": 1})
KINDS = ("text", "colour", "count", "background", "corner", "video")
CATEGORIES = types.MappingProxyType({
    "text": "fine_detail", "colour": "fine_detail", "count": "counting",
    "background": "coarse", "corner": "coarse", "video": "video"})
VIEW_MULTIPLE = 28  # one visual token of Qwen2.5-VL covers 28×28 px

BACKGROUND_COLOURS = types.MappingProxyType({
    "gray": (150, 150, 150), "beige": (225, 210, 170), "light blue": (170, 200, 235),
    "light green": (180, 225, 170), "pink": (240, 190, 200), "lavender": (200, 190, 235)})
TEXT_COLOURS = types.MappingProxyType({
    "red": (220, 30, 30), "green": (20, 150, 50), "blue": (30, 70, 230),
    "orange": (245, 140, 0), "purple": (140, 40, 180), "brown": (120, 70, 30)})
SIGN_FILL = (255, 255, 255)  # clutter never uses white, so the sign is the only white patch
SIGN_BORDER = (0, 0, 0)
SHAPES = ("circle", "square", "triangle")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
GLYPHS = "ACDEFHJKLMNPRTUVWXY34679"  # no look-alike pairs (0/O, 1/I, 5/S, 8/B, 2/Z)
GLYPH_WIDTH, GLYPH_HEIGHT = 6, 11  # Pillow's built-in bitmap font, per character
CLUTTER_MAX_CHANNEL = 215  # clutter colours stay well away from the sign's white
DOT_COLUMNS = 3

DEFAULT_KIND_WEIGHTS = types.MappingProxyType(
    {"text": 3.0, "colour": 1.0, "count": 1.0, "background": 1.0, "corner": 1.0, "video": 1.0})


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the task. Difficulty: `glyph_scale` (target size), `clutter_density`,
    `downsample_factors`; the mix of questions: `kind_weights`."""

    view_sizes: tuple[tuple[int, int], ...] = ((224, 224), (224, 280), (280, 224))  # (H, W)
    downsample_factors: tuple[int, ...] = (3, 4)  # canvas side = view side × f
    glyph_scale: int = 1  # sign glyphs are (6·s)×(11·s) px, strokes s px
    text_length: tuple[int, int] = (2, 3)  # characters on a sign, inclusive range
    dot_count: tuple[int, int] = (2, 6)  # dots on a counting sign, inclusive range
    clutter_density: float = 0.5  # clutter items per 100×100 canvas pixels
    num_frames: int = 4  # frames of a video question
    kind_weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    seed: int = 0

    def __post_init__(self):
        if not self.view_sizes or any(
                len(hw) != 2 or min(hw) < VIEW_MULTIPLE or any(v % VIEW_MULTIPLE for v in hw)
                for hw in self.view_sizes):
            raise ValueError(f"view_sizes must be (H, W) pairs of positive multiples of "
                             f"{VIEW_MULTIPLE}, got {self.view_sizes}")
        if not self.downsample_factors or min(self.downsample_factors) < 1:
            raise ValueError(f"downsample_factors must be integers >= 1, "
                             f"got {self.downsample_factors}")
        if self.glyph_scale < 1:
            raise ValueError(f"glyph_scale must be >= 1, got {self.glyph_scale}")
        for name, (low, high) in (("text_length", self.text_length),
                                  ("dot_count", self.dot_count)):
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be an inclusive range 1 <= low <= high, "
                                 f"got {(low, high)}")
        if self.clutter_density < 0:
            raise ValueError(f"clutter_density must be >= 0, got {self.clutter_density}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (one frame holds the sign), "
                             f"got {self.num_frames}")
        unknown = sorted(set(self.kind_weights) - set(KINDS))
        weights = list(self.kind_weights.values())
        if unknown or min(weights, default=-1) < 0 or sum(weights) <= 0:
            raise ValueError(f"kind_weights must map kinds of {KINDS} to weights >= 0 with a "
                             f"positive sum, got {dict(self.kind_weights)}")


# ------------------------------------------------------------------------------ drawing


@functools.cache
def _bitmap_font() -> PIL.ImageFont.ImageFont:
    """Pillow's built-in bitmap font: identical glyphs on every platform (no FreeType)."""
    return PIL.ImageFont.load_default_imagefont()


def _glyph_mask(text: str, scale: int) -> PIL.Image.Image:
    """An "L" mask of `text` in the bitmap font, enlarged `scale`× with nearest neighbour."""
    mask = PIL.Image.new("L", (GLYPH_WIDTH * len(text), GLYPH_HEIGHT), 0)
    PIL.ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=_bitmap_font())
    return mask.resize((mask.width * scale, mask.height * scale), PIL.Image.Resampling.NEAREST)


def _choice(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(0, len(items)))]


def _random_code(rng: np.random.Generator, length_range: tuple[int, int]) -> str:
    length = int(rng.integers(length_range[0], length_range[1] + 1))
    return "".join(GLYPHS[i] for i in rng.integers(0, len(GLYPHS), length))


def _clutter_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, CLUTTER_MAX_CHANNEL + 1, 3))


def _draw_clutter(canvas: PIL.Image.Image, rng: np.random.Generator, density: float) -> None:
    """Small filled and outlined shapes, lines and glyph marks at random places."""
    width, height = canvas.size
    draw = PIL.ImageDraw.Draw(canvas)
    short_side = min(width, height)
    for _ in range(int(round(density * width * height / 100**2))):
        size = int(rng.integers(short_side // 50 + 2, short_side // 12 + 3))
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        box = (x, y, x + size, y + size)
        colour = _clutter_colour(rng)
        item = int(rng.integers(0, 5))
        if item == 0:
            draw.ellipse(box, fill=colour)
        elif item == 1:
            draw.rectangle(box, outline=colour, width=int(rng.integers(1, 4)))
        elif item == 2:
            draw.line((x, y, x + size, y + int(rng.integers(0, size))), fill=colour,
                      width=int(rng.integers(1, 4)))
        elif item == 3:
            draw.polygon([(x, y + size), (x + size // 2, y), (x + size, y + size)], fill=colour)
        else:
            mark = _glyph_mask(_random_code(rng, (2, 5)), int(rng.integers(1, 3)))
            canvas.paste(colour, (x, y), mark)


def _draw_big_shape(canvas: PIL.Image.Image, shape: str, corner: int, colour) -> Box:
    """A shape of side 0.3·min(H, W) inside corner `corner` (index into CORNERS); its box."""
    width, height = canvas.size
    side, margin = int(0.3 * min(width, height)), int(0.04 * min(width, height))
    x = margin if corner in (0, 2) else width - margin - side
    y = margin if corner in (0, 1) else height - margin - side
    box = (x, y, x + side, y + side)
    draw = PIL.ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x, y + side), (x + side // 2, y), (x + side, y + side)], fill=colour)
    return box


def _sign_content(kind: str, rng: np.random.Generator, config: SyntheticConfig):
    """(mask of the sign's content, its colour, the answer) for a sign of question `kind`."""
    scale = config.glyph_scale
    if kind == "count":
        count = int(rng.integers(config.dot_count[0], config.dot_count[1] + 1))
        rows = math.ceil(config.dot_count[1] / DOT_COLUMNS)
        pitch, radius = 5 * scale, scale
        mask = PIL.Image.new("L", (DOT_COLUMNS * pitch, rows * pitch), 0)
        draw = PIL.ImageDraw.Draw(mask)
        for slot in sorted(rng.choice(DOT_COLUMNS * rows, size=count, replace=False)):
            cx = (slot % DOT_COLUMNS) * pitch + pitch // 2
            cy = (slot // DOT_COLUMNS) * pitch + pitch // 2
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        return mask, SIGN_BORDER, str(count)
    code = _random_code(rng, config.text_length)
    if kind == "colour":
        name = _choice(rng, list(TEXT_COLOURS))
        return _glyph_mask(code, scale), TEXT_COLOURS[name], name
    return _glyph_mask(code, scale), SIGN_BORDER, code


def _place_sign(canvas: PIL.Image.Image, content: PIL.Image.Image, colour, corner: int,
                rng: np.random.Generator, scale: int) -> Box:
    """Draws the sign (white card, black border, `content` in `colour`) in a random spot of one
    of the three quadrants free of the big shape at `corner`; returns the card's box."""
    width, height = canvas.size
    padding, border = 2 * scale, scale
    sign_w = content.width + 2 * (padding + border)
    sign_h = content.height + 2 * (padding + border)
    quadrant = [q for q in range(4) if q != corner][int(rng.integers(0, 3))]
    margin = int(0.02 * min(width, height))
    x_low = margin if quadrant in (0, 2) else width // 2
    y_low = margin if quadrant in (0, 1) else height // 2
    x_high = (width // 2 if quadrant in (0, 2) else width - margin) - sign_w
    y_high = (height // 2 if quadrant in (0, 1) else height - margin) - sign_h
    if x_high <= x_low or y_high <= y_low:
        raise ValueError(f"a {sign_w}x{sign_h} px sign does not fit in a quadrant of a "
                         f"{width}x{height} canvas: lower glyph_scale, text_length or dot_count")
    x, y = int(rng.integers(x_low, x_high)), int(rng.integers(y_low, y_high))
    PIL.ImageDraw.Draw(canvas).rectangle((x, y, x + sign_w - 1, y + sign_h - 1), fill=SIGN_FILL,
                                         outline=SIGN_BORDER, width=border)
    canvas.paste(colour, (x + border + padding, y + border + padding), content)
    return (float(x), float(y), float(x + sign_w), float(y + sign_h))


@dataclasses.dataclass(frozen=True)
class _Scene:
    """The parts of a canvas that every frame of one example shares."""

    size: tuple[int, int]  # (W, H) of the canvas
    background: str  # a key of BACKGROUND_COLOURS
    shape: str
    corner: int  # index into CORNERS
    shape_colour: tuple[int, int, int]


def _sample_scene(rng: np.random.Generator, config: SyntheticConfig) -> _Scene:
    view_h, view_w = _choice(rng, config.view_sizes)
    factor = _choice(rng, config.downsample_factors)
    return _Scene(size=(view_w * factor, view_h * factor),
                  background=_choice(rng, list(BACKGROUND_COLOURS)),
                  shape=_choice(rng, SHAPES),
                  corner=int(rng.integers(0, len(CORNERS))),
                  shape_colour=_clutter_colour(rng))


def _draw_frame(scene: _Scene, rng: np.random.Generator, config: SyntheticConfig,
                sign_kind: str | None):
    """One canvas of `scene` with fresh clutter and, unless sign_kind is None, a sign whose
    content suits question `sign_kind` → (image [H, W, 3] uint8, sign box or None, answer)."""
    canvas = PIL.Image.new("RGB", scene.size, BACKGROUND_COLOURS[scene.background])
    _draw_clutter(canvas, rng, config.clutter_density)
    _draw_big_shape(canvas, scene.shape, scene.corner, scene.shape_colour)
    box, answer = None, None
    if sign_kind is not None:
        content, colour, answer = _sign_content(sign_kind, rng, config)
        box = _place_sign(canvas, content, colour, scene.corner, rng, config.glyph_scale)
    return np.asarray(canvas, dtype=np.uint8), box, answer


# ------------------------------------------------------------------------------ examples

_QUESTIONS = types.MappingProxyType({
    "text": "What is written on the small white sign?",
    "colour": "What colour is the text on the small white sign?",
    "count": "How many dots are on the small white sign?",
    "background": "What is the main background colour of the image?",
    "video": "One of the frames shows a small white sign. What is written on it?",
})
_METRICS = types.MappingProxyType({"text": "exact_match", "colour": "exact_match",
                                   "count": "counting", "background": "exact_match",
                                   "corner": "multiple_choice", "video": "exact_match"})


def example_rng(config: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The generator of example `index` of `split`: SeedSequence([seed, split_id, index])."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return np.random.default_rng(np.random.SeedSequence([config.seed, SPLIT_IDS[split], index]))


def _sample_kind(rng: np.random.Generator, config: SyntheticConfig) -> str:
    kinds = [kind for kind in KINDS if config.kind_weights.get(kind, 0) > 0]
    weights = np.array([config.kind_weights[kind] for kind in kinds], dtype=np.float64)
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]


def generate(config: SyntheticConfig, split: str, index: int) -> Example:
    """Example `index` of `split`; a pure function of (config, split, index)."""
    rng = example_rng(config, split, index)
    kind = _sample_kind(rng, config)
    scene = _sample_scene(rng, config)
    common = dict(id=f"synthetic/{split}/{index}", source="synthetic", kind=kind,
                  category=CATEGORIES[kind], answer_metric=_METRICS[kind])
    if kind == "video":
        target_frame = int(rng.integers(0, config.num_frames))
        frames = [_draw_frame(scene, rng, config, "text" if t == target_frame else None)
                  for t in range(config.num_frames)]
        _, box, answer = frames[target_frame]
        return Example(**common, question=_QUESTIONS[kind], answers=(answer,),
                       frames=np.stack([image for image, _, _ in frames]),  # [T, H, W, 3]
                       target_boxes=(box,), target_frames=(target_frame,), needs_zoom=True)
    fine = CATEGORIES[kind] != "coarse"
    image, box, answer = _draw_frame(scene, rng, config, kind if fine else "text")
    if kind == "background":
        return Example(**common, image=image, question=_QUESTIONS[kind],
                       answers=(scene.background,))
    if kind == "corner":
        return Example(**common, image=image, options=CORNERS,
                       question=f"In which corner of the image is the large {scene.shape}?",
                       answers=(chr(ord("A") + scene.corner),))
    return Example(**common, image=image, question=_QUESTIONS[kind], answers=(answer,),
                   target_boxes=(box,), needs_zoom=True)


class SyntheticSource(Sequence):
    """`num_examples` examples of one split as a random-access source (grain's protocol)."""

    def __init__(self, config: SyntheticConfig, split: str, num_examples: int):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        self.config, self.split, self.num_examples = config, split, num_examples

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        return generate(self.config, self.split, index)
