"""Tool protocols: exact prompt and result texts, host and device parsers on hand-made calls.

Expected prompt texts are the ones the reference implementations produce, written out literally:
hermes from Qwen-Agent's NousFnCallPrompt with Pixel Reasoner's tools (QwenLM/Qwen-Agent,
qwen_agent/llm/fncall_prompts/nous_fncall_prompt.py; TIGER-AI-Lab/Pixel-Reasoner,
curiosity_driven_rl/openrlhf/trainer/ppo_utils/experience_maker.py and
curiosity_driven_rl/openrlhf/datasets/prompts_dataset.py), groundlight from groundlight/r1_vlm
(src/r1_vlm/tools/tool_prompts.py, tool_vision_env.py, zoom.py, datasets/text_vqa/).
"""

import jax
import numpy as np
import pytest

from call_windows import TOKENIZER as TOK
from call_windows import MAX_CHARS, parse_on_device
from pixel_jax.processing import chat
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import PROTOCOLS, HostCall, ToolId
from pixel_jax.tools.protocols.literals import SATURATED_INT

HERMES, GROUNDLIGHT = PROTOCOLS.get("hermes"), PROTOCOLS.get("groundlight")
E = ToolError

HERMES_SYSTEM = """You are a helpful assistant.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "crop_image_normalized", "description": "Zoom in on the image based on the bounding box coordinates. It is useful when the object or text in the image is too small to be seen.", "parameters": {"type": "object", "properties": {"bbox_2d": {"type": "array", "description": "coordinates for bounding box of the area you want to zoom in. Values should be within [0.0,1.0].", "items": {"type": "number"}}, "target_image": {"type": "number", "description": "The index of the image to crop. Index from 1 to the number of images. Choose 1 to operate on original image."}}, "required": ["bbox_2d", "target_image"]}}}
{"type": "function", "function": {"name": "select_frames", "description": "Select frames from a video.", "parameters": {"type": "object", "properties": {"target_frames": {"type": "array", "description": "List of frame indices to select from the video (no more than 8 frames in total).", "items": {"type": "integer", "description": "Frame index from 1 to 16."}}}, "required": ["target_frames"]}}}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>"""  # noqa: E501

GROUNDLIGHT_SYSTEM = (
    "You may call any of the tools exactly one time. You have access to the following tools to "
    "help solve problems: \n"
    "\n"
    "zoom: Returns the image zoomed in on the specified keypoint.\n"
    "This is useful to see a region of interest with higher clarity, like for reading text or "
    "identifying objects.\n"
    "\n"
    "Arguments:\n"
    "  - keypoint: list[int], the [x, y] coordinates of the point to center the zoom on. Must be "
    "within the image boundaries.\n"
    "\n"
    "Examples:\n"
    "  <tool>\n  name: zoom\n  keypoint: [500, 400]\n  </tool>\n"
    "  <tool>\n  name: zoom\n  keypoint: [23, 44]\n  </tool>\n"
    "  <tool>\n  name: zoom\n  keypoint: [723, 461]\n  </tool>\n"
    "\n"
    "For each step:\n"
    "1. Start by thinking through your reasoning inside <think> tags. Then either return your "
    "answer inside <answer> tags, or use a tool inside <tool> tags.\n"
    "2. If needed, use a tool by writing its arguments inside <tool> tags. Use one line for each "
    "argument in the format 'key: value'. The first line must be 'name: <tool_name>'.\n"
    "3. You will see the tool's output inside <result> tags.\n"
    "4. Continue until you can give the final answer inside <answer> tags.\n"
    "\n"
    "Tools expect specific arguments. Follow the examples carefully for the required keys and "
    "expected value formats.\n"
    "Do not make up tools or arguments that aren't listed. \n"
)
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


# ------------------------------------------------------------------------------ prompts and texts


def test_registry_has_both_protocols():
    assert PROTOCOLS.names() == ("groundlight", "hermes")
    assert (HERMES.name, GROUNDLIGHT.name) == ("hermes", "groundlight")
    with pytest.raises(ValueError, match="unknown tool protocol 'json'"):
        PROTOCOLS.get("json")


