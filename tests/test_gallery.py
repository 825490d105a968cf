"""The rollout gallery on a hand-built rollout: zoom regions in original pixels (crops of crops
included), boxes drawn where expected, the page and the PNGs it references."""

from __future__ import annotations

import dataclasses
import re
import types

import numpy as np
import PIL.Image
import pytest

from pixel_jax import gallery
from pixel_jax.rollout.tool_step import ToolTables
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import ToolId

GRAY = (128, 128, 128)
ORIGINAL = np.full((300, 400, 3), 128, np.uint8)  # W 400 × H 300
VIEW_WH = (200, 150)  # the model's view: half size
CROP_HW = (56, 56)
# Call 1 zooms on the view, call 2 fails, call 3 zooms on the crop of call 1 (image 2).
EXPECTED_REGIONS = [[40, 60, 160, 180], None, [70, 90, 130, 150]]


def rollout(**fields):
    """The fields of a one-row Trajectory the gallery reads."""
    crops = np.zeros((1, 3, *CROP_HW, 3), np.uint8)
    crops[0, 0, ..., 0], crops[0, 1, ..., 2] = 200, 90
    errors = [[ToolError.OK, ToolError.BOX_NOT_FOUR_NUMBERS, ToolError.OK]]
    base = dict(n_calls=np.array([3]), call_errors=np.array(errors),
                call_boxes=np.array([[[20, 30, 80, 90], [0, 0, 0, 0], [14, 14, 42, 42]]], np.float32),
                call_targets=np.array([[1, 1, 2]]), crops=crops, n_crops=np.array([2]))
    return types.SimpleNamespace(**{**base, **fields})


def tables(tool=ToolId.CROP_IMAGE):
    return types.SimpleNamespace(tool=tool, image_hw=CROP_HW)


def test_the_tables_carry_what_the_gallery_reads():
    assert {"tool", "image_hw"} <= {field.name for field in dataclasses.fields(ToolTables)}


def test_zoom_regions_follow_crops_of_crops_to_the_original():
    regions = gallery.zoom_regions(rollout(), 0, tables(), (400, 300), VIEW_WH)
    assert [None if r is None else r.tolist() for r in regions] == EXPECTED_REGIONS


def test_a_groundlight_zoom_always_targets_the_input():
    trajectory = rollout(n_calls=np.array([1]), call_targets=np.array([[0, 0, 0]]),
                         call_boxes=np.array([[[0, 0, 100, 100]] * 3], np.float32))
    regions = gallery.zoom_regions(trajectory, 0, tables(ToolId.ZOOM), (400, 300), VIEW_WH)
    assert regions[0].tolist() == [0, 0, 200, 200]  # the view box ×2, already square


def entry(**fields):
    return gallery.gallery_entry(
        rollout(**fields), 0, tables(), original=ORIGINAL, view_wh=VIEW_WH, question="What is written on <it>?",
        answer="AB7", text='<tool_call>\n{"name": "crop_image"}\n</tool_call> it says \\boxed{AB7}',
        reward_parts={"task_reward": 1.0, "bonus": 0.0875, "penalty": -0.05, "reward": 1.0375})


def test_the_page_shows_boxes_crops_calls_text_and_rewards(tmp_path):
    page = gallery.write_gallery(tmp_path, 100, [entry()])
    assert page == tmp_path / "step_0000100" / "index.html"
    text = page.read_text()
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert sources == ["rollout0_input.png", "rollout0_image2.png", "rollout0_image3.png"]
    assert all((page.parent / name).is_file() for name in sources)

    drawn = np.asarray(PIL.Image.open(page.parent / "rollout0_input.png").convert("RGB"))
    assert drawn.shape == (300, 400, 3)
    assert tuple(drawn[100, 40]) == gallery.PALETTE[0]  # left edge of call 1's region
    assert tuple(drawn[100, 159]) == gallery.PALETTE[0]  # its right edge: the last pixel inside x2 = 160
    assert tuple(drawn[100, 160]) == GRAY
    assert tuple(drawn[120, 70]) == gallery.PALETTE[2]  # call 3 (call 2 failed: nothing drawn)
    assert tuple(drawn[75, 100]) == GRAY  # inside region 1, outside region 3
    crop = np.asarray(PIL.Image.open(page.parent / "rollout0_image2.png"))
    np.testing.assert_array_equal(crop, rollout().crops[0, 0])

    assert "crop_image(box=[20, 30, 80, 90], target_image=1) → image 2, region [40, 60, 160, 180] of the" in text
    assert "failed: BOX_NOT_FOUR_NUMBERS" in text
    assert "target_image=2) → image 3, region [70, 90, 130, 150]" in text
    assert "&lt;tool_call&gt;" in text and "<tool_call>" not in text  # the response is escaped
    assert "What is written on &lt;it&gt;?" in text
    assert "<th>bonus</th><td>0.0875</td>" in text


def test_the_gallery_index_lists_every_step_newest_first(tmp_path):
    gallery.write_gallery(tmp_path, 10, [entry()])
    gallery.write_gallery(tmp_path, 200, [entry()])
    links = re.findall(r'href="([^"]+)"', (tmp_path / "index.html").read_text())
    assert links == ["step_0000200/index.html", "step_0000010/index.html"]


def test_large_pictures_are_shrunk_with_their_boxes():
    picture = gallery.draw_boxes(np.full((1200, 1600, 3), 128, np.uint8), [np.array([400, 300, 1200, 900])], 800)
    drawn = np.asarray(picture)
    assert drawn.shape == (600, 800, 3)
    assert tuple(drawn[300, 200]) == gallery.PALETTE[0] and tuple(drawn[300, 196]) == GRAY


def test_select_frames_calls_list_their_frames():
    frames = rollout(n_calls=np.array([1]), call_frames=np.array([[[2, 4, 0, 0]] * 3]))
    shown = gallery.gallery_entry(frames, 0, tables(ToolId.SELECT_FRAMES), original=ORIGINAL, view_wh=VIEW_WH,
                                  question="q", answer="a", text="t", reward_parts={})
    assert shown.calls == ("select_frames([2, 4]) → image 2, 3",)
    assert shown.boxes == (None,) and len(shown.shown) == 2
    with pytest.raises(ValueError, match="no zoom regions"):
        gallery.zoom_regions(frames, 0, tables(ToolId.SELECT_FRAMES), (400, 300), VIEW_WH)


def test_a_malformed_call_shows_no_arguments():
    errors = np.array([[ToolError.MALFORMED_CALL, ToolError.OK, ToolError.OK]])
    calls = entry(n_calls=np.array([1]), call_errors=errors).calls
    assert calls == ("crop_image(?) → failed: MALFORMED_CALL",)
