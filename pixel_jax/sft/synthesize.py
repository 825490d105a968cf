"""Warm-start trajectories (METHOD.md, Phase 1): scripted responses in a tool protocol's exact
text, replayed through the rollout engine.

Kinds (`KINDS`):
  single_pass      look at the whole image → zoom on the target (a call with the right box) →
                   read the crop → answer;
  self_correction  zoom on a wrong box whose crop does not touch the target → note that the crop
                   holds nothing useful → zoom on the right box → read it → answer;
  textual          no operation, for questions the whole view answers (`needs_zoom` False).
An example gets one of the kinds that fit it — textual iff it needs no zoom; the zoom kinds need a
target box, self-correction also a wrong box — drawn by `SynthesisConfig.kind_weights` among
those. The share of textual trajectories is hence the share of no-zoom questions in the data (for
the synthetic task, set by `SyntheticConfig.kind_weights`).

Faithfulness. A `Script` holds only the assistant's texts. The tool results between them are never
written here: `Synthesizer` teacher-forces the script's tokens through the rollout engine
(`forced_tokens`), which parses each call on device, crops the original image and injects the
protocol's result text and the crop's image tokens exactly as during RL. The output is a
`Trajectory` whose loss mask is the tokens the script wrote, so SFT and GRPO share one token
layout and one mask. Boxes are chosen with the engine's own `execute_crop`: the right call's crop
contains the whole target, the wrong call's crop does not intersect it (IoU 0). The answer is only
written in the last turn, after the last crop: no bypassing trajectory.

Determinism: the kind and the phrasings are drawn by a generator seeded with (seed, example id),
so a script depends on nothing but its example, its bucket geometry and the config.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import types
import zlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixel_jax.data.example import Box, Example
from pixel_jax.data.pipeline import Batch
from pixel_jax.models.qwen2_5_vl.model import Qwen2_5_VL
from pixel_jax.processing.tokenizer import Tokenizer
from pixel_jax.registry import Registry
from pixel_jax.rollout import engine as engine_lib
from pixel_jax.rollout.inputs import rollout_inputs
from pixel_jax.rollout.sampling import SamplingParams
from pixel_jax.rollout.tool_step import ToolTables, execute_crop
from pixel_jax.sft.trainer import SFTBatch
from pixel_jax.tools import crop as crop_ops
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import PROTOCOLS, ParsedCall, ToolProtocol, hermes

KINDS = ("single_pass", "self_correction", "textual")
DEFAULT_KIND_WEIGHTS = types.MappingProxyType(
    {"single_pass": 2.0, "self_correction": 1.0, "textual": 1.0})
WRONG_BOX_GRID = 5  # wrong-box candidates: centres on a 5 × 5 lattice over the view


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """The protocol, the mix of kinds and the rollout shapes of the replay (which should be the
    RL rollout's: crop grid, calls, token budgets)."""

    protocol: str = "hermes"
    kind_weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    crop_hw: tuple[int, int] = (56, 84)  # (H, W) of every crop, multiples of 28
    prompt_len: int = 640  # prompts are left-padded to this many tokens
    max_new_tokens: int = 256  # tokens the assistant writes per trajectory
    max_calls: int = 2
    seed: int = 0

    def __post_init__(self):
        PROTOCOLS.get(self.protocol)  # raises on an unknown name
        unknown = sorted(set(self.kind_weights) - set(KINDS))
        weights = list(self.kind_weights.values())
        if unknown or min(weights, default=-1) < 0 or sum(weights) <= 0:
            raise ValueError(f"kind_weights must map kinds of {KINDS} to weights >= 0 with a "
                             f"positive sum, got {dict(self.kind_weights)}")
        if self.max_calls < 2:
            raise ValueError(f"max_calls must be >= 2 (a self-correction makes two calls), "
                             f"got {self.max_calls}")


@dataclasses.dataclass(frozen=True)
class Script:
    """One synthesized response before its replay: the assistant's turns, in protocol text.

    Every turn but the last ends with a call (its close marker); `regions` are the regions of
    the original image those calls show, in original pixels (as `execute_crop` computes them).
    """

    example_id: str
    kind: str
    turns: tuple[str, ...]
    regions: tuple[Box, ...]
    answer: str


# ------------------------------------------------------------------------------ texts

# Phrasings of each step, {target} and {where} filled in; one is drawn per step.
TEMPLATES = types.MappingProxyType({
    "intro": ("Let me look at the whole image first.", "First, an overview of the whole image.",
              "I start from the whole image."),
    "locate": ("The {target} is {where}, but it is too small to read at this resolution.",
               "I can find the {target} {where}; its content is too small to make out here.",
               "There is the {target}, {where}, too small to read in this view."),
    "guess": ("The {target} might be {where}; it is too small to tell from here.",
              "I think the {target} could be {where}, but I cannot read it at this size."),
    "zoom": ("I will zoom in on it.", "Let me crop that region to see it better.",
             "Zooming in there should make it readable."),
    "nothing": ("The zoomed region shows only background and clutter, no {target}.",
                "This crop holds nothing useful: the {target} is not in it.",
                "The {target} is not in this crop; I zoomed in on the wrong place."),
    "relocate": ("Looking at the whole image again, the {target} is {where}.",
                 "Checking the full image again, the {target} is actually {where}."),
    "read": ("In the zoomed image the {target} is clear.", "Now I can see the {target} clearly.",
             "The crop makes the {target} readable."),
    "textual": ("This question is about the image as a whole, so no zoom is needed.",
                "The whole image is enough to answer this; no detail needs a closer look.",
                "This can be answered from the overall view without zooming in."),
    "answer": ("The answer is {answer}.", "So the answer is {answer}."),
})


def _say(rng: np.random.Generator, step: str, **fields) -> str:
    """One phrasing of `step` (a key of TEMPLATES), drawn by rng, with its fields filled in."""
    phrases = TEMPLATES[step]
    return phrases[int(rng.integers(len(phrases)))].format(**fields)


def where_in_image(box: Box, image_wh: tuple[float, float]) -> str:
    """Where a box's centre lies, in words ("in the top left part of the image")."""
    column = min(int(3 * (box[0] + box[2]) / 2 / image_wh[0]), 2)
    row = min(int(3 * (box[1] + box[3]) / 2 / image_wh[1]), 2)
    if (row, column) == (1, 1):
        return "in the centre of the image"
    vertical, horizontal = ("top", "middle", "bottom")[row], ("left", "centre", "right")[column]
    return f"in the {vertical} {horizontal} part of the image"


def target_noun(example: Example) -> str:
    return "small white sign" if example.source == "synthetic" else "detail the question asks about"


def final_answer(example: Example) -> str:
    """The answer a trajectory states: the most frequent gold answer (first on ties)."""
    if not example.answers:
        raise ValueError(f"example {example.id!r} has no answer to synthesize a trajectory with")
    return collections.Counter(example.answers).most_common(1)[0][0]


class _HermesStyle:
    """Pixel Reasoner turns: reasoning, then the call on its own lines; `\\boxed{}` answers."""

    def call(self, protocol: ToolProtocol, box: Box, view_wh: tuple[int, int]) -> str:
        """A crop_image call on the input image, box normalised to [0, 1) (floor / ceil to
        hundredths, so the written box still covers `box`; all values < 1, as the tool requires)."""
        scale = (view_wh[0], view_wh[1]) * 2
        low = [math.floor(100 * v / s) / 100 for v, s in zip(box[:2], scale)]
        high = [min(math.ceil(100 * v / s) / 100, 0.99) for v, s in zip(box[2:], scale)]
        arguments = {"bbox_2d": low + high, "target_image": 1}
        body = json.dumps({"name": hermes.CROP_IMAGE_SCHEMA["name"], "arguments": arguments})
        return f"{protocol.call_open}\n{body}\n{protocol.call_close}"

    def turn(self, reasoning: str, call: str) -> str:
        return f"{reasoning}\n{call}"

    def final(self, reasoning: str, answer: str, rng: np.random.Generator) -> str:
        return f"{reasoning} {_say(rng, 'answer', answer=answer)}"


class _GroundlightStyle:
    """Groundlight turns continue the `<think>` the prompt (or the result) opened."""

    def call(self, protocol: ToolProtocol, box: Box, view_wh: tuple[int, int]) -> str:
        """A zoom call on the box's centre, in whole pixels of the view."""
        x = min(round((box[0] + box[2]) / 2), view_wh[0] - 1)
        y = min(round((box[1] + box[3]) / 2), view_wh[1] - 1)
        return f"{protocol.call_open}\nname: zoom\nkeypoint: [{x}, {y}]\n{protocol.call_close}"

    def turn(self, reasoning: str, call: str) -> str:
        return f" {reasoning} </think>\n{call}"

    def final(self, reasoning: str, answer: str, rng: np.random.Generator) -> str:
        return f" {reasoning} </think>\n{answer}"


STYLES = Registry("trajectory style")  # by protocol name
STYLES.register("hermes")(_HermesStyle())
STYLES.register("groundlight")(_GroundlightStyle())


# ------------------------------------------------------------------------------ boxes


def _grow_box(box: Box, min_wh: tuple[float, float], image_wh: tuple[int, int]) -> Box:
    """`box` grown about its centre to at least min_wh, then shifted inside the image."""
    sides = [min(max(box[i + 2] - box[i], min_wh[i]), image_wh[i]) for i in (0, 1)]
    start = [min(max((box[i] + box[i + 2] - sides[i]) / 2, 0.0), image_wh[i] - sides[i])
             for i in (0, 1)]
    return (start[0], start[1], start[0] + sides[0], start[1] + sides[1])


def request_box(target: Box, view_wh: tuple[int, int]) -> Box:
    """The box a call asks for around `target` (view pixels): the target, grown so that the crop
    tool's box exceeds its minimum side on both axes even when the padding on one side of it is
    clamped away by the image border."""
    min_wh = [crop_ops.PIXEL_REASONER_MIN_SIDE + 2 - crop_ops.PIXEL_REASONER_PADDING * side
              for side in view_wh]
    return _grow_box(target, (min_wh[0], min_wh[1]), view_wh)


def wrong_box_candidates(box: Box, view_wh: tuple[int, int], rng: np.random.Generator) -> list[Box]:
    """Boxes of `box`'s size centred on a WRONG_BOX_GRID² lattice over the view, shuffled."""
    size = (box[2] - box[0], box[3] - box[1])
    centres = [((i + 0.5) * view_wh[0] / WRONG_BOX_GRID, (j + 0.5) * view_wh[1] / WRONG_BOX_GRID)
               for j in range(WRONG_BOX_GRID) for i in range(WRONG_BOX_GRID)]
    boxes = [_grow_box((x, y, x, y), size, view_wh) for x, y in centres]
    return [boxes[i] for i in rng.permutation(len(boxes))]


def contains(outer: Box, inner: Box) -> bool:
    return all(o <= i for o, i in zip(outer[:2], inner[:2])) and all(
        o >= i for o, i in zip(outer[2:], inner[2:]))


def overlap_area(a: Box, b: Box) -> float:
    """Area of the intersection of two boxes (0 when they are disjoint or only touch)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, width) * max(0.0, height)


class ZoomPreview:
    """What the rollout shows for calls on the input image: the engine's `execute_crop` on the
    calls as the protocol's host parser reads them (equal to the device parser's reading)."""

    def __init__(self, protocol: ToolProtocol, tables: ToolTables):
        self.protocol, self.crop_hw, self._tables = protocol, tables.image_hw, tables
        run = functools.partial(execute_crop, tables)
        self._run = jax.jit(jax.vmap(run, in_axes=(0, None, None, None, None, None)))

    def __call__(self, calls: Sequence[str], original: np.ndarray, original_wh, view_wh):
        """(errors [N] ToolError codes, regions [N, 4] in original pixels) of N call texts on
        `original` [Hc, Wc, 3] (true size original_wh) seen as a view of view_wh."""
        slots = self._tables.parse.num_slots
        host = [self.protocol.parse_host(call, self._tables.parse.max_chars) for call in calls]
        numbers = np.zeros((len(host), slots), np.float32)  # [N, K]
        for row, parsed in enumerate(host):
            numbers[row, : min(len(parsed.numbers), slots)] = parsed.numbers[:slots]
        parsed = ParsedCall(
            tool=jnp.asarray([p.tool for p in host], jnp.int32), numbers=jnp.asarray(numbers),
            count=jnp.asarray([len(p.numbers) for p in host], jnp.int32),
            target_image=jnp.asarray([p.target_image for p in host], jnp.int32),
            error=jnp.asarray([p.error for p in host], jnp.int32))
        width, height = original_wh
        result = self._run(parsed, jnp.asarray(original), jnp.asarray(original_wh, jnp.float32),
                           jnp.array([[0.0, 0.0, width, height]]),  # [1, 4] the input image
                           jnp.asarray([view_wh], jnp.float32), jnp.int32(1))
        return np.asarray(result.error), np.asarray(result.source_box)


# ------------------------------------------------------------------------------ scripts


def example_rng(config: SynthesisConfig, example: Example) -> np.random.Generator:
    return np.random.default_rng([config.seed, zlib.crc32(example.id.encode())])


class _Zoom(NamedTuple):
    call: str  # the call's text, markers included
    region: Box  # what it shows, in original pixels
    box: Box  # the box it was written for, in view pixels


def _zooms_that_fit(example: Example, config: SynthesisConfig, preview: ZoomPreview,
                    original: np.ndarray, original_wh: tuple[int, int], view_wh: tuple[int, int],
                    target: Box | None, rng: np.random.Generator) -> dict[str, tuple[_Zoom, ...]]:
    """The kinds that fit `example`, each with its zooms in order (module docstring)."""
    if not example.needs_zoom:
        return {"textual": ()}
    if target is None:
        return {}
    protocol, style = PROTOCOLS.get(config.protocol), STYLES.get(config.protocol)
    to_view = [v / o for v, o in zip(view_wh, original_wh)] * 2
    right = request_box(tuple(t * s for t, s in zip(target, to_view)), view_wh)
    boxes = [right] + wrong_box_candidates(right, view_wh, rng)
    calls = [style.call(protocol, box, view_wh) for box in boxes]
    errors, regions = preview(calls, original, original_wh, view_wh)
    zooms = [_Zoom(call, tuple(region.tolist()), box)
             for call, region, box in zip(calls, regions, boxes)]
    if errors[0] != ToolError.OK or not contains(zooms[0].region, target):
        return {}
    misses = [zoom for zoom, error in zip(zooms[1:], errors[1:])
              if error == ToolError.OK and overlap_area(zoom.region, target) == 0]
    fits = {"single_pass": (zooms[0],)}
    if misses:
        fits["self_correction"] = (misses[0], zooms[0])
    return fits


def write_script(example: Example, config: SynthesisConfig, preview: ZoomPreview,
                 original: np.ndarray, original_wh: tuple[int, int], view_wh: tuple[int, int],
                 target: Box | None) -> Script:
    """The script of `example`, shown as a view of view_wh (W, H) of `original` [Hc, Wc, 3] (its
    true size original_wh); `target` is its target box in original pixels (None without one)."""
    if (preview.protocol.name, preview.crop_hw) != (config.protocol, tuple(config.crop_hw)):
        raise ValueError(f"the preview executes {preview.protocol.name} calls with "
                         f"{preview.crop_hw} crops, the config asks for {config.protocol} with "
                         f"{config.crop_hw}")
    rng = example_rng(config, example)
    fits = _zooms_that_fit(example, config, preview, original, original_wh, view_wh, target, rng)
    kinds = sorted(kind for kind in fits if config.kind_weights.get(kind, 0) > 0)
    if not kinds:
        raise ValueError(f"example {example.id!r} (needs_zoom={example.needs_zoom}, target box "
                         f"{target}) fits the kinds {sorted(fits)}, all of weight 0 in "
                         f"{dict(config.kind_weights)}")
    weights = np.array([config.kind_weights[kind] for kind in kinds], np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    zooms = fits[kind]

    protocol, style = PROTOCOLS.get(config.protocol), STYLES.get(config.protocol)
    noun, answer = target_noun(example), final_answer(example)
    markup = protocol.answer_open + answer + protocol.answer_close
    where = [where_in_image(zoom.box, view_wh) for zoom in zooms]
    if kind == "textual":
        turns = (style.final(f"{_say(rng, 'intro')} {_say(rng, 'textual')}", markup, rng),)
    else:
        first = "locate" if kind == "single_pass" else "guess"  # the self-correction guesses wrong
        steps = [[_say(rng, "intro"), _say(rng, first, target=noun, where=where[0])]]
        if kind == "self_correction":
            steps.append([_say(rng, "nothing", target=noun),
                          _say(rng, "relocate", target=noun, where=where[1])])
        turns = tuple(style.turn(" ".join(step + [_say(rng, "zoom")]), zoom.call)
                      for step, zoom in zip(steps, zooms))
        turns += (style.final(_say(rng, "read", target=noun), markup, rng),)
    return Script(example.id, kind, turns, tuple(zoom.region for zoom in zooms), answer)


def batch_scripts(batch: Batch, config: SynthesisConfig,
                  preview: ZoomPreview) -> tuple[Script, ...]:
    """`write_script` of every row of a pipeline batch of images."""
    view_wh = (batch.view.shape[3], batch.view.shape[2])
    scripts = []
    for row, example in enumerate(batch.examples):
        target = batch.target_box[row]  # [4] on the canvas, NaN when there is none
        scripts.append(write_script(
            example, config, preview, batch.original[row, 0],
            tuple(int(v) for v in batch.original_size[row, ::-1]), view_wh,
            None if np.isnan(target).any() else tuple(target.tolist())))
    return tuple(scripts)


def script_tokens(script: Script, protocol: ToolProtocol, tok: Tokenizer) -> list[int]:
    """The tokens the assistant writes: each turn's tokens (every calling turn ends with the
    protocol's close marker), then the end-of-turn token."""
    close = list(protocol.call_close_ids(tok))
    tokens = []
    for turn in script.turns[:-1]:
        ids = tok.encode(turn)
        if ids[-len(close):] != close:
            raise ValueError(f"example {script.example_id!r}: the turn {turn!r} does not end with "
                             f"the tokens of {protocol.call_close!r}")
        tokens += ids
    return tokens + tok.encode(script.turns[-1]) + [tok.special.im_end]


