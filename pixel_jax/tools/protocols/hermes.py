"""The `hermes` protocol: Pixel Reasoner's Qwen function calls, `<tool_call>{json}</tool_call>`.

The prompt reproduces byte for byte the one the released Pixel Reasoner checkpoints were trained and
evaluated with (TIGER-AI-Lab/Pixel-Reasoner, curiosity_driven_rl/openrlhf/trainer/ppo_utils/
experience_maker.py): the system message "You are a helpful assistant." to which Qwen-Agent's
`NousFnCallPrompt.preprocess_fncall_messages` appends "\\n\\n" + FN_CALL_TEMPLATE
(QwenLM/Qwen-Agent, qwen_agent/llm/fncall_prompts/nous_fncall_prompt.py; the same text from its
first version to 2025-09) filled with one
`json.dumps({"type": "function", "function": ...}, ensure_ascii=False)` line per tool, the tools
being the authors' `CropImageNormalized` (registered as "crop_image_normalized") and
`SelectFrames` schemas. The user turn appends the `vcot` guideline of curiosity_driven_rl/openrlhf/
datasets/prompts_dataset.py (`--system_prompt vcot`, used for their evaluation) to the question.
Results come back as a user turn (experience_maker.py, generate_samples): "\\nHere is the cropped
image (Image Size: WxH):" + the image, "\\nHere are the selected frames (...)" + the frames, or
"\\nExecution error:\\n{reason}\\n".

The parser accepts "crop_image" as well as "crop_image_normalized" (the guideline text calls the
tool `crop_image`; TIGER-AI-Lab/verl-tool accepts both), and `target_image` as a JSON integer or a
string holding one.
"""

import dataclasses
import json

import flax.struct
import jax
import jax.numpy as jnp

from pixel_jax.tools.errors import ToolError, first_error
from pixel_jax.tools.protocols.base import (
    ASSISTANT_TURN,
    ENDOFTEXT,
    IM_END,
    PROTOCOLS,
    USER_TURN,
    VISION_END,
    VISION_START,
    HostCall,
    InjectedText,
    ToolId,
    ToolProtocol,
    call_body,
    integer_value,
    is_number,
    load_json,
    number_elements,
)
from pixel_jax.tools.protocols.chars import NO_CHAR
from pixel_jax.tools.protocols.device_parser import ParsedCall, tool_name_table
from pixel_jax.tools.protocols.json_machine import OBJECT, JsonState, NumberList, where_tree
from pixel_jax.tools.protocols.literals import NumberState, WordMatch, Words

SYSTEM_TEXT = "You are a helpful assistant."
CROP_IMAGE_SCHEMA = {
    "name": "crop_image_normalized",
    "description": (
        "Zoom in on the image based on the bounding box coordinates. It is useful when the object "
        "or text in the image is too small to be seen."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "bbox_2d": {
                "type": "array",
                "description": (
                    "coordinates for bounding box of the area you want to zoom in. Values should "
                    "be within [0.0,1.0]."
                ),
                "items": {"type": "number"},
            },
            "target_image": {
                "type": "number",
                "description": (
                    "The index of the image to crop. Index from 1 to the number of images. Choose "
                    "1 to operate on original image."
                ),
            },
        },
        "required": ["bbox_2d", "target_image"],
    },
}
SELECT_FRAMES_SCHEMA = {
    "name": "select_frames",
    "description": "Select frames from a video.",
    "parameters": {
        "type": "object",
        "properties": {
            "target_frames": {
                "type": "array",
                "description": (
                    "List of frame indices to select from the video (no more than 8 frames in "
                    "total)."
                ),
                "items": {"type": "integer", "description": "Frame index from 1 to 16."},
            }
        },
        "required": ["target_frames"],
    },
}
NOUS_TOOLS_TEMPLATE = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{tool_descs}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
GUIDELINES = (
    "\n\n\n\nGuidelines: Understand the given visual information and the user query. Determine if "
    "it is beneficial to employ the given visual operations (tools). For a video, we can look "
    "closer by `select_frames`. For an image, we can look closer by `crop_image`. Reason with the "
    "visual information step by step, and put your final answer within \\boxed{}."
)
TOOL_NAMES = {
    "crop_image_normalized": ToolId.CROP_IMAGE,
    "crop_image": ToolId.CROP_IMAGE,
    "select_frames": ToolId.SELECT_FRAMES,
}


