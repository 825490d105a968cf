"""select_frames inside the compiled rollout: a video prompt, frames shown as images, exact replay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.processing import chat
from pixel_jax.processing import image as pim
from pixel_jax.processing.tokenizer import load_tokenizer
from pixel_jax.rollout import engine as engine_lib
from pixel_jax.rollout import sampling
from pixel_jax.rollout.tool_step import ToolTables
from pixel_jax.rollout.trajectory import token_logprobs
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import PROTOCOLS

FRAME_HW = (56, 84)
N_FRAMES = 6
GOOD = '<tool_call>\n{"name": "select_frames", "arguments": {"target_frames": [2, 5]}}\n</tool_call>'
OUT_OF_RANGE = '<tool_call>\n{"name": "select_frames", "arguments": {"target_frames": [2, 9]}}\n</tool_call>'


@pytest.fixture(scope="module")
def run():
    tok = load_tokenizer()
    cfg = qvl.Qwen2_5_VLConfig.tiny()
    model = qvl.Qwen2_5_VL(cfg, rngs=nnx.Rngs(1))
    protocol = PROTOCOLS.get("hermes")
    tables = ToolTables.build(protocol, tok, cfg, frame_hw=FRAME_HW, max_frames=4, max_calls=2)
    frames = np.random.default_rng(0).integers(0, 256, (N_FRAMES,) + FRAME_HW + (3,), dtype=np.uint8)
    video_values, video_grid = pim.preprocess_video(frames, min_pixels=28 * 28, max_pixels=84 * 56)
    messages = [{"role": "system", "content": protocol.system_prompt()},
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which frame is red?"}]}]
    prompt = chat.encode_conversation(tok, messages, video_grid_thw=video_grid)["input_ids"]
    forced = [tok.encode(GOOD) + [-1] * 5, tok.encode(OUT_OF_RANGE) + [-1] * 5]
    width = max(map(len, forced))
    batch = dict(
        input_ids=np.tile(prompt, (2, 1)), attention_mask=np.ones((2, len(prompt)), np.int32),
        forced_tokens=np.array([f + [-1] * (width - len(f)) for f in forced], np.int32),
        pixel_values_videos=np.tile(video_values, (2, 1)), video_grid_thw=np.tile(video_grid, (2, 1)),
        second_per_grid_ts=np.array([1.0, 1.0], np.float32),
        frames=np.tile(frames[None], (2, 1, 1, 1, 1)), n_frames=np.array([N_FRAMES, N_FRAMES]),
    )
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    spec = engine_lib.RolloutSpec(max_new_tokens=64, stop_ids=(tok.special.im_end,), max_calls=2, tools=tables,
                                  first_turn=sampling.SamplingParams(1.0), later_turns=sampling.SamplingParams(0.9))
    trajectory = engine_lib.Engine(model, spec)(model, batch, jax.random.key(3))
    return dict(tok=tok, cfg=cfg, model=model, frames=frames, batch=batch, video_grid=video_grid, t=trajectory)


def test_selected_frames_are_shown_in_the_order_asked(run):
    t = run["t"]
    np.testing.assert_array_equal(np.asarray(t.n_crops), [2, 0])
    np.testing.assert_array_equal(np.asarray(t.crops[0, 0]), run["frames"][1])
    np.testing.assert_array_equal(np.asarray(t.crops[0, 1]), run["frames"][4])
    np.testing.assert_array_equal(np.asarray(t.call_frames[0, 0]), [2, 5, 0, 0])
    assert int(t.call_errors[1, 0]) == ToolError.FRAME_OUT_OF_RANGE
    response = [run["tok"].decode(np.asarray(t.tokens[i, t.prompt_len:])[np.asarray(t.slot_valid[i, t.prompt_len:])]
                                  .tolist()) for i in range(2)]
    assert f"Here are the selected frames (Frame Size: {FRAME_HW[1]}x{FRAME_HW[0]}, Numbered 1 to 2):" in response[0]
    assert response[0].count("<|image_pad|>") == 2 * 6
    assert ToolError.FRAME_OUT_OF_RANGE.reason in response[1]


def test_positions_and_replayed_logprobs(run):
    t, cfg, batch = run["t"], run["cfg"], run["batch"]
    valid = np.asarray(t.slot_valid)
    for row in range(2):
        ids = np.asarray(t.tokens[row])[valid[row]]
        grids = np.array([[1, FRAME_HW[0] // 14, FRAME_HW[1] // 14]] * int(t.n_crops[row])) if int(t.n_crops[row]) else None
        expected, _ = qvl.get_rope_index(cfg, ids[None], None, grids, run["video_grid"], np.array([1.0]))
        np.testing.assert_array_equal(np.asarray(t.positions[:, row])[:, valid[row]], np.asarray(expected)[:, 0])
    replay = token_logprobs(run["model"], t, prompt_video_values=batch["pixel_values_videos"],
                            prompt_video_grid_thw=batch["video_grid_thw"])
    mask = np.asarray(t.loss_mask)
    assert np.abs(np.asarray(replay) - np.asarray(t.logprobs))[mask].max() <= 1e-4
