"""What every tool protocol provides, the registry that picks one by name, and shared host helpers.

A protocol is the contract between the model and the environment (METHOD.md, "Tool protocol"):
- the prompt: system text with the tool descriptions, the user turn around the question;
- how a call looks: its open and close markers (the close marker pauses sampling), the answer
  markers, the stop strings;
- what comes back: `InjectedText` after a successful call (text around the new images) or after a
  failed one (`Execution error:`-style text with the `ToolError` reason);
- how a call is read: `parse_host` (Python reference) and `device_grammar` (the grammar the
  on-device parser of `device_parser` runs); both give the same `tool`, numbers, target image and
  error code for the same text (see `device_parser.CallParser`).
"""

import abc
import dataclasses
import enum
import json
import math
import re
from typing import Any, Sequence

from pixel_jax.processing.tokenizer import SPECIAL_TOKEN_TEXT, Tokenizer
from pixel_jax.registry import Registry
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols.json_machine import MAX_DEPTH
from pixel_jax.tools.protocols.literals import SATURATED_INT

VISION_START = SPECIAL_TOKEN_TEXT["vision_start"]
VISION_END = SPECIAL_TOKEN_TEXT["vision_end"]
IMAGE_PAD = SPECIAL_TOKEN_TEXT["image_pad"]
IM_START = SPECIAL_TOKEN_TEXT["im_start"]
IM_END = SPECIAL_TOKEN_TEXT["im_end"]
ENDOFTEXT = SPECIAL_TOKEN_TEXT["endoftext"]
# The assistant turn ends and a user turn starts; the user turn ends and the assistant's starts.
USER_TURN = f"{IM_END}\n{IM_START}user\n"
ASSISTANT_TURN = f"{IM_END}\n{IM_START}assistant\n"


class ToolId(enum.IntEnum):
    """The visual operation a call asks for (NONE: unrecognised or unreadable)."""

    NONE = 0
    CROP_IMAGE = 1  # Pixel Reasoner crop_image(bbox_2d, target_image)
    SELECT_FRAMES = 2  # Pixel Reasoner select_frames(target_frames)
    ZOOM = 3  # Groundlight zoom(keypoint)


@dataclasses.dataclass(frozen=True)
class HostCall:
    """A call as read on the host; the same fields as the device's `ParsedCall`.

    numbers: every number element of the tool's list argument (box, frames or keypoint), in order;
    target_image: crop_image's integer `target_image` (0 if absent or not an integer). When the
    error is MALFORMED_CALL or UNKNOWN_TOOL every other field is empty.
    """

    tool: ToolId
    numbers: tuple[float, ...]
    target_image: int
    error: ToolError

    @classmethod
    def failed(cls, error: ToolError) -> "HostCall":
        return cls(ToolId.NONE, (), 0, error)


@dataclasses.dataclass(frozen=True)
class InjectedText:
    """Text the environment appends to a row after a call, around the images it shows.

    Image i sits between `segments[i]` and `segments[i + 1]` as its `<|image_pad|>` tokens only (the
    vision start/end markers belong to the segments). The rollout appends the tokens of
    segments[0], then image 0's pads, then the tokens of segments[1], and so on.
    """

    segments: tuple[str, ...]

    @property
    def num_images(self) -> int:
        return len(self.segments) - 1

    def render(self, image_token_counts: Sequence[int]) -> str:
        """The whole text, each image as its number of pads."""
        if len(image_token_counts) != self.num_images:
            raise ValueError(
                f"image_token_counts has {len(image_token_counts)} entries for {self.num_images} "
                "images"
            )
        pads = [IMAGE_PAD * count for count in image_token_counts] + [""]
        return "".join(segment + pad for segment, pad in zip(self.segments, pads))

    def token_chunks(self, tok: Tokenizer) -> tuple[tuple[int, ...], ...]:
        """Token ids of each segment (segments end and start at special tokens, so these are
        exactly the tokens of the rendered text between the pads)."""
        return tuple(tuple(tok.encode(segment)) for segment in self.segments)