class Hermes(ToolProtocol):
    name = "hermes"
    tools = (ToolId.CROP_IMAGE, ToolId.SELECT_FRAMES)
    call_open = "<tool_call>"
    call_close = "</tool_call>"
    answer_open = "\\boxed{"
    answer_close = "}"
    stop_strings = (IM_END, ENDOFTEXT)  # a calling turn ends with `</tool_call><|im_end|>`

    def system_prompt(self) -> str:
        lines = [
            json.dumps({"type": "function", "function": schema}, ensure_ascii=False)
            for schema in (CROP_IMAGE_SCHEMA, SELECT_FRAMES_SCHEMA)
        ]
        return SYSTEM_TEXT + "\n\n" + NOUS_TOOLS_TEMPLATE.format(tool_descs="\n".join(lines))

    def user_content(self, question: str, image_wh: tuple[int, int]) -> list[dict]:
        return [{"type": "image"}, {"type": "text", "text": question + GUIDELINES}]

    def crop_result(self, image_wh: tuple[int, int], call_index: int) -> InjectedText:
        width, height = image_wh
        text = f"\nHere is the cropped image (Image Size: {width}x{height}):"
        return InjectedText((USER_TURN + text + VISION_START, VISION_END + ASSISTANT_TURN))

    def frames_result(
        self, frame_wh: tuple[int, int], first_number: int, num_frames: int
    ) -> InjectedText:
        """`first_number` is what the authors' code writes: the number of images before the
        call (1 right after the video), the frames being numbered first_number + 0, 1, ..."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        width, height = frame_wh
        last = first_number + num_frames - 1
        text = (
            f"\nHere are the selected frames (Frame Size: {width}x{height}, "
            f"Numbered {first_number} to {last}):"
        )
        between = [VISION_END + VISION_START] * (num_frames - 1)
        return InjectedText(
            (USER_TURN + text + VISION_START, *between, VISION_END + ASSISTANT_TURN)
        )

    def error_result(self, error: ToolError, call_index: int) -> InjectedText:
        return InjectedText((USER_TURN + f"\nExecution error:\n{error.reason}\n" + ASSISTANT_TURN,))

    def parse_host(self, text: str, max_chars: int) -> HostCall:
        body = call_body(text, self.call_open, self.call_close, max_chars)
        try:
            call = load_json(body) if body is not None else None
        except ValueError:
            call = None
        arguments = call.get("arguments") if isinstance(call, dict) else None
        if not (isinstance(arguments, dict) and "name" in call):
            return HostCall.failed(ToolError.MALFORMED_CALL)
        name = call["name"]
        tool = TOOL_NAMES.get(name, ToolId.NONE) if isinstance(name, str) else ToolId.NONE
        if tool == ToolId.NONE:
            return HostCall.failed(ToolError.UNKNOWN_TOOL)
        if tool == ToolId.CROP_IMAGE:
            box, target = arguments.get("bbox_2d"), integer_value(arguments.get("target_image"))
            numbers = number_elements(box)
            if "bbox_2d" not in arguments or "target_image" not in arguments:
                error = ToolError.MISSING_ARGUMENT
            elif not isinstance(box, list) or len(numbers) != len(box) or len(numbers) != 4:
                error = ToolError.BOX_NOT_FOUR_NUMBERS
            else:
                error = ToolError.OK if target is not None else ToolError.ARGUMENT_NOT_INTEGER
            return HostCall(tool, numbers, target or 0, error)
        frames = arguments.get("target_frames")
        if "target_frames" not in arguments:
            error = ToolError.MISSING_ARGUMENT
        elif not isinstance(frames, list):
            return HostCall.failed(ToolError.MALFORMED_CALL)
        elif not all(is_number(e) and isinstance(e, int) for e in frames):
            error = ToolError.ARGUMENT_NOT_INTEGER
        else:
            error = ToolError.OK
        return HostCall(tool, number_elements(frames), 0, error)

    def device_grammar(self, num_slots: int) -> "HermesGrammar":
        return HermesGrammar(num_slots)


PROTOCOLS.register("hermes")(Hermes())

# ---------------------------------------------------------------------------------- device grammar

_WORDS = Words(("name", "arguments", "bbox_2d", "target_image", "target_frames", *TOOL_NAMES))
_NAME, _ARGUMENTS, _BBOX, _TARGET, _FRAMES = map(
    _WORDS.index, ("name", "arguments", "bbox_2d", "target_image", "target_frames")
)
_TOOL_OF_WORD = tool_name_table(TOOL_NAMES, _WORDS)


@flax.struct.dataclass
class HermesState:
    """Reading `{"name": ..., "arguments": {...}}`: the JSON reader and what it has found."""

    json: JsonState
    text: WordMatch  # the string being read, as one of _WORDS
    text_number: NumberState  # the string being read, as a number ("target_image": "2")
    text_is_number: jax.Array  # bool, every character of that string continued the number
    is_object: jax.Array  # bool, the top-level value is an object
    outer_key: jax.Array  # int32 word index of the last key of the top-level object
    argument_key: jax.Array  # int32 word index of the last key read at depth 2
    name_given: jax.Array  # bool
    tool: jax.Array  # int32 ToolId of the "name" value (NONE if not a known name)
    arguments_given: jax.Array  # bool
    arguments_is_object: jax.Array  # bool
    box: NumberList  # "bbox_2d"
    frames: NumberList  # "target_frames"
    target_given: jax.Array  # bool
    target_is_integer: jax.Array  # bool, an integer or a string holding one
    target: jax.Array  # int32


@dataclasses.dataclass(frozen=True)
class HermesGrammar:
    """Device grammar of a hermes call body (`device_parser.Grammar`), same rules as parse_host."""

    num_slots: int

    def start(self) -> HermesState:
        false, none = jnp.bool_(False), jnp.int32(-1)
        return HermesState(
            json=JsonState.start(),
            text=WordMatch.start(_WORDS),
            text_number=NumberState.start(),
            text_is_number=false,
            is_object=false,
            outer_key=none,
            argument_key=none,
            name_given=false,
            tool=jnp.int32(ToolId.NONE),
            arguments_given=false,
            arguments_is_object=false,
            box=NumberList.absent(self.num_slots),
            frames=NumberList.absent(self.num_slots),
            target_given=false,
            target_is_integer=false,
            target=jnp.int32(0),
        )

    def step(self, state: HermesState, char) -> HermesState:
        json_state, event = state.json.step(char)
        # The string being read, as a word and as a number.
        restart, has_char = event.string_start, event.string_char != NO_CHAR
        text = where_tree(restart, WordMatch.start(_WORDS), state.text)
        text = where_tree(has_char, text.step(_WORDS, event.string_char), text)
        text_number = where_tree(restart, NumberState.start(), state.text_number)
        stepped_number, continues = text_number.step(event.string_char)
        text_number = where_tree(has_char, stepped_number, text_number)
        text_is_number = (restart | state.text_is_number) & (continues | ~has_char)
        word = text.result(_WORDS)

        # Members of the top-level object: "name" and "arguments" (a repeated key: the last wins).
        top_value = event.value_start & (event.depth == 1)
        name_value = (event.depth == 1) & (state.outer_key == _NAME)
        name_starts = top_value & (state.outer_key == _NAME)
        tool = jnp.where(name_starts, ToolId.NONE, state.tool)
        tool = jnp.where(event.text_end & name_value, jnp.asarray(_TOOL_OF_WORD)[word + 1], tool)
        arguments_start = top_value & (state.outer_key == _ARGUMENTS)

        # Members of the arguments object.
        in_arguments = (state.outer_key == _ARGUMENTS) & state.arguments_is_object
        fresh = self.start()
        box = where_tree(arguments_start, fresh.box, state.box)
        box = box.read(event, 2, in_arguments & (state.argument_key == _BBOX))
        frames = where_tree(arguments_start, fresh.frames, state.frames)
        frames = frames.read(event, 2, in_arguments & (state.argument_key == _FRAMES))
        target_value = in_arguments & (state.argument_key == _TARGET) & (event.depth == 2)
        target_starts = target_value & event.value_start
        number = event.number
        integer_number = event.number_end & number.is_integer
        integer_text = event.text_end & text_is_number & text_number.is_integer
        target_is_integer = jnp.where(
            (target_value & (event.number_end | event.text_end)) | target_starts | arguments_start,
            target_value & (integer_number | integer_text),
            state.target_is_integer,
        )
        target = jnp.select(
            [target_value & integer_number, target_value & integer_text,
             target_starts | arguments_start],
            [number.integer_value, text_number.integer_value, 0],
            state.target,
        )
        return HermesState(
            json=json_state,
            text=text,
            text_number=text_number,
            text_is_number=text_is_number,
            is_object=jnp.where(event.value_start & (event.depth == 0), event.kind == OBJECT,
                                state.is_object),
            outer_key=jnp.where(event.key_end & (event.depth == 1), word, state.outer_key),
            argument_key=jnp.where(event.key_end & (event.depth == 2), word, state.argument_key),
            name_given=state.name_given | name_starts,
            tool=tool,
            arguments_given=state.arguments_given | arguments_start,
            arguments_is_object=jnp.where(arguments_start, event.kind == OBJECT,
                                          state.arguments_is_object),
            box=box,
            frames=frames,
            target_given=(state.target_given & ~arguments_start) | target_starts,
            target_is_integer=target_is_integer,
            target=target,
        )

    def finish(self, state: HermesState) -> ParsedCall:
        valid = (
            state.json.complete & state.is_object & state.name_given & state.arguments_given
            & state.arguments_is_object
        )
        box, frames = state.box, state.frames
        crop_error = first_error(
            (~box.given | ~state.target_given, ToolError.MISSING_ARGUMENT),
            (~box.is_array | box.non_number | (box.count != 4), ToolError.BOX_NOT_FOUR_NUMBERS),
            (~state.target_is_integer, ToolError.ARGUMENT_NOT_INTEGER),
        )
        frames_error = first_error(
            (~frames.given, ToolError.MISSING_ARGUMENT),
            (~frames.is_array, ToolError.MALFORMED_CALL),
            (frames.non_number | frames.non_integer, ToolError.ARGUMENT_NOT_INTEGER),
        )
        is_crop = state.tool == ToolId.CROP_IMAGE
        error = jnp.select(
            [~valid, state.tool == ToolId.NONE, is_crop],
            [ToolError.MALFORMED_CALL, ToolError.UNKNOWN_TOOL, crop_error],
            frames_error,
        )
        return ParsedCall(
            tool=state.tool,
            numbers=jnp.where(is_crop, box.values, frames.values),
            count=jnp.where(is_crop, box.count, frames.count),
            target_image=jnp.where(is_crop, state.target, 0),
            error=error.astype(jnp.int32),
        )
