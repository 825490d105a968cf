"""The `groundlight` protocol: `<think>`, `<tool>\\nname: zoom\\nkeypoint: [x, y]\\n</tool>`,
`<answer>`.

Texts from the Groundlight code (groundlight/r1_vlm, the TextVQA tool-use environment of the paper):
- system prompt: SINGLE_TOOL_PROMPT_TEMPLATE_SIMPLIFIED (src/r1_vlm/tools/tool_prompts.py) filled
  with the zoom tool's description, which `infer_schema_from_function` and
  `format_tool_descriptions` (src/r1_vlm/environments/tool_vision_env.py) build from the docstring
  of `zoom` (src/r1_vlm/tools/zoom.py);
- user turn and assistant prefix: src/r1_vlm/datasets/text_vqa/text_vqa_tool_use_r1.py;
- results (`ToolVisionEnv.env_response`): a user turn "<image_name> tool_result_{k} </image_name>"
  + the image, or "<result>\\nError: ...\\n</result>"; then an assistant turn starting "<think>";
- stop strings `</tool>`, `</answer>`.
The call body is read as their `_general_parse_key_value` + `parse_zoom_args` do: lines
`key: value` (split at the first ": ", both sides stripped of " \\t\\r"; lines without ": " are
skipped; the last line of a key wins), "name" must be "zoom", "keypoint" a JSON list, no other key.
Two deliberate differences: keypoint coordinates may be any JSON numbers (theirs: integers only;
our zoom box takes floats), and the body is the text after the LAST `<tool>` (theirs: the first).
"""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from pixel_jax.tools.errors import ToolError, first_error
from pixel_jax.tools.protocols.base import (
    ASSISTANT_TURN,
    PROTOCOLS,
    USER_TURN,
    VISION_END,
    VISION_START,
    HostCall,
    InjectedText,
    ToolId,
    ToolProtocol,
    call_body,
    load_json,
    number_elements,
)
from pixel_jax.tools.protocols.device_parser import ParsedCall, tool_name_table
from pixel_jax.tools.protocols.json_machine import JsonState, NumberList, where_tree
from pixel_jax.tools.protocols.literals import WordMatch, Words

TOOL_PROMPT_TEMPLATE = (
    "You may call any of the tools exactly one time. You have access to the following tools to "
    "help solve problems: \n\n{tool_descriptions}\n\n"
    "For each step:\n"
    "1. Start by thinking through your reasoning inside <think> tags. Then either return your "
    "answer inside <answer> tags, or use a tool inside <tool> tags.\n"
    "2. If needed, use a tool by writing its arguments inside <tool> tags. Use one line for each "
    "argument in the format 'key: value'. The first line must be 'name: <tool_name>'.\n"
    "3. You will see the tool's output inside <result> tags.\n"
    "4. Continue until you can give the final answer inside <answer> tags.\n\n"
    "Tools expect specific arguments. Follow the examples carefully for the required keys and "
    "expected value formats.\n"
    "Do not make up tools or arguments that aren't listed. \n"
)
ZOOM_DESCRIPTION = (
    "Returns the image zoomed in on the specified keypoint.\n"
    "This is useful to see a region of interest with higher clarity, like for reading text or "
    "identifying objects."
)
ZOOM_ARGUMENTS = {
    "keypoint": (
        "list[int], the [x, y] coordinates of the point to center the zoom on. Must be within the "
        "image boundaries."
    )
}
ZOOM_EXAMPLES = ((500, 400), (23, 44), (723, 461))
INSTRUCTION = (
    "\n    The image size is {image_size}.\n"
    "    Please thoroughly think through the question and refine your answer while thinking. You "
    "should try to collect the visual evidence you need to support your answer. Then, provide your "
    "answer. The answer (which you will provide in the <answer> </answer> tags) should be a single "
    "word or phrase directly answering the question.\n"
    "    Question: {question}\n    "
)
TOOL_NAMES = {"zoom": ToolId.ZOOM}
_BLANKS = " \t\r"  # stripped around keys and values


