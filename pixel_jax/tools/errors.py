"""Why a visual operation failed: a fixed set of codes, each with the reason shown to the model.

A failed call comes back to the model as `Execution error:` followed by `ToolError(code).reason`
(METHOD.md, tool protocol). Inside the compiled rollout a failure is an int32 code, never an
exception; the protocol turns each code into a constant token list on the host. The codes are
stored in trajectories, so their values never change: new reasons are appended at the end.
"""

import enum

import jax.numpy as jnp


class ToolError(enum.IntEnum):
    """Outcome of executing one tool call (0 = success)."""

    OK = 0
    MALFORMED_CALL = 1
    UNKNOWN_TOOL = 2
    MISSING_ARGUMENT = 3
    ARGUMENT_NOT_INTEGER = 4
    BOX_NOT_FOUR_NUMBERS = 5
    BOX_EMPTY_OR_INVERTED = 6
    CROP_TOO_SMALL = 7
    TARGET_IMAGE_OUT_OF_RANGE = 8
    KEYPOINT_NOT_TWO_NUMBERS = 9
    KEYPOINT_OUT_OF_RANGE = 10
    NOT_A_VIDEO = 11
    NO_FRAMES_GIVEN = 12
    TOO_MANY_FRAMES = 13
    FRAME_OUT_OF_RANGE = 14
    TOO_MANY_CALLS = 15
    IMAGE_BUDGET_EXHAUSTED = 16

    @property
    def reason(self) -> str:
        """The text shown to the model after `Execution error:` (empty for OK)."""
        return _REASONS[self]


_REASONS = {
    ToolError.OK: "",
    ToolError.MALFORMED_CALL: (
        "The tool call could not be parsed: it is not in the required format."
    ),
    ToolError.UNKNOWN_TOOL: "There is no tool with this name. Use one of the tools you were given.",
    ToolError.MISSING_ARGUMENT: "A required argument of the tool is missing.",
    ToolError.ARGUMENT_NOT_INTEGER: (
        "An image or frame index must be an integer, e.g. `target_image: 1`."
    ),
    ToolError.BOX_NOT_FOUR_NUMBERS: "`bbox_2d` must be a list of 4 numbers [x1, y1, x2, y2].",
    ToolError.BOX_EMPTY_OR_INVERTED: (
        "The bounding box is empty or inverted: it needs x1 < x2 and y1 < y2."
    ),
    ToolError.CROP_TOO_SMALL: (
        "The cropped region is too small: each side must be larger than 28 pixels."
    ),
    ToolError.TARGET_IMAGE_OUT_OF_RANGE: (
        "Incorrect `target_image`: pick an image index from 1 to the number of images so far "
        "(1 is the original image)."
    ),
    ToolError.KEYPOINT_NOT_TWO_NUMBERS: "`keypoint` must be a list of 2 numbers [x, y].",
    ToolError.KEYPOINT_OUT_OF_RANGE: (
        "The keypoint is outside the image: x must be in [0, width) and y in [0, height)."
    ),
    ToolError.NOT_A_VIDEO: (
        "You attempted to `select_frames` from an image, not a video. Crop the image instead."
    ),
    ToolError.NO_FRAMES_GIVEN: "No frame selected: `target_frames` must list at least one frame.",
    ToolError.TOO_MANY_FRAMES: (
        "Too many frames selected. Think again which frames you need to check in detail."
    ),
    ToolError.FRAME_OUT_OF_RANGE: (
        "`target_frames` is out of range: frames are numbered from 1 to the number of frames."
    ),
    ToolError.TOO_MANY_CALLS: "Too many tool calls in this response. Answer with what you have.",
    ToolError.IMAGE_BUDGET_EXHAUSTED: (
        "No more images can be shown in this response. Answer with what you have."
    ),
}


def first_error(*checks: tuple[jnp.ndarray, ToolError]) -> jnp.ndarray:
    """The code of the first failed check, OK if none failed (traceable; no exceptions).

    Each check is (failed: bool scalar, code); earlier checks take precedence, so list them in the
    order a host implementation would raise them. Returns an int32 scalar.
    """
    code = jnp.int32(ToolError.OK)
    for failed, error in reversed(checks):
        code = jnp.where(failed, jnp.int32(error), code)
    return code
