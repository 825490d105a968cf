"""The warm-start SFT trainer on trajectories replayed by the synthesizer (tests/sft_fixtures.py).

The loss is checked against an independent reference — `train_step.next_token_loss` over the
trajectory with its holes removed, positions from `get_rope_index`, crops as ordinary images —
and the mask by changing the target of a tool-result token while keeping its input identical.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import sft_fixtures as fx
from pixel_jax import sharding, train_step
from pixel_jax.processing import image as image_processing
from pixel_jax.rollout.inputs import rollout_inputs
from pixel_jax.sft import synthesize, trainer
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import PROTOCOLS

TOY = trainer.SFTConfig(learning_rate=3e-3, total_steps=100, adam_eps=1e-6)
sft_loss = jax.jit(trainer.sft_loss)
next_token_loss = jax.jit(train_step.next_token_loss)


@pytest.fixture(scope="module")
def replayed():
    return fx.replayed()


class Run:
    """A compiled SFT step on a (data, fsdp, tensor) mesh and fresh states for it."""

    def __init__(self, config: trainer.SFTConfig, mesh_shape=(1, 1, 1)):
        devices = jax.devices()[: int(np.prod(mesh_shape))]
        self.plan = trainer.plan_sft(fx.build_model, config, sharding.make_mesh(mesh_shape, devices),
                                     sharding.make_rules())
        self.step = trainer.SFTStep(self.plan, config)

    def init(self) -> train_step.TrainState:
        return train_step.init_state(self.plan, fx.new_model())


@functools.cache
def single_device() -> Run:
    return Run(TOY)


def flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def reference_loss(model, sft_batch: trainer.SFTBatch) -> float:
    """Mean next-token cross-entropy of the assistant tokens by `train_step.next_token_loss`: each
    row's valid slots as one plain sequence (right-padded), the prompt image and the crops as its
    images in reading order, positions left to the model (get_rope_index)."""
    t = jax.device_get(sft_batch.trajectory)
    valid = t.slot_valid.astype(bool)
    length = valid.sum(axis=1).max()
    ids = np.zeros((len(valid), length), np.int32)
    attention, loss_mask = np.zeros_like(ids), np.zeros_like(ids)
    pixel_values, grids = [], []
    h, w = t.crops.shape[2:4]
    for row in range(len(valid)):
        n = valid[row].sum()
        ids[row, :n], attention[row, :n] = t.tokens[row][valid[row]], 1
        loss_mask[row, :n] = t.loss_mask[row][valid[row]]
        pixel_values.append(image_processing.normalize_patches(np.asarray(sft_batch.prompt_pixel_values[row])))
        grids.append(np.asarray(sft_batch.prompt_grid_thw[row]))
        for crop in t.crops[row, : t.n_crops[row]]:
            pixel_values.append(image_processing.to_pixel_values(crop[None].astype(np.float32)))
            grids.append(np.array([1, h // 14, w // 14]))
    batch = dict(input_ids=ids, attention_mask=attention, loss_mask=loss_mask,
                 pixel_values=np.concatenate(pixel_values), image_grid_thw=np.stack(grids))
    return float(next_token_loss(model, {k: jnp.asarray(v) for k, v in batch.items()})[0])


# ------------------------------------------------------------------------------ the objective


def test_loss_is_the_cross_entropy_of_the_assistant_tokens(replayed):
    _, sft_batch, scripts = replayed
    model = fx.new_model()
    loss, metrics = sft_loss(model, sft_batch)
    expected_tokens = sum(len(synthesize.script_tokens(s, PROTOCOLS.get("hermes"), fx.tokenizer()))
                          for s in scripts)
    assert int(metrics["target_tokens"]) == expected_tokens
    np.testing.assert_allclose(float(loss), reference_loss(model, sft_batch), rtol=2e-6)
    np.testing.assert_allclose(float(loss), np.log(fx.MODEL_CONFIG.vocab_size), rtol=0.01)  # untrained


def test_tool_result_targets_carry_no_loss(replayed):
    """Token v' gets token v's embedding: writing v' for v leaves every hidden state unchanged and
    only changes that slot's target. In a tool result the loss must not move; in an assistant turn
    it must."""
    _, sft_batch, _ = replayed
    t = sft_batch.trajectory
    row = int(np.argmax(np.asarray(t.n_calls)))
    written, valid = np.asarray(t.loss_mask[row]), np.asarray(t.slot_valid[row])
    slots = np.arange(len(valid))
    injected = slots[valid & ~written & (slots >= t.prompt_len)]
    tokens = np.asarray(t.tokens)
    tool_slot = next(s for s in injected if tokens[row, s] != fx.MODEL_CONFIG.image_token_id)
    assistant_slot = slots[written][3]
    unused = [v for v in range(1800, 1900) if v not in tokens]
    model = fx.new_model()
    table = model.language_model.embed_tokens[...]
    losses = {}
    for name, slot, twin in (("tool", tool_slot, unused[0]), ("assistant", assistant_slot, unused[1])):
        table = table.at[twin].set(table[tokens[row, slot]])
        model.language_model.embed_tokens[...] = table
        swapped = sft_batch.replace(trajectory=t.replace(tokens=t.tokens.at[row, slot].set(twin)))
        losses[name] = float(sft_loss(model, swapped)[0])
    losses["base"] = float(sft_loss(model, sft_batch)[0])
    assert losses["tool"] == losses["base"]
    assert abs(losses["assistant"] - losses["base"]) > 1e-4


def test_a_few_steps_drive_the_loss_down(replayed):
    _, sft_batch, _ = replayed
    run = single_device()
    state = run.init()
    losses = []
    for _ in range(8):
        state, metrics = run.step(state, sft_batch)
        losses.append(float(metrics["loss"]))
    assert max(losses[1:]) < losses[0] and losses[-1] < 0.8 * losses[0], losses
    assert int(state.step) == 8 and len(run.step._steps) == 1  # one compile for the bucket


def test_learning_rate_warms_up_from_zero(replayed):
    _, sft_batch, _ = replayed
    run = Run(dataclasses.replace(TOY, warmup_steps=2))
    state = run.init()
    before = flat(state.params)
    state, metrics = run.step(state, sft_batch)
    assert float(metrics["learning_rate"]) == 0.0
    for key, value in flat(state.params).items():  # the first update ran at a learning rate of 0
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    state, metrics = run.step(state, sft_batch)
    np.testing.assert_allclose(float(metrics["learning_rate"]), TOY.learning_rate / 2)


# ------------------------------------------------------------------------------ sharding and checkpoints


def test_the_step_does_not_depend_on_the_mesh(replayed):
    _, sft_batch, _ = replayed
    run, sharded = single_device(), Run(TOY, mesh_shape=(2, 2, 2))
    expected_state, expected = run.step(run.init(), sft_batch)
    state = sharded.init()
    embed = state.params["language_model"]["embed_tokens"].get_value()
    assert embed.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    state, metrics = sharded.step(state, sft_batch)
    for key in ("loss", "grad_norm", "target_tokens"):
        np.testing.assert_allclose(float(metrics[key]), float(expected[key]), rtol=1e-5, err_msg=key)
    for key, value in flat(expected_state.params).items():
        np.testing.assert_allclose(flat(state.params)[key], value, atol=1e-5, err_msg=key)


def test_state_round_trips_through_an_orbax_checkpoint(replayed, tmp_path):
    _, sft_batch, _ = replayed
    run = single_device()
    state, _ = run.step(run.init(), sft_batch)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", run.plan.abstract_state)
    assert type(restored) is train_step.TrainState and int(restored.step) == 1
    for (key, value), leaf in zip(flat(state).items(), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(leaf), value, err_msg=key)
    assert jax.tree.leaves(restored)[-1].sharding == jax.tree.leaves(run.plan.state_shardings)[-1]


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="learning_rate=0 must be > 0"):
        trainer.SFTConfig(learning_rate=0)
    with pytest.raises(ValueError, match="total_steps=5 must exceed warmup_steps=10"):
        trainer.SFTConfig(warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="aggregation='mean' is not one of"):
        trainer.SFTConfig(aggregation="mean")
    with pytest.raises(ValueError, match="max_grad_norm=0 must be > 0"):
        trainer.SFTConfig(max_grad_norm=0)


# ------------------------------------------------------------------------------ end to end


def first_call_parses(tok, trajectory, row: int) -> bool:
    """The row's first call, read by the protocol's host parser from the tokens it wrote, is OK."""
    protocol = PROTOCOLS.get(fx.CONFIG.protocol)
    written = np.asarray(trajectory.loss_mask[row])
    text = tok.decode(np.asarray(trajectory.tokens[row])[written].tolist())
    end = text.find(protocol.call_close)
    if end < 0:
        return False
    return protocol.parse_host(text[: end + len(protocol.call_close)], 10_000).error == ToolError.OK


def greedy_call_rate(model, batch) -> float:
    """Fraction of the rows of `batch` whose greedy response makes a well-formed first call."""
    synthesizer, tok = fx.synthesizer(), fx.tokenizer()
    inputs = rollout_inputs(batch, synthesizer.protocol, tok, fx.CONFIG.prompt_len)
    inputs["forced_tokens"] = np.full((len(batch.examples), fx.CONFIG.max_new_tokens), -1, np.int32)
    trajectory = synthesizer.engine(model, {k: jnp.asarray(v) for k, v in inputs.items()},
                                    jax.random.key(0))
    rows = range(len(batch.examples))
    return float(np.mean([first_call_parses(tok, trajectory, row) for row in rows]))


def split_rows(sft_batch: trainer.SFTBatch, parts: int) -> list[trainer.SFTBatch]:
    """`parts` batches of consecutive rows (positions [3, B, S] are split on their axis 1)."""
    t = sft_batch.trajectory
    moved = sft_batch.replace(trajectory=t.replace(positions=jnp.moveaxis(t.positions, 1, 0)))
    pieces = [jax.tree.map(lambda x: x[i::parts], moved) for i in range(parts)]
    return [piece.replace(trajectory=piece.trajectory.replace(
        positions=jnp.moveaxis(piece.trajectory.positions, 0, 1))) for piece in pieces]


@pytest.mark.slow
def test_sft_teaches_the_call_format_on_the_synthetic_task():
    """150 updates of 4 trajectories: the loss falls and greedy responses to held-out questions
    that need a zoom start making well-formed calls."""
    steps = 150
    config = trainer.SFTConfig(learning_rate=5e-3, warmup_steps=10, total_steps=steps, adam_eps=1e-6)
    run = Run(config)
    synthesizer = fx.synthesizer()
    train = [part for batch in fx.batches("train", 32)
             for part in split_rows(synthesizer(fx.new_model(), batch)[0], 2)]  # 8 batches of 4
    zoom_only = dataclasses.replace(fx.TASK, kind_weights={"text": 2, "colour": 1, "count": 1})
    held_out = fx.batches("eval", fx.BATCH_SIZE, zoom_only)[0]
    state = run.init()
    rate_before = greedy_call_rate(nnx.merge(run.plan.graphdef, state.params), held_out)
    losses = []
    for step in range(steps):
        state, metrics = run.step(state, train[step % len(train)])
        losses.append(float(metrics["loss"]))
    rate_after = greedy_call_rate(nnx.merge(run.plan.graphdef, state.params), held_out)
    first, last = np.mean(losses[: len(train)]), np.mean(losses[-len(train):])
    assert last < 0.25 * first, (first, last)
    assert rate_before <= 0.1 and rate_after >= 0.5, (rate_before, rate_after)