class Groundlight(ToolProtocol):
    name = "groundlight"
    tools = (ToolId.ZOOM,)
    call_open = "<tool>"
    call_close = "</tool>"
    answer_open = "<answer>"
    answer_close = "</answer>"
    stop_strings = ("</tool>", "</answer>")
    assistant_prefix = "\n<think> Let me think step by step."

    def system_prompt(self) -> str:
        lines = ["zoom: " + ZOOM_DESCRIPTION, "\nArguments:"]
        lines += [f"  - {argument}: {doc}" for argument, doc in ZOOM_ARGUMENTS.items()]
        lines.append("\nExamples:")
        for x, y in ZOOM_EXAMPLES:
            lines += ["  <tool>", "  name: zoom", f"  keypoint: [{x}, {y}]", "  </tool>"]
        return TOOL_PROMPT_TEMPLATE.format(tool_descriptions="\n".join(lines))

    def user_content(self, question: str, image_wh: tuple[int, int]) -> list[dict]:
        instruction = INSTRUCTION.format(image_size=tuple(image_wh), question=question)
        return [
            {"type": "text", "text": "<image_name> input_image </image_name>"},
            {"type": "image"},
            {"type": "text", "text": instruction},
        ]

    def crop_result(self, image_wh: tuple[int, int], call_index: int) -> InjectedText:
        name = f"<image_name> tool_result_{call_index} </image_name>"
        return InjectedText(
            (USER_TURN + name + VISION_START, VISION_END + ASSISTANT_TURN + "<think>")
        )

    def error_result(self, error: ToolError, call_index: int) -> InjectedText:
        result = f"<result>\nError: {error.reason}\n</result>"
        return InjectedText((USER_TURN + result + ASSISTANT_TURN + "<think>",))

    def parse_host(self, text: str, max_chars: int) -> HostCall:
        body = call_body(text, self.call_open, self.call_close, max_chars)
        if body is None:
            return HostCall.failed(ToolError.MALFORMED_CALL)
        fields, extra_key = {}, False
        for line in body.split("\n"):
            key, separator, value = line.strip(_BLANKS).partition(": ")
            if separator:
                key, value = key.strip(_BLANKS), value.strip(_BLANKS)
                if key in ("name", "keypoint"):
                    fields[key] = value
                else:
                    extra_key = True
        if "name" not in fields:
            return HostCall.failed(ToolError.MALFORMED_CALL)
        if TOOL_NAMES.get(fields["name"]) is None:
            return HostCall.failed(ToolError.UNKNOWN_TOOL)
        if "keypoint" not in fields:
            return HostCall(ToolId.ZOOM, (), 0, ToolError.MISSING_ARGUMENT)
        if extra_key:
            return HostCall.failed(ToolError.MALFORMED_CALL)
        try:
            keypoint = load_json(fields["keypoint"])
        except ValueError:
            keypoint = None
        numbers = number_elements(keypoint)
        two_numbers = isinstance(keypoint, list) and len(keypoint) == len(numbers) == 2
        error = ToolError.OK if two_numbers else ToolError.KEYPOINT_NOT_TWO_NUMBERS
        return HostCall(ToolId.ZOOM, numbers, 0, error)

    def device_grammar(self, num_slots: int) -> "GroundlightGrammar":
        return GroundlightGrammar(num_slots)


PROTOCOLS.register("groundlight")(Groundlight())

# ---------------------------------------------------------------------------------- device grammar

_WORDS = Words(("name", "keypoint", *TOOL_NAMES))
_NAME, _KEYPOINT = map(_WORDS.index, ("name", "keypoint"))
_TOOL_OF_WORD = tool_name_table(TOOL_NAMES, _WORDS)
# Where in a line: before the key, in it, just after a ':' of it, after ": ", in the value.
_START, _KEY, _KEY_COLON, _VALUE_START, _VALUE = range(5)


@flax.struct.dataclass
class GroundlightState:
    """Reading `key: value` lines: where in the line the reader is and what it has found."""

    line: jax.Array  # int32 _START.._VALUE
    text: WordMatch  # the key, or the name value, being read
    pending_blank: jax.Array  # bool, blanks were read after the word's last character
    colon_word: jax.Array  # int32 word index of the key before its latest ':'
    line_key: jax.Array  # int32 word index of the key of the current line
    name_given: jax.Array  # bool
    tool: jax.Array  # int32 ToolId of the last name line
    keypoint_given: jax.Array  # bool
    json: JsonState  # the keypoint value being read
    keypoint: NumberList
    keypoint_valid: jax.Array  # bool, the last keypoint value is one whole JSON value
    extra_key: jax.Array  # bool, a line has a key other than name and keypoint