def test_hermes_prompt_is_the_released_checkpoints_prompt():
    assert HERMES.system_prompt() == HERMES_SYSTEM
    question = "What is written on the sign?"
    messages = HERMES.prompt_messages(question, (640, 480))
    prompt = chat.render(TOK, messages) + HERMES.assistant_prefix
    assert prompt == (
        f"<|im_start|>system\n{HERMES_SYSTEM}<|im_end|>\n<|im_start|>user\n{VISION}"
        "What is written on the sign?\n\n\n\nGuidelines: Understand the given visual information "
        "and the user query. Determine if it is beneficial to employ the given visual operations "
        "(tools). For a video, we can look closer by `select_frames`. For an image, we can look "
        "closer by `crop_image`. Reason with the visual information step by step, and put your "
        "final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_groundlight_prompt_is_the_papers_prompt():
    assert GROUNDLIGHT.system_prompt() == GROUNDLIGHT_SYSTEM
    messages = GROUNDLIGHT.prompt_messages("what brand is it?", (1024, 768))
    prompt = chat.render(TOK, messages) + GROUNDLIGHT.assistant_prefix
    assert prompt == (
        f"<|im_start|>system\n{GROUNDLIGHT_SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"<image_name> input_image </image_name>{VISION}\n"
        "    The image size is (1024, 768).\n"
        "    Please thoroughly think through the question and refine your answer while thinking. "
        "You should try to collect the visual evidence you need to support your answer. Then, "
        "provide your answer. The answer (which you will provide in the <answer> </answer> tags) "
        "should be a single word or phrase directly answering the question.\n"
        "    Question: what brand is it?\n    <|im_end|>\n<|im_start|>assistant\n"
        "\n<think> Let me think step by step."
    )


def _rendered_after(call_text: str, next_messages: list[dict]) -> str:
    """What the reference's chat-template re-rendering puts after an assistant turn ending in
    `call_text` when `next_messages` follow (the last one continued, as theirs are)."""
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": call_text}]
    text = TOK.hf.apply_chat_template(
        messages + next_messages, tokenize=False, continue_final_message=True
    )
    return text.split(call_text, 1)[1]


def _user(*items):
    return {"role": "user", "content": list(items)}


def _text(text):
    return {"type": "text", "text": text}


ASSISTANT = {"role": "assistant", "content": ""}
IMAGE = {"type": "image"}


def test_hermes_results_match_the_reference_turns():
    # The reference's user turns (experience_maker.py), rendered by the chat template.
    call = "<tool_call>\n{}\n</tool_call>"
    crop = _rendered_after(call, [_user(_text("\nHere is the cropped image (Image Size: 448x336):"),
                                        IMAGE), ASSISTANT])
    assert HERMES.crop_result((448, 336), 1).render([1]) == crop
    frames = _rendered_after(call, [_user(
        _text("\nHere are the selected frames (Frame Size: 320x240, Numbered 1 to 3):"),
        IMAGE, IMAGE, IMAGE), ASSISTANT])
    assert HERMES.frames_result((320, 240), 1, 3).render([1, 1, 1]) == frames
    reason = ToolError.CROP_TOO_SMALL.reason
    error = _rendered_after(call, [_user(_text(f"\nExecution error:\n{reason}\n")), ASSISTANT])
    assert HERMES.error_result(ToolError.CROP_TOO_SMALL, 1).render([]) == error
    assert crop == (
        "<|im_end|>\n<|im_start|>user\n\nHere is the cropped image (Image Size: 448x336):"
        f"{VISION}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_groundlight_results_match_the_reference_turns():
    call = "<tool>\nname: zoom\nkeypoint: [5, 6]\n</tool>"
    think = {"role": "assistant", "content": "<think>"}
    zoom = _rendered_after(
        call, [_user(_text("<image_name> tool_result_2 </image_name>"), IMAGE), think]
    )
    assert GROUNDLIGHT.crop_result((1024, 1024), 2).render([1]) == zoom
    reason = ToolError.KEYPOINT_OUT_OF_RANGE.reason
    error = _rendered_after(call, [_user(_text(f"<result>\nError: {reason}\n</result>")), think])
    assert GROUNDLIGHT.error_result(ToolError.KEYPOINT_OUT_OF_RANGE, 1).render([]) == error
    assert zoom == (
        "<|im_end|>\n<|im_start|>user\n<image_name> tool_result_2 </image_name>"
        f"{VISION}<|im_end|>\n<|im_start|>assistant\n<think>"
    )


@pytest.mark.parametrize(
    "injected, counts",
    [
        (HERMES.crop_result((448, 336), 1), [12]),
        (HERMES.frames_result((320, 240), 2, 3), [4, 4, 4]),
        (HERMES.error_result(ToolError.TOO_MANY_FRAMES, 1), []),
        (GROUNDLIGHT.crop_result((1024, 768), 1), [16]),
        (GROUNDLIGHT.error_result(ToolError.MALFORMED_CALL, 3), []),
    ],
)
def test_token_chunks_are_the_tokens_of_the_rendered_text(injected, counts):
    chunks = injected.token_chunks(TOK)
    tokens = list(chunks[0])
    for count, chunk in zip(counts, chunks[1:]):
        tokens += [TOK.special.image_pad] * count + list(chunk)
    assert tokens == TOK.encode(injected.render(counts))
    assert chunks[0][:3] == (TOK.special.im_end, *TOK.encode("\n"), TOK.special.im_start)


def test_error_texts_carry_the_reason():
    for error in list(ToolError)[1:]:
        text = HERMES.error_result(error, 1).render([])
        assert f"\nExecution error:\n{error.reason}\n" in text


def test_bad_template_arguments_are_rejected():
    with pytest.raises(ValueError, match="no select_frames"):
        GROUNDLIGHT.frames_result((10, 10), 1, 2)
    with pytest.raises(ValueError, match="num_frames must be positive"):
        HERMES.frames_result((10, 10), 1, 0)
    with pytest.raises(ValueError, match="1 entries for 0 images"):
        HERMES.error_result(ToolError.MALFORMED_CALL, 1).render([3])


def test_call_markers_and_stop_strings():
    assert HERMES.call_open_ids(TOK) == (TOK.special.tool_call_start,)
    assert HERMES.call_close_ids(TOK) == (TOK.special.tool_call_end,)
    assert GROUNDLIGHT.call_close_ids(TOK) == tuple(TOK.encode("</tool>"))
    assert len(GROUNDLIGHT.call_close_ids(TOK)) == 3  # '</', 'tool', '>' in this vocabulary
    assert (HERMES.answer_open, HERMES.answer_close) == ("\\boxed{", "}")
    assert (GROUNDLIGHT.answer_open, GROUNDLIGHT.answer_close) == ("<answer>", "</answer>")
    assert HERMES.stop_strings == ("<|im_end|>", "<|endoftext|>")
    assert GROUNDLIGHT.stop_strings == ("</tool>", "</answer>")


# ------------------------------------------------------------------------------------ call parsing

H, G = "hermes", "groundlight"


def _crop(body):
    return '<tool_call>\n{"name": "crop_image_normalized", "arguments": ' + body + "}\n</tool_call>"


CASES = [
    # hermes: well-formed variants
    (H, _crop('{"bbox_2d": [0.1, 0.2, 0.5, 0.9], "target_image": 1}'),
     HostCall(ToolId.CROP_IMAGE, (0.1, 0.2, 0.5, 0.9), 1, E.OK)),
    (H, 'Let me zoom.<tool_call>{"arguments":{"target_image":"2","bbox_2d":[10,20 , 300,-4e1]},'
        '"name":"crop_image"}</tool_call>', HostCall(ToolId.CROP_IMAGE, (10, 20, 300, -40), 2, E.OK)),
    (H, '<tool_call>{"name": "select_frames", "arguments": {"target_frames": [1, 5, 9]}}</tool_call>',
     HostCall(ToolId.SELECT_FRAMES, (1, 5, 9), 0, E.OK)),
    (H, _crop('{"bbox_2d": [1, 2, 3, 4], "target_image": 1, "target_image": 3}'),
     HostCall(ToolId.CROP_IMAGE, (1, 2, 3, 4), 3, E.OK)),  # repeated key: the last one wins
    (H, _crop('{"bbox_2d": [1, 2, 3, 4], "target_image": "99999999999", "x": [true, {"a": "\\n"}]}'),
     HostCall(ToolId.CROP_IMAGE, (1, 2, 3, 4), SATURATED_INT, E.OK)),
    (H, '<tool_call>{"name": "cr\\u006fp_image", "arguments": {"target_image": 2, "bbox_2d": '
        '[0, 0, 9, 9]}}</tool_call>', HostCall(ToolId.CROP_IMAGE, (0, 0, 9, 9), 2, E.OK)),
    (H, _crop('{"bbox_2d": [9, 9, 9, 9], "target_image": 1}') + " then "
        + _crop('{"bbox_2d": [1, 2, 3, 4], "target_image": 2}'),
     HostCall(ToolId.CROP_IMAGE, (1, 2, 3, 4), 2, E.OK)),  # the last call counts
    # hermes: argument errors
    (H, _crop('{"bbox_2d": [1, 2, 3], "target_image": 1}'),
     HostCall(ToolId.CROP_IMAGE, (1, 2, 3), 1, E.BOX_NOT_FOUR_NUMBERS)),
    (H, _crop('{"bbox_2d": [1, "2", 3, 4], "target_image": 1}'),
     HostCall(ToolId.CROP_IMAGE, (1, 3, 4), 1, E.BOX_NOT_FOUR_NUMBERS)),
    (H, _crop('{"bbox_2d": [1, 2, 3, 4]}'), HostCall(ToolId.CROP_IMAGE, (1, 2, 3, 4), 0,
                                                    E.MISSING_ARGUMENT)),
    (H, _crop('{"bbox_2d": [1, 2, 3, 4], "target_image": 1.5}'),
     HostCall(ToolId.CROP_IMAGE, (1, 2, 3, 4), 0, E.ARGUMENT_NOT_INTEGER)),
    (H, _crop('{"bbox_2d": [1, 2, 3, 4], "target_image": " 2"}'),
     HostCall(ToolId.CROP_IMAGE, (1, 2, 3, 4), 0, E.ARGUMENT_NOT_INTEGER)),
    (H, '<tool_call>{"name": "select_frames", "arguments": {"target_frames": [1, 5.0]}}</tool_call>',
     HostCall(ToolId.SELECT_FRAMES, (1, 5), 0, E.ARGUMENT_NOT_INTEGER)),
    (H, '<tool_call>{"name": "select_frames", "arguments": {"target_frames": 3}}</tool_call>',
     HostCall.failed(E.MALFORMED_CALL)),
    (H, '<tool_call>{"name": "zoom", "arguments": {}}</tool_call>', HostCall.failed(E.UNKNOWN_TOOL)),
    (H, '<tool_call>{"name": 7, "arguments": {}}</tool_call>', HostCall.failed(E.UNKNOWN_TOOL)),
    # hermes: malformed calls
    (H, _crop('{"bbox_2d": [1, 2, 3, 4], "target_image": 1')[:-14] + "</tool_call>",
     HostCall.failed(E.MALFORMED_CALL)),  # unclosed object
    (H, _crop('{"bbox_2d": [1, 2, 3, 4,], "target_image": 1}'), HostCall.failed(E.MALFORMED_CALL)),
    (H, _crop('{"bbox_2d": [1, 2a, 3, 4], "target_image": 1}'), HostCall.failed(E.MALFORMED_CALL)),
    (H, _crop('{"bbox_2d": [NaN, 2, 3, 4], "target_image": 1}'), HostCall.failed(E.MALFORMED_CALL)),
    (H, _crop('{"bbox_2d": [01, 2, 3, 4], "target_image": 1}'), HostCall.failed(E.MALFORMED_CALL)),
    (H, _crop('{"bbox_2d": [1, 2, 3, 4], "target_image": 1}')[:-12], HostCall.failed(E.MALFORMED_CALL)),
    (H, _crop('{"bbox_2d": [1, 2, 3, 4], "target_image": 1}')[11:], HostCall.failed(E.MALFORMED_CALL)),
    (H, '<tool_call>{"name": "crop_image"}</tool_call>', HostCall.failed(E.MALFORMED_CALL)),
    (H, '<tool_call>{"name": "crop_image", "arguments": "{}"}</tool_call>',
     HostCall.failed(E.MALFORMED_CALL)),
    # groundlight
    (G, "<think>small text</think>\n<tool>\nname: zoom\nkeypoint: [500, 400]\n</tool>",
     HostCall(ToolId.ZOOM, (500, 400), 0, E.OK)),
    (G, "<tool>\n  name : zoom \t\nkeypoint:  [1.5,-2]  \r\n</tool>",
     HostCall(ToolId.ZOOM, (1.5, -2), 0, E.OK)),
    (G, "<tool>keypoint: [1, 2]\nkeypoint: [3, 4]\n\nname: zoom</tool>",
     HostCall(ToolId.ZOOM, (3, 4), 0, E.OK)),
    (G, "<tool>\nname: zoom\nkeypoint: [1, 2, 3]\n</tool>",
     HostCall(ToolId.ZOOM, (1, 2, 3), 0, E.KEYPOINT_NOT_TWO_NUMBERS)),
    (G, '<tool>\nname: zoom\nkeypoint: ["1", 2]\n</tool>',
     HostCall(ToolId.ZOOM, (2,), 0, E.KEYPOINT_NOT_TWO_NUMBERS)),
    (G, "<tool>\nname: zoom\nkeypoint: [1, 2\n</tool>",
     HostCall(ToolId.ZOOM, (), 0, E.KEYPOINT_NOT_TWO_NUMBERS)),
    (G, "<tool>\nname: zoom\nkeypoint: (1, 2)\n</tool>",
     HostCall(ToolId.ZOOM, (), 0, E.KEYPOINT_NOT_TWO_NUMBERS)),
    (G, "<tool>\nname: zoom\n</tool>", HostCall(ToolId.ZOOM, (), 0, E.MISSING_ARGUMENT)),
    (G, "<tool>\nname: zoom\nkeypoint:[1, 2]\n</tool>", HostCall(ToolId.ZOOM, (), 0,
                                                               E.MISSING_ARGUMENT)),
    (G, "<tool>\nname: crop\nkeypoint: [1, 2]\n</tool>", HostCall.failed(E.UNKNOWN_TOOL)),
    (G, "<tool>\nname: zoom\nkeypoint: [1, 2]\nlabel: sign\n</tool>",
     HostCall.failed(E.MALFORMED_CALL)),
    (G, "<tool>\nname:zoom\nkeypoint: [1, 2]\n</tool>", HostCall.failed(E.MALFORMED_CALL)),
    (G, "<tool>\nname: zoom\nkeypoint: [1, 2]\n", HostCall.failed(E.MALFORMED_CALL)),
]


def _assert_same(got, expected: HostCall, context):
    kept = min(len(expected.numbers), got.numbers.shape[0])
    assert (got.tool, got.count, got.target_image, got.error) == (
        expected.tool, len(expected.numbers), expected.target_image, expected.error), context
    np.testing.assert_allclose(got.numbers[:kept], np.float32(expected.numbers[:kept]), rtol=1e-6)
    assert not got.numbers[kept:].any(), context


@pytest.mark.parametrize("protocol, text, expected", CASES)
def test_host_parser(protocol, text, expected):
    assert PROTOCOLS.get(protocol).parse_host(text, MAX_CHARS) == expected


@pytest.mark.parametrize("protocol", [H, G])
def test_device_parser(protocol):
    cases = [(text, expected) for name, text, expected in CASES if name == protocol]
    parsed = parse_on_device(protocol, [text for text, _ in cases])
    for row, (text, expected) in enumerate(cases):
        _assert_same(jax.tree.map(lambda field: field[row], parsed), expected, text)
