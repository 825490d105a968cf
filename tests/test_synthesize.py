"""Warm-start trajectory synthesis: scripts in the protocol's text, replayed through the engine.

One batch of 8 synthetic examples (view 112×84 of a 336×252 canvas, crops 84×56) is replayed once
(tests/sft_fixtures.py); it holds the three kinds. Reference boxes are recomputed here from the
crop tool's semantics (crop.py) and crops compared with PIL.
"""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import sft_fixtures as fx
from pixel_jax.data.example import Example
from pixel_jax.processing import image as image_processing
from pixel_jax.processing.tokenizer import SPECIAL_TOKEN_TEXT
from pixel_jax.rollout.inputs import question_text, rollout_inputs
from pixel_jax.sft import synthesize
from pixel_jax.tools import crop as crop_ops
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import PROTOCOLS, ToolId

HERMES = PROTOCOLS.get("hermes")
VIEW_WH = (fx.VIEW_HW[1], fx.VIEW_HW[0])
CROP_WH = (fx.CROP_HW[1], fx.CROP_HW[0])
CROP_TOKENS = (fx.CROP_HW[0] // 28) * (fx.CROP_HW[1] // 28)  # merged 28×28 visual tokens
CROP_RESULT = "Here is the cropped image"
WHITE = 250  # the sign is the only white patch of a synthetic canvas (clutter channels <= 215)


@pytest.fixture(scope="module")
def replayed():
    return fx.replayed()


def region_of(view_box, original_wh):
    """The region of the original a crop of `view_box` (view pixels) shows, by crop.py's rules."""
    view_wh = jnp.asarray(VIEW_WH, jnp.float32)
    original = crop_ops.to_original_box(view_box, jnp.array([0.0, 0.0, *original_wh]), view_wh)
    region = crop_ops.fit_box_to_grid(original, jnp.asarray(original_wh), fx.CROP_HW)
    return tuple(np.asarray(region).tolist())


def shown_region(bbox, original_wh):
    """Region a crop_image(bbox_2d) call on image 1 shows, in original pixels."""
    box, error = crop_ops.pixel_reasoner_box(jnp.asarray(bbox, jnp.float32),
                                             jnp.asarray(VIEW_WH, jnp.float32))
    assert int(error) == ToolError.OK
    return region_of(box, original_wh)


def target_of(batch, row):
    return tuple(batch.target_box[row].tolist())


def original_wh(batch, row):
    return tuple(int(v) for v in batch.original_size[row, ::-1])


def response_text(sft_batch, row) -> str:
    """The decoded valid slots after the prompt: assistant turns and injected results."""
    t = sft_batch.trajectory
    valid = np.asarray(t.slot_valid[row, t.prompt_len:])
    return fx.tokenizer().decode(np.asarray(t.tokens[row, t.prompt_len:])[valid].tolist())


# ------------------------------------------------------------------------------ text structure


def test_each_kind_has_its_turn_structure_in_hermes_text(replayed):
    batch, _, scripts = replayed
    assert sorted({s.kind for s in scripts}) == sorted(synthesize.KINDS)
    calls = {"textual": 0, "single_pass": 1, "self_correction": 2}
    for script, example in zip(scripts, batch.examples):
        assert script.example_id == example.id and len(script.turns) == calls[script.kind] + 1
        assert example.needs_zoom == (script.kind != "textual")
        *calling, last = script.turns
        for turn in calling:
            reasoning, call = turn.split("\n<tool_call>\n")
            body, close = call.split("\n")
            assert close == "</tool_call>" and "\\boxed" not in reasoning
            call = json.loads(body)
            assert call["name"] == "crop_image_normalized"  # the name the prompt declares
            assert call["arguments"]["target_image"] == 1
        assert "<tool_call>" not in last and last.count("\\boxed{") == 1
        assert last.endswith(f"\\boxed{{{example.answers[0]}}}.")
        assert script.answer == example.answers[0]
        if script.kind == "self_correction":  # the second turn starts by rejecting the first crop
            noun = synthesize.target_noun(example)
            rejections = tuple(p.format(target=noun) for p in synthesize.TEMPLATES["nothing"])
            assert calling[1].startswith(rejections)


def test_calls_parse_to_the_intended_boxes(replayed):
    batch, _, scripts = replayed
    checked = 0
    for row, script in enumerate(scripts):
        target = target_of(batch, row)
        for k, turn in enumerate(script.turns[:-1]):
            call = HERMES.parse_host(turn, 10_000)
            assert (call.error, call.tool, call.target_image) == (ToolError.OK, ToolId.CROP_IMAGE, 1)
            assert all(0 <= v < 1 for v in call.numbers)  # normalised, as the tool's rule reads them
            region = shown_region(call.numbers, original_wh(batch, row))
            assert region == script.regions[k]
            if k == len(script.turns) - 2:  # the final zoom shows the whole target
                assert synthesize.contains(region, target)
                written = tuple(v * s for v, s in zip(call.numbers, original_wh(batch, row) * 2))
                assert synthesize.contains(written, target)  # the box itself covers it, unpadded
            else:  # the wrong zoom of a self-correction does not touch it: IoU 0
                assert synthesize.overlap_area(region, target) == 0
            checked += 1
    assert checked >= 4


# ------------------------------------------------------------------------------ the replay


def test_replay_executes_the_calls_and_the_last_crop_shows_the_target(replayed):
    batch, sft_batch, scripts = replayed
    t = sft_batch.trajectory
    np.testing.assert_array_equal(np.asarray(t.n_calls), [len(s.turns) - 1 for s in scripts])
    assert not np.asarray(t.call_errors).any() and not np.asarray(t.n_errors).any()
    for row, script in enumerate(scripts):
        image = Image.fromarray(batch.original[row, 0])
        for k, region in enumerate(script.regions):
            # The region the engine cut, from the box it recorded (padded, in view pixels).
            assert region_of(t.call_boxes[row, k], original_wh(batch, row)) == region
            crop = np.asarray(t.crops[row, k]).astype(float)  # [h, w, 3]
            expected = image.crop(region).resize(fx.CROP_HW[::-1], Image.BILINEAR)
            expected = np.asarray(expected).astype(float)
            assert np.abs(crop - expected).mean() <= 1.0
            shows_sign = (crop.min(axis=-1) >= WHITE).any()  # the white card, even downscaled ~2×
            assert shows_sign == (k == len(script.regions) - 1)  # in the final crop, not the wrong one


def test_no_trajectory_states_its_answer_before_its_last_crop(replayed):
    _, sft_batch, scripts = replayed
    t = sft_batch.trajectory
    tok = fx.tokenizer()
    for row, script in enumerate(scripts):
        text = response_text(sft_batch, row)
        answer = f"\\boxed{{{script.answer}}}"
        assert text.count("\\boxed{") == 1
        if script.kind != "textual":
            assert text.count(CROP_RESULT) == len(script.regions)
            last_image = text.rindex(SPECIAL_TOKEN_TEXT["image_pad"])
            assert text.index(answer) > last_image > text.rindex(CROP_RESULT)
        # In slot order: the slot writing the last "\\boxed{" (the prompt's guideline has one too)
        # is the policy's, after every injected slot.
        slots = np.flatnonzero(np.asarray(t.slot_valid[row]))
        pieces = [tok.decode([int(t.tokens[row, slot])]) for slot in slots]
        ends = np.cumsum([len(piece) for piece in pieces])  # text offset after each slot
        boxed_slot = slots[np.searchsorted(ends, "".join(pieces).rindex("\\boxed{"), side="right")]
        written = np.asarray(t.loss_mask[row])
        injected = slots[~written[slots] & (slots >= t.prompt_len)]
        assert written[boxed_slot] and (injected.size == 0 or boxed_slot > injected.max())


def expected_response(protocol, script) -> str:
    """The script's turns with the protocol's result after each call, then the end of the turn."""
    results = [protocol.crop_result(CROP_WH, call).render([CROP_TOKENS])
               for call in range(1, len(script.turns))]
    return "".join(turn + result for turn, result in zip(script.turns, results + [""])) + \
        SPECIAL_TOKEN_TEXT["im_end"]


def test_the_replayed_text_is_the_script_between_the_protocol_results(replayed):
    _, sft_batch, scripts = replayed
    for row, script in enumerate(scripts):
        assert response_text(sft_batch, row) == expected_response(HERMES, script)


def test_groundlight_scripts_replay_in_their_think_and_answer_tags():
    protocol = PROTOCOLS.get("groundlight")
    config = dataclasses.replace(fx.CONFIG, protocol="groundlight", prompt_len=640)
    synthesizer = synthesize.Synthesizer(fx.new_model(), fx.tokenizer(), config)
    batch = fx.batches("train", fx.BATCH_SIZE)[0]
    sft_batch, scripts = synthesizer(fx.new_model(), batch)
    # A zoom box is 400 px of the view, so on a 112×84 view every zoom shows the whole image:
    # there is no wrong box to correct.
    assert {script.kind for script in scripts} == {"single_pass", "textual"}
    for row, (script, example) in enumerate(zip(scripts, batch.examples)):
        assert response_text(sft_batch, row) == expected_response(protocol, script)
        assert script.turns[-1].endswith(f" </think>\n<answer>{example.answers[0]}</answer>")
        if script.kind == "single_pass":  # the keypoint (view pixels) is on the target
            call = protocol.parse_host(script.turns[0], 10_000)
            scale = np.divide(VIEW_WH, original_wh(batch, row))
            low, high = batch.target_box[row][:2] * scale, batch.target_box[row][2:] * scale
            assert call.error == ToolError.OK
            assert np.all(low <= call.numbers) and np.all(np.asarray(call.numbers) <= high)
    assert not np.asarray(sft_batch.trajectory.n_errors).any()


def test_the_loss_mask_is_exactly_the_script(replayed):
    _, sft_batch, scripts = replayed
    t = sft_batch.trajectory
    tok = fx.tokenizer()
    mask = np.asarray(t.loss_mask)
    for row, script in enumerate(scripts):
        written = tok.decode(np.asarray(t.tokens[row])[mask[row]].tolist())
        assert written == "".join(script.turns) + SPECIAL_TOKEN_TEXT["im_end"]
    assert not mask[:, : t.prompt_len].any()
    assert not (mask & (np.asarray(t.tokens) == fx.MODEL_CONFIG.image_token_id)).any()
    assert (mask <= np.asarray(t.slot_valid)).all()


def test_padding_rows_get_no_loss(replayed):
    batch, sft_batch, _ = replayed
    padded = dataclasses.replace(batch, valid=np.arange(len(batch.valid)) < 6)
    again, _ = fx.synthesizer()(fx.new_model(), padded)
    mask = np.asarray(again.trajectory.loss_mask)
    assert not mask[6:].any()
    np.testing.assert_array_equal(mask[:6], np.asarray(sft_batch.trajectory.loss_mask)[:6])


# ------------------------------------------------------------------------------ determinism and the mix


def reversed_batch(batch):
    arrays = {f.name: getattr(batch, f.name)[::-1] for f in dataclasses.fields(batch)
              if f.name != "examples"}
    return dataclasses.replace(batch, examples=batch.examples[::-1], **arrays)


def test_scripts_depend_only_on_the_example_and_the_seed(replayed):
    batch, _, scripts = replayed
    preview = fx.synthesizer().preview
    assert synthesize.batch_scripts(batch, fx.CONFIG, preview) == scripts
    assert synthesize.batch_scripts(reversed_batch(batch), fx.CONFIG, preview) == scripts[::-1]
    other = synthesize.batch_scripts(batch, dataclasses.replace(fx.CONFIG, seed=1), preview)
    assert [s.turns for s in other] != [s.turns for s in scripts]
    assert [s.answer for s in other] == [s.answer for s in scripts]


def test_kind_weights_choose_among_the_kinds_that_fit():
    preview = fx.synthesizer().preview
    batches = fx.batches("train", 48)

    def kinds(**weights):
        config = dataclasses.replace(fx.CONFIG, kind_weights=weights) if weights else fx.CONFIG
        return [s.kind for batch in batches for s in synthesize.batch_scripts(batch, config, preview)]

    assert set(kinds(self_correction=1, textual=1)) == {"self_correction", "textual"}
    assert set(kinds(single_pass=1, textual=1)) == {"single_pass", "textual"}
    zoom = [kind for kind in kinds() if kind != "textual"]
    share = zoom.count("single_pass") / len(zoom)  # default weights 2 : 1
    assert len(zoom) >= 25 and 0.5 <= share <= 0.85, (len(zoom), share)


def test_an_example_fitting_only_zero_weight_kinds_is_an_error(replayed):
    batch, _, scripts = replayed
    preview = fx.synthesizer().preview
    with pytest.raises(ValueError, match=r"fits the kinds \['textual'\], all of weight 0"):
        synthesize.batch_scripts(batch, dataclasses.replace(fx.CONFIG, kind_weights={"single_pass": 1}),
                                 preview)
    row = [s.kind for s in scripts].index("single_pass")
    with pytest.raises(ValueError, match=r"needs_zoom=True, target box None\) fits the kinds \[\]"):
        synthesize.write_script(batch.examples[row], fx.CONFIG, preview, batch.original[row, 0],
                                original_wh(batch, row), VIEW_WH, None)
    with pytest.raises(ValueError, match="the preview executes hermes calls with"):
        synthesize.batch_scripts(batch, dataclasses.replace(fx.CONFIG, crop_hw=(28, 28)), preview)


# ------------------------------------------------------------------------------ text pieces


def test_groundlight_turns_zoom_on_the_centre_of_the_box():
    style, protocol = synthesize.STYLES.get("groundlight"), PROTOCOLS.get("groundlight")
    call = style.call(protocol, (10.0, 20.0, 31.0, 41.0), VIEW_WH)
    assert call == "<tool>\nname: zoom\nkeypoint: [20, 30]\n</tool>"
    parsed = protocol.parse_host(style.turn("It is small.", call), 10_000)
    assert (parsed.error, parsed.tool, parsed.numbers) == (ToolError.OK, ToolId.ZOOM, (20.0, 30.0))
    assert style.turn("It is small.", call) == " It is small. </think>\n" + call
    assert style.final("Clear now.", "<answer>K4</answer>", np.random.default_rng(0)) == \
        " Clear now. </think>\n<answer>K4</answer>"


def test_hermes_boxes_are_rounded_outward_and_stay_below_one():
    call = synthesize.STYLES.get("hermes").call(HERMES, (11.3, 8.5, 112.0, 40.1), VIEW_WH)
    assert json.loads(call.split("\n")[1])["arguments"]["bbox_2d"] == [0.1, 0.1, 0.99, 0.48]


def test_request_box_grows_small_targets_for_the_crop_tool():
    # 0.1·W of padding may be clamped away on one side: each side must reach 30 − 0.1·side.
    box = synthesize.request_box((2.0, 40.0, 6.0, 44.0), VIEW_WH)
    np.testing.assert_allclose(box, (0.0, 42 - 21.6 / 2, 30 - 11.2, 42 + 21.6 / 2))
    assert synthesize.request_box((10.0, 10.0, 60.0, 70.0), VIEW_WH) == (10.0, 10.0, 60.0, 70.0)


def test_where_in_image_and_question_text():
    assert synthesize.where_in_image((0, 0, 10, 10), (90, 90)) == "in the top left part of the image"
    assert synthesize.where_in_image((40, 40, 50, 50), (90, 90)) == "in the centre of the image"
    assert synthesize.where_in_image((80, 40, 90, 50), (90, 90)) == \
        "in the middle right part of the image"
    image = np.zeros((4, 4, 3), np.uint8)
    example = Example(id="q", question="Where?", answers=("B",), answer_metric="multiple_choice",
                      image=image, options=("left", "right"))
    assert question_text(example) == "Where?\n(A) left\n(B) right"
    vqa = Example(id="v", question="What?", answers=("a", "b", "b"), answer_metric="vqa", image=image)
    assert synthesize.final_answer(vqa) == "b"
    with pytest.raises(ValueError, match="'t' has no answer"):
        synthesize.final_answer(
            dataclasses.replace(vqa, id="t", answers=(), answer_metric="exact_match"))


def test_rollout_inputs_carry_the_view_as_raw_uint8_patches(replayed):
    """The prompt image goes to the engine and the learner as uint8 patches (4x smaller than
    float32); normalized, they are exactly the vision-tower input of the view."""
    batch, _, _ = replayed
    inputs = rollout_inputs(batch, HERMES, fx.tokenizer(), fx.CONFIG.prompt_len)
    assert inputs["pixel_values"].dtype == np.uint8
    for row, view in enumerate(batch.view):
        np.testing.assert_array_equal(image_processing.normalize_patches(inputs["pixel_values"][row]),
                                      image_processing.to_pixel_values(view))


def test_bad_configs_and_inputs_raise_clear_errors(replayed):
    with pytest.raises(ValueError, match="kind_weights must map kinds"):
        synthesize.SynthesisConfig(kind_weights={"zoom": 1.0})
    with pytest.raises(ValueError, match="max_calls must be >= 2"):
        synthesize.SynthesisConfig(max_calls=1)
    with pytest.raises(ValueError, match="unknown tool protocol 'json'"):
        synthesize.SynthesisConfig(protocol="json")
    batch, _, _ = replayed
    too_long = r"'synthetic/train/0': its prompt has \d+ tokens, more than prompt_len=100"
    with pytest.raises(ValueError, match=too_long):
        rollout_inputs(batch, HERMES, fx.tokenizer(), prompt_len=100)
    video = dataclasses.replace(batch, view=np.repeat(batch.view, 2, axis=1))
    with pytest.raises(ValueError, match="holds videos of 2 frame slots"):
        rollout_inputs(video, HERMES, fx.tokenizer(), prompt_len=600)