class ToolProtocol(abc.ABC):
    """A tool-call protocol: prompt text, call markers, injected texts, host and device parsers."""

    name: str
    tools: tuple[ToolId, ...]  # the operations the protocol offers
    call_open: str
    call_close: str
    answer_open: str
    answer_close: str
    stop_strings: tuple[str, ...]  # where the reference implementation stops sampling a turn
    assistant_prefix: str = ""  # text the assistant turn starts with, in the prompt

    @abc.abstractmethod
    def system_prompt(self) -> str:
        """Content of the system message: the tool descriptions and how to call them."""

    @abc.abstractmethod
    def user_content(self, question: str, image_wh: tuple[int, int]) -> list[dict]:
        """Content of the user message (Hugging Face items) asking `question` about one image."""

    def prompt_messages(self, question: str, image_wh: tuple[int, int]) -> list[dict]:
        """System and user messages; render with `chat.render`, then append assistant_prefix."""
        return [
            {"role": "system", "content": self.system_prompt()},
            {"role": "user", "content": self.user_content(question, image_wh)},
        ]

    @abc.abstractmethod
    def crop_result(self, image_wh: tuple[int, int], call_index: int) -> InjectedText:
        """Injected after a successful crop (zoom) showing a W×H image; call_index is 1-based."""

    def frames_result(
        self, frame_wh: tuple[int, int], first_number: int, num_frames: int
    ) -> InjectedText:
        """Injected after a successful select_frames showing `num_frames` frames."""
        raise ValueError(f"the {self.name} protocol has no select_frames operation")

    @abc.abstractmethod
    def error_result(self, error: ToolError, call_index: int) -> InjectedText:
        """Injected after a failed call, with `error.reason`."""

    @abc.abstractmethod
    def parse_host(self, text: str, max_chars: int) -> HostCall:
        """Reads the call that `text` ends with (see `call_body`); the device parser's reference."""

    @abc.abstractmethod
    def device_grammar(self, num_slots: int) -> Any:
        """The `device_parser.Grammar` reading a call body, with `num_slots` number slots."""

    def call_open_ids(self, tok: Tokenizer) -> tuple[int, ...]:
        return tuple(tok.encode(self.call_open))

    def call_close_ids(self, tok: Tokenizer) -> tuple[int, ...]:
        """Token ids of the close marker alone, for suffix matching of sampled tokens (the model
        may tokenize it differently; `chars.push_token` matches on text instead)."""
        return tuple(tok.encode(self.call_close))


PROTOCOLS: Registry[ToolProtocol] = Registry("tool protocol")


# ------------------------------------------------------------------------- host parsing helpers


def call_body(text: str, call_open: str, call_close: str, max_chars: int) -> str | None:
    """The call body that `text` ends with: of the last `max_chars` characters, those after the
    last `call_open` and before the final `call_close`; None if there is no such call."""
    window = text[-max_chars:]
    if not window.endswith(call_close):
        return None
    region = window[: len(window) - len(call_close)]
    start = region.rfind(call_open)
    return None if start < 0 else region[start + len(call_open):]


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number here")


def _json_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_json_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_json_depth, value), default=0)
    return 0


def load_json(text: str):
    """`json.loads(text)` as the device reads JSON; raises ValueError where the device fails
    (invalid JSON, NaN/Infinity, nesting deeper than MAX_DEPTH)."""
    value = json.loads(text, parse_constant=_reject_constant)
    if _json_depth(value) > MAX_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_float(value: int | float) -> float:
    """float(value), ±inf for integers beyond float range (as the device's float32 is)."""
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def number_elements(value) -> tuple[float, ...]:
    """The number elements of a JSON array value, in order; () if it is not an array."""
    return tuple(as_float(e) for e in value if is_number(e)) if isinstance(value, list) else ()


_INTEGER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")


def integer_value(value) -> int | None:
    """A JSON integer, or a string holding one (`"target_image": "2"`), clipped to
    ±SATURATED_INT; None for anything else (floats, booleans, other strings)."""
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return max(-SATURATED_INT, min(SATURATED_INT, value))
