"""The one-program multi-turn rollout: tool calls executed on device, exact replay, row independence."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from pixel_jax.models import layers
from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.processing import chat
from pixel_jax.processing import image as pim
from pixel_jax.processing.tokenizer import load_tokenizer
from pixel_jax.rollout import engine as engine_lib
from pixel_jax.rollout import sampling
from pixel_jax.rollout.tool_step import ToolTables
from pixel_jax.rollout.trajectory import token_logprobs
from pixel_jax.tools import crop as crop_ops
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import PROTOCOLS

CROP_HW = (56, 84)  # 2 x 3 merged tokens per crop
VIEW_WH = (112, 84)  # the view the model sees: 4 x 3 merged tokens
ORIGINAL_WH = (448, 336)
GOOD_CALL = '<tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [0.25, 0.3, 0.55, 0.7], "target_image": 1}}\n</tool_call>'
CROP_OF_CROP = '<tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [10, 5, 60, 40], "target_image": 2}}\n</tool_call>'
BAD_CALL = '<tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [0.2, 0.3], "target_image": 1}}\n</tool_call>'


@pytest.fixture(scope="module")
def setup():
    tok = load_tokenizer()
    cfg = qvl.Qwen2_5_VLConfig.tiny()
    model = qvl.Qwen2_5_VL(cfg, rngs=nnx.Rngs(0))
    protocol = PROTOCOLS.get("hermes")
    tables = ToolTables.build(protocol, tok, cfg, crop_hw=CROP_HW, max_calls=2)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:ORIGINAL_WH[1], 0:ORIGINAL_WH[0]]
    original = np.stack([xx * 255 // ORIGINAL_WH[0], yy * 255 // ORIGINAL_WH[1], (xx + yy) % 256], -1)
    original = np.clip(original + rng.integers(0, 40, original.shape), 0, 255).astype(np.uint8)
    view = np.asarray(Image.fromarray(original).resize(VIEW_WH, Image.BICUBIC))
    pixel_values, grid = pim.preprocess_images([view], min_pixels=28 * 28, max_pixels=112 * 112)
    messages = protocol.prompt_messages("What is written on the sign?", VIEW_WH)
    prompt = chat.encode_conversation(tok, messages, image_grid_thw=grid)["input_ids"]
    return dict(tok=tok, cfg=cfg, model=model, tables=tables, original=original, pixel_values=pixel_values,
                grid=grid, prompt=prompt, protocol=protocol)


def make_batch(setup, responses: list[str], free_tokens: int = 6):
    """One row per response text: its tokens are forced, then `free_tokens` are sampled freely."""
    tok, b = setup["tok"], len(responses)
    forced = [tok.encode(r) + [-1] * free_tokens for r in responses]
    width = max(len(f) for f in forced)
    forced = np.array([f + [-1] * (width - len(f)) for f in forced], np.int32)
    ids = np.tile(setup["prompt"], (b, 1))
    batch = dict(
        input_ids=ids, attention_mask=np.ones_like(ids), forced_tokens=forced,
        pixel_values=np.tile(setup["pixel_values"][None], (b, 1, 1)), image_grid_thw=np.tile(setup["grid"], (b, 1)),
        original=np.tile(setup["original"][None], (b, 1, 1, 1)),
        original_wh=np.tile(np.array(ORIGINAL_WH), (b, 1)), view_wh=np.tile(np.array(VIEW_WH), (b, 1)),
    )
    return {k: jax.device_put(jnp.asarray(v)) for k, v in batch.items()}


MAX_NEW_TOKENS = 140


@pytest.fixture(scope="module")
def engine(setup):
    """Reference sampling settings: T 1.0, top-k 40, top-p 0.95 on the first turn, T 0.9 after."""
    tok = setup["tok"]
    spec = engine_lib.RolloutSpec(
        max_new_tokens=MAX_NEW_TOKENS, stop_ids=(tok.special.im_end, tok.special.endoftext),
        first_turn=sampling.SamplingParams(1.0, 40, 0.95), later_turns=sampling.SamplingParams(0.9, 40, 1.0),
        max_calls=2, tools=setup["tables"])
    return engine_lib.Engine(setup["model"], spec)


@pytest.fixture(scope="module")
def rollout(setup, engine):
    batch = make_batch(setup, [GOOD_CALL + "\nThe crop shows" + CROP_OF_CROP, BAD_CALL, "It says"])
    key = jax.random.key(7)
    with jax.transfer_guard("disallow"):
        trajectory = engine(setup["model"], batch, key)
        jax.block_until_ready(trajectory)
    return batch, trajectory


def expected_crop(setup, bbox, target_source=None, target_wh=VIEW_WH):
    source = np.array([0, 0, *ORIGINAL_WH], np.float32) if target_source is None else target_source
    box, err = crop_ops.pixel_reasoner_box(jnp.asarray(bbox, jnp.float32), jnp.asarray(target_wh, jnp.float32))
    assert int(err) == ToolError.OK
    original_box = crop_ops.to_original_box(box, source, jnp.asarray(target_wh, jnp.float32))
    region = np.asarray(crop_ops.fit_box_to_grid(original_box, jnp.asarray(ORIGINAL_WH), CROP_HW))
    pil = np.asarray(Image.fromarray(setup["original"]).crop(tuple(region)).resize(CROP_HW[::-1], Image.BILINEAR))
    return pil, region.astype(np.float32)


def test_calls_are_executed_and_counted(setup, rollout):
    """The scripted calls (2 good, 1 bad, none) are executed; the 6 free tokens after them may close
    a call too (`</tool_call>` is one token), which then counts and fails like any other."""
    _, t = rollout
    closes = ((np.asarray(t.tokens) == setup["tables"].close_ids[-1]) & np.asarray(t.loss_mask)).sum(1)
    np.testing.assert_array_equal(np.asarray(t.n_calls), closes)  # every close the policy wrote is a call
    assert (closes >= [2, 1, 0]).all()
    np.testing.assert_array_equal(np.asarray(t.call_errors[0, :2]), [ToolError.OK, ToolError.OK])
    assert int(t.call_errors[1, 0]) == ToolError.BOX_NOT_FOUR_NUMBERS
    np.testing.assert_array_equal(np.asarray(t.n_crops), [2, 0, 0])
    np.testing.assert_array_equal(np.asarray(t.n_errors), closes - [2, 0, 0])  # a call crops or fails
    assert bool(t.last_call_failed[1])


def test_crops_equal_a_pil_crop_of_the_original_including_a_crop_of_a_crop(setup, rollout):
    _, t = rollout
    first, region = expected_crop(setup, [0.25, 0.3, 0.55, 0.7])
    got = np.asarray(t.crops[0, 0]).astype(float)
    assert np.mean(np.abs(got - first)) <= 1.0  # ≤ 1/255 of the range
    second, _ = expected_crop(setup, [10, 5, 60, 40], target_source=region, target_wh=CROP_HW[::-1])
    assert np.mean(np.abs(np.asarray(t.crops[0, 1]).astype(float) - second)) <= 1.0
    assert np.std(first) > 10  # the image is not flat


def test_injected_text_is_the_protocol_result(setup, rollout):
    _, t = rollout
    tok = setup["tok"]
    valid = np.asarray(t.slot_valid)[:, t.prompt_len:]
    text = [tok.decode(np.asarray(t.tokens[i, t.prompt_len:])[valid[i]].tolist()) for i in range(3)]
    assert f"Here is the cropped image (Image Size: {CROP_HW[1]}x{CROP_HW[0]}):<|vision_start|>" in text[0]
    assert text[0].count("<|image_pad|>") == 2 * 6  # two crops of 2 x 3 merged tokens
    assert f"Execution error:\n{ToolError.BOX_NOT_FOUR_NUMBERS.reason}\n<|im_end|>\n<|im_start|>assistant\n" in text[1]
    assert "Execution error" not in text[2] and "<tool_call>" not in text[2]


def test_positions_equal_get_rope_index_of_the_final_sequence(setup, rollout):
    _, t = rollout
    cfg = setup["cfg"]
    valid = np.asarray(t.slot_valid)
    for row in range(3):
        ids = np.asarray(t.tokens[row])[valid[row]]
        n_crops = int(t.n_crops[row])
        grids = np.array([setup["grid"][0]] + [[1, CROP_HW[0] // 14, CROP_HW[1] // 14]] * n_crops)
        expected, _ = qvl.get_rope_index(cfg, ids[None], None, grids)
        np.testing.assert_array_equal(np.asarray(t.positions[:, row])[:, valid[row]], np.asarray(expected)[:, 0])


def test_training_forward_reproduces_the_sampling_logprobs(setup, rollout):
    batch, t = rollout
    replay = token_logprobs(setup["model"], t, batch["pixel_values"], batch["image_grid_thw"])
    mask = np.asarray(t.loss_mask)
    assert mask.sum() > 100
    diff = np.abs(np.asarray(replay) - np.asarray(t.logprobs))[mask]
    assert diff.max() <= 1e-4, diff.max()
    # tool results and the prompt carry no loss
    assert not mask[:, : t.prompt_len].any()
    assert not (mask & (np.asarray(t.tokens) == setup["cfg"].image_token_id)).any()


def test_own_cache_read_in_blocks_gives_the_same_rollout(setup, engine, rollout, monkeypatch):
    """Attention over the rows' own slots in blocks of 16 (a loop that stops after the last block in
    use) instead of one block of all R = 140 + 2 x chunk slots: the same trajectory."""
    batch, t = rollout
    monkeypatch.setattr(layers, "OWN_BLOCK", 16)
    blocked = engine_lib.Engine(setup["model"], engine.spec)(setup["model"], batch, jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(blocked.tokens), np.asarray(t.tokens))
    np.testing.assert_allclose(np.asarray(blocked.logprobs), np.asarray(t.logprobs), atol=1e-5)


def test_plain_kernels_give_the_same_rollout(setup, engine, rollout, monkeypatch):
    """Decode steps of a few rows on CPU multiply through the kernels laid out as panels
    (`layers.panels_pay_off`); through the plain kernels: the same trajectory."""
    batch, t = rollout
    assert layers.panels_pay_off(t.tokens.shape[0], setup["model"].language_model)
    monkeypatch.setattr(layers, "panels_pay_off", lambda rows, module: False)
    plain = engine_lib.Engine(setup["model"], engine.spec)(setup["model"], batch, jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(t.tokens))
    np.testing.assert_allclose(np.asarray(plain.logprobs), np.asarray(t.logprobs), atol=1e-5)


def test_rows_do_not_depend_on_each_other(setup, engine, rollout):
    batch, t = rollout
    alone = {k: v[1:2] for k, v in batch.items()}
    alone["row_ids"] = jnp.array([1])
    single = engine(setup["model"], alone, jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(single.tokens[0]), np.asarray(t.tokens[1]))
    np.testing.assert_allclose(np.asarray(single.logprobs[0]), np.asarray(t.logprobs[1]), atol=1e-5)


def test_call_and_token_budgets_end_the_response(setup, engine):
    long_text = "The sign is small and far away, " * 30
    batch = make_batch(setup, [BAD_CALL * 3, long_text], free_tokens=0)  # 3 x 36 tokens fit the budget
    t = engine(setup["model"], batch, jax.random.key(0))
    assert int(t.finish[0]) == engine_lib.FinishReason.TOO_MANY_CALLS
    assert int(t.n_calls[0]) == 2
    assert int(t.finish[1]) == engine_lib.FinishReason.LENGTH
    assert int(t.response_length[1]) == MAX_NEW_TOKENS


def test_a_call_past_max_images_ends_the_response_unserved(setup, engine):
    """max_images = 1: row 0's second crop would be its response's second image, so the response
    ends at that call (not executed); row 1's failed call shows nothing, so its crop is served."""
    responses = [GOOD_CALL + "\nThe crop shows" + CROP_OF_CROP, BAD_CALL + GOOD_CALL]
    spec = dataclasses.replace(engine.spec, max_images=1)
    t = engine_lib.Engine(setup["model"], spec)(setup["model"], make_batch(setup, responses), jax.random.key(7))
    assert int(t.finish[0]) == engine_lib.FinishReason.TOO_MANY_IMAGES
    assert int(t.n_calls[0]) == 1 and int(t.response_length[0]) == len(setup["tok"].encode(responses[0]))
    assert int(t.finish[1]) != engine_lib.FinishReason.TOO_MANY_IMAGES
    np.testing.assert_array_equal(np.asarray(t.n_calls[1]), 2)
    np.testing.assert_array_equal(np.asarray(t.n_errors), [0, 1])