# ------------------------------------------------------------------------------ replay


class Synthesizer:
    """Writes the scripts of pipeline batches and replays them through the rollout engine.

        synthesizer = Synthesizer(model, tok, SynthesisConfig(protocol="hermes"))
        sft_batch, scripts = synthesizer(model, batch)   # batch: a pipeline Batch of images

    The replay teacher-forces every token (greedy elsewhere, never reached), so the trajectory's
    tokens and crops do not depend on the model's parameters; only its `logprobs` do.
    """

    def __init__(self, model: Qwen2_5_VL, tok: Tokenizer, config: SynthesisConfig):
        self.config, self.tok = config, tok
        self.protocol = PROTOCOLS.get(config.protocol)
        tables = ToolTables.build(self.protocol, tok, model.config, crop_hw=config.crop_hw,
                                  max_calls=config.max_calls)
        self.preview = ZoomPreview(self.protocol, tables)
        greedy = SamplingParams(temperature=0.0)
        self.engine = engine_lib.Engine(model, engine_lib.RolloutSpec(
            max_new_tokens=config.max_new_tokens,
            stop_ids=(tok.special.im_end, tok.special.endoftext), first_turn=greedy,
            later_turns=greedy, max_calls=config.max_calls, tools=tables))

    def scripts(self, batch: Batch) -> tuple[Script, ...]:
        """The script of every row of `batch` (host only, no replay)."""
        return batch_scripts(batch, self.config, self.preview)

    def __call__(self, model: Qwen2_5_VL, batch: Batch) -> tuple[SFTBatch, tuple[Script, ...]]:
        """(the replayed batch, its scripts); padding rows (`batch.valid` False) get no loss."""
        inputs = rollout_inputs(batch, self.protocol, self.tok, self.config.prompt_len)
        scripts = self.scripts(batch)
        forced = np.full((len(scripts), self.config.max_new_tokens), -1, np.int32)  # [B, F]
        for row, script in enumerate(scripts):
            tokens = script_tokens(script, self.protocol, self.tok)
            if len(tokens) > self.config.max_new_tokens:
                raise ValueError(f"example {script.example_id!r}: its {script.kind} script has "
                                 f"{len(tokens)} tokens, more than max_new_tokens="
                                 f"{self.config.max_new_tokens}")
            forced[row, : len(tokens)] = tokens
        inputs = {key: jnp.asarray(value) for key, value in inputs.items()}
        trajectory = self.engine(model, {**inputs, "forced_tokens": jnp.asarray(forced)},
                                 jax.random.key(self.config.seed))
        _check_replay(trajectory, scripts, (forced >= 0).sum(axis=1))
        loss_mask = trajectory.loss_mask & jnp.asarray(batch.valid)[:, None]
        return SFTBatch(trajectory=trajectory.replace(loss_mask=loss_mask),
                        prompt_pixel_values=inputs["pixel_values"],
                        prompt_grid_thw=inputs["image_grid_thw"]), scripts


def _check_replay(trajectory, scripts: Sequence[Script], lengths: np.ndarray) -> None:
    """Raise unless every row wrote its whole script, each call succeeding, and stopped."""
    finish, calls, errors, written = jax.device_get(
        (trajectory.finish, trajectory.n_calls, trajectory.n_errors, trajectory.response_length))
    for row, script in enumerate(scripts):
        expected = (engine_lib.FinishReason.STOP, len(script.turns) - 1, 0, lengths[row])
        got = (finish[row], calls[row], errors[row], written[row])
        if tuple(map(int, got)) != tuple(map(int, expected)):
            raise ValueError(f"example {script.example_id!r}: the replay of its {script.kind} "
                             f"script diverged: (finish, calls, failed calls, tokens) = "
                             f"{tuple(map(int, got))}, expected {tuple(map(int, expected))}")