@dataclasses.dataclass(frozen=True)
class GroundlightGrammar:
    """Device grammar of a groundlight call body (`device_parser.Grammar`), rules of parse_host."""

    num_slots: int

    def start(self) -> GroundlightState:
        false, none = jnp.bool_(False), jnp.int32(-1)
        return GroundlightState(
            line=jnp.int32(_START),
            text=WordMatch.start(_WORDS),
            pending_blank=false,
            colon_word=none,
            line_key=none,
            name_given=false,
            tool=jnp.int32(ToolId.NONE),
            keypoint_given=false,
            json=JsonState.start(),
            keypoint=NumberList.absent(self.num_slots),
            keypoint_valid=false,
            extra_key=false,
        )

    def step(self, state: GroundlightState, char) -> GroundlightState:
        mode = state.line
        newline = char == ord("\n")
        blank = (char == ord(" ")) | (char == ord("\t")) | (char == ord("\r"))
        key_begins = (mode == _START) & ~blank & ~newline
        value_begins = (mode == _VALUE_START) & ~blank & ~newline
        separator = (mode == _KEY_COLON) & (char == ord(" "))  # the first ": " of the line
        in_key = ~newline & ~separator & (key_begins | (mode == _KEY) | (mode == _KEY_COLON))
        in_value = ~newline & (value_begins | (mode == _VALUE))
        key_colon = in_key & (char == ord(":"))
        name_value, keypoint_value = state.line_key == _NAME, state.line_key == _KEYPOINT

        # The word being read (a key or a name value): blanks are held back, so trailing blanks
        # are ignored and blanks inside it match no word.
        restart = key_begins | (value_begins & name_value)
        text = where_tree(restart, WordMatch.start(_WORDS), state.text)
        pending = state.pending_blank & ~restart
        reads_word = in_key | (in_value & name_value)
        stepped = text.step(_WORDS, char, kill=pending)
        colon_word = jnp.where(key_colon, text.result(_WORDS), state.colon_word)
        text = where_tree(reads_word & ~blank, stepped, text)
        pending = jnp.where(reads_word, blank, pending)

        # The keypoint value, read as JSON.
        keypoint_begins = value_begins & keypoint_value
        json = where_tree(keypoint_begins, JsonState.start(), state.json)
        keypoint = where_tree(keypoint_begins, NumberList.absent(self.num_slots), state.keypoint)
        reads_json = in_value & keypoint_value
        stepped_json, event = json.step(char)
        json = where_tree(reads_json, stepped_json, json)
        keypoint = where_tree(reads_json, keypoint.read(event, 0, True), keypoint)

        value_ends = newline & (mode == _VALUE)
        name_tool = jnp.asarray(_TOOL_OF_WORD)[text.result(_WORDS) + 1]
        return GroundlightState(
            line=jnp.select(
                [newline, separator, key_colon, in_key, in_value],
                [_START, _VALUE_START, _KEY_COLON, _KEY, _VALUE],
                mode,
            ),
            text=text,
            pending_blank=pending,
            colon_word=colon_word,
            line_key=jnp.where(separator, state.colon_word, state.line_key),
            name_given=state.name_given | (value_begins & name_value),
            tool=jnp.where(value_ends & name_value, name_tool, state.tool),
            keypoint_given=state.keypoint_given | keypoint_begins,
            json=json,
            keypoint=keypoint,
            keypoint_valid=jnp.where(value_ends & keypoint_value, json.complete,
                                     state.keypoint_valid),
            extra_key=state.extra_key | (value_begins & ~name_value & ~keypoint_value),
        )

    def finish(self, state: GroundlightState) -> ParsedCall:
        state = self.step(state, jnp.int32(ord("\n")))  # the body's end ends its last line
        keypoint = state.keypoint
        two_numbers = (
            state.keypoint_valid & keypoint.is_array & ~keypoint.non_number & (keypoint.count == 2)
        )
        error = first_error(
            (~state.name_given, ToolError.MALFORMED_CALL),
            (state.tool == ToolId.NONE, ToolError.UNKNOWN_TOOL),
            (~state.keypoint_given, ToolError.MISSING_ARGUMENT),
            (state.extra_key, ToolError.MALFORMED_CALL),
            (~two_numbers, ToolError.KEYPOINT_NOT_TWO_NUMBERS),
        )
        return ParsedCall(
            tool=state.tool,
            numbers=jnp.where(state.keypoint_valid, keypoint.values, 0.0),
            count=jnp.where(state.keypoint_valid, keypoint.count, 0),
            target_image=jnp.int32(0),
            error=error,
        )