def test_group_sampling_replicates_each_prompt(setup, engine):
    tok = setup["tok"]
    end = tok.decode([tok.special.im_end])
    batch = make_batch(setup, ["It says", GOOD_CALL + "Done" + end], free_tokens=0)
    free = len(tok.encode("It says"))
    forced = np.asarray(batch["forced_tokens"]).copy()
    forced[0, free: free + 5] = -1  # five free tokens, then the end of the turn
    forced[0, free + 5] = tok.special.im_end
    grouped = engine(setup["model"], {**batch, "forced_tokens": jnp.asarray(forced)}, jax.random.key(5), group_size=3)
    assert grouped.tokens.shape[0] == 6
    np.testing.assert_array_equal(np.asarray(grouped.n_calls), [0, 0, 0, 1, 1, 1])
    prompt = np.asarray(grouped.tokens[:, : grouped.prompt_len])
    assert (prompt == prompt[0]).all()
    sampled = np.asarray(grouped.tokens[:3, grouped.prompt_len + free: grouped.prompt_len + free + 5])
    assert len({tuple(r) for r in sampled}) > 1  # the samples of a group differ (T = 1)
    with pytest.raises(ValueError, match="with group_size > 1 give one image"):
        engine(setup["model"], {**batch, "image_grid_thw": batch["image_grid_thw"][:1]}, jax.random.key(5), 3)
