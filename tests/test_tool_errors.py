"""Tool error codes are stored in trajectories: their values and reasons must stay put."""

import jax
import jax.numpy as jnp
import pytest

from pixel_jax.tools.errors import ToolError, first_error

STORED_CODES = {
    "OK": 0,
    "MALFORMED_CALL": 1,
    "UNKNOWN_TOOL": 2,
    "MISSING_ARGUMENT": 3,
    "ARGUMENT_NOT_INTEGER": 4,
    "BOX_NOT_FOUR_NUMBERS": 5,
    "BOX_EMPTY_OR_INVERTED": 6,
    "CROP_TOO_SMALL": 7,
    "TARGET_IMAGE_OUT_OF_RANGE": 8,
    "KEYPOINT_NOT_TWO_NUMBERS": 9,
    "KEYPOINT_OUT_OF_RANGE": 10,
    "NOT_A_VIDEO": 11,
    "NO_FRAMES_GIVEN": 12,
    "TOO_MANY_FRAMES": 13,
    "FRAME_OUT_OF_RANGE": 14,
    "TOO_MANY_CALLS": 15,
    "IMAGE_BUDGET_EXHAUSTED": 16,
}


def test_codes_are_stable():
    assert {error.name: error.value for error in ToolError} == STORED_CODES


def test_every_failure_has_a_distinct_one_line_reason():
    reasons = [error.reason for error in ToolError if error != ToolError.OK]
    assert all(reason and "\n" not in reason for reason in reasons)
    assert len(set(reasons)) == len(reasons)
    assert ToolError.OK.reason == ""
    assert "28 pixels" in ToolError.CROP_TOO_SMALL.reason


def test_unknown_code_is_rejected():
    with pytest.raises(ValueError):
        ToolError(len(STORED_CODES))


@pytest.mark.parametrize(
    "failed, expected",
    [
        ((False, False, False), ToolError.OK),
        ((False, True, True), ToolError.CROP_TOO_SMALL),
        ((True, False, True), ToolError.BOX_NOT_FOUR_NUMBERS),
        ((False, False, True), ToolError.TARGET_IMAGE_OUT_OF_RANGE),
    ],
)
def test_first_error_takes_the_earliest_failed_check(failed, expected):
    codes = (
        ToolError.BOX_NOT_FOUR_NUMBERS,
        ToolError.CROP_TOO_SMALL,
        ToolError.TARGET_IMAGE_OUT_OF_RANGE,
    )
    error = jax.jit(lambda f: first_error(*zip(f, codes)))(jnp.array(failed))
    assert error.dtype == jnp.int32 and int(error) == expected
