"""The multi-turn rollout as ONE compiled program: sample, call tools, see the crops, go on.

Every row of the batch sees S cache slots. Slots [0, P) hold its left-padded prompt, stored once
for the G rows sampled from it (`text.LayerCache`); after it, every sampled token takes the next
slot, and a tool call's result (template text + the crop's image tokens) takes a fixed chunk of
L slots — shorter results leave holes that `slot_valid` keeps closed. Each slot's token, 3-D M-RoPE position, validity, "sampled" bit, log-probability
and temperature are stored, so the learner replays exactly what the sampler saw.

Two steps, in nested `lax.while_loop`s:
- decode (inner loop): every GENERATING row forwards its newest token (one slot) and samples
  the next;
- inject (once per outer round, when calls are pending): every PENDING_TOOL row parses its
  call, crops the original image, runs the vision tower on the crop and forwards
  [close token | result chunk] (L + 1 slots) in one chunked prefill, then samples the first
  token after it.
An inject forwards L + 1 slots of every row, about the work of L + 1 decode steps, so a row
that closes a call waits (idle, up to L decode steps) for others to close theirs and one inject
serves them all: never more than twice the work of injecting at once (the ski-rental bound),
often a fraction of it. Rows progress independently (a row's draws depend on its key and token
count only, never on when its call was served); finished rows idle. Static shapes throughout.
The loop ends because every decode step samples a token of some row and every inject serves a
call of some row, both bounded per row.
"""

from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

from pixel_jax import sharding
from pixel_jax.models import layers
from pixel_jax.models.qwen2_5_vl import text
from pixel_jax.models.qwen2_5_vl.model import Qwen2_5_VL
from pixel_jax.models.qwen2_5_vl.rope_index import get_rope_index
from pixel_jax.processing import image as image_processing
from pixel_jax.rollout import chunks, sampling
from pixel_jax.rollout.tool_step import ToolTables, execute_crop, execute_frames
from pixel_jax.rollout.trajectory import Trajectory, row_axes
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import ToolId


class Phase(enum.IntEnum):
    GENERATING = 0
    PENDING_TOOL = 1
    DONE = 2


class FinishReason(enum.IntEnum):
    RUNNING = 0
    STOP = 1  # sampled a stop token (end of turn / end of text)
    LENGTH = 2  # response token budget or cache exhausted
    TOO_MANY_CALLS = 3  # a call beyond max_calls
    NO_ROOM_FOR_RESULT = 4  # a call whose result chunk no longer fits the cache
    TOO_MANY_IMAGES = 5  # a call whose images would take the response past max_images


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    """Static settings of one compiled rollout."""

    max_new_tokens: int  # sampled tokens per response, calls included
    stop_ids: tuple[int, ...]
    first_turn: sampling.SamplingParams = sampling.SamplingParams()
    later_turns: sampling.SamplingParams = sampling.SamplingParams()
    max_calls: int = 0
    tools: ToolTables | None = None
    max_images: int = 0  # images the calls of a response may show (the prompt's not counted); 0 = no limit

    def cache_slots(self, prompt_len: int) -> int:
        chunk = self.tools.chunk_len if self.tools is not None else 0
        return prompt_len + self.max_new_tokens + self.max_calls * chunk


@struct.dataclass
class RolloutState:
    cache: text.KVCache  # per layer the prompts' keys/values (one per group) and each row's own
    tokens: jax.Array  # [B, S] int32
    positions: jax.Array  # [3, B, S] int32
    slot_valid: jax.Array  # [B, S] bool
    sampled: jax.Array  # [B, S] bool: written by the policy (the loss mask)
    logprobs: jax.Array  # [B, S] float32 log π_old of sampled tokens
    temperature: jax.Array  # [B, S] float32 temperature each sampled token was drawn at
    cursor: jax.Array  # [B] slot of the newest token (sampled, not yet forwarded)
    next_position: jax.Array  # [B] M-RoPE text position of the next slot written
    n_sampled: jax.Array  # [B]
    budget: jax.Array  # [B] response tokens the row may sample (≤ RolloutSpec.max_new_tokens)
    phase: jax.Array  # [B] Phase
    finish: jax.Array  # [B] FinishReason
    n_calls: jax.Array  # [B]
    n_errors: jax.Array  # [B]
    call_errors: jax.Array  # [B, C] ToolError per call
    call_boxes: jax.Array  # [B, C, 4] requested box (target image's frame) per zoom call
    call_targets: jax.Array  # [B, C] 1-based target image per call
    call_frames: jax.Array  # [B, C, K] 1-based frames each select_frames call asked for (0 = none)
    images: jax.Array  # [B, C·K, h, w, 3] uint8 images shown after successful calls, in order
    source_boxes: jax.Array  # [B, I, 4] region of each shown image in original pixels
    shown_wh: jax.Array  # [B, I, 2]
    n_shown: jax.Array  # [B]
    forced: jax.Array  # [B, F] int32 teacher-forced response tokens (-1 = sample freely)
    row_keys: jax.Array  # [B] a PRNG key per row: draws do not depend on the batch's other rows
    waited: jax.Array  # [B] decode steps a PENDING_TOOL row has waited for its inject


_ROW_FIELDS = (
    "tokens", "slot_valid", "sampled", "logprobs", "temperature", "cursor", "next_position", "n_sampled", "budget",
    "phase", "finish", "n_calls", "n_errors", "call_errors", "call_boxes", "call_targets", "call_frames", "images",
    "source_boxes", "shown_wh", "n_shown", "forced", "row_keys", "waited",
)


def _set_at(array: jax.Array, slot: jax.Array, value: jax.Array, write: jax.Array) -> jax.Array:
    """array [B, S, ...] with value [B, ...] at array[b, slot[b]] where write[b]."""
    rows = jnp.arange(array.shape[0])
    return array.at[rows, jnp.where(write, slot, array.shape[1])].set(value, mode="drop")


# Batch entries whose first axis is not the row in the transformers convention (packed patches).
_PACKED = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def _check_one_image_per_row(batch: dict) -> None:
    rows = batch["input_ids"].shape[0]
    for name in _PACKED:
        value = batch.get(name)
        if value is not None and value.shape[0] != rows:
            raise ValueError(
                f"batch[{name!r}] has {value.shape[0]} entries for {rows} prompts: with group_size > 1 give one "
                "image (video) per row, as [B, P0, patch_dim] patches and [B, 3] grids"
            )


def _repeat_state(state: "RolloutState", group_size: int) -> "RolloutState":
    """Every row repeated group_size times, contiguously (positions carry rows on axis 1); the
    cache keeps one copy of each prompt for its group."""
    repeat = lambda x, axis=0: jnp.repeat(x, group_size, axis=axis)
    return state.replace(
        **{f: repeat(getattr(state, f)) for f in _ROW_FIELDS},
        positions=repeat(state.positions, axis=1),
        cache=text.repeat_rows(state.cache, group_size),
    )


def _encode(model, pixel_values, grid):
    """Prompt images/videos: [Σ patches, patch_dim] in reading order -> [Σ tokens, D]; or
    [B, P0, patch_dim], row b's own image (attended alone) -> [B, P0/m², D]."""
    if pixel_values is None:
        return None
    return model.encode_vision(pixel_values, grid)


def _ends_with(tokens: jax.Array, cursor: jax.Array, sequence: tuple[int, ...]) -> jax.Array:
    """[B] bool: tokens[b, cursor-k+1 .. cursor] == sequence."""
    k = len(sequence)
    idx = jnp.clip(cursor[:, None] - (k - 1) + jnp.arange(k)[None], 0, tokens.shape[1] - 1)
    return jnp.all(jnp.take_along_axis(tokens, idx, axis=1) == jnp.asarray(sequence)[None], axis=1)


def _rows_sharded(trajectory: Trajectory) -> Trajectory:
    """The trajectory with every array's rows on the batch mesh axes, so that no device holds all
    rows of the outputs (the crops alone are large); identity without a mesh."""
    def rows(x: jax.Array, row_axis: int) -> jax.Array:
        return sharding.constrain(x, sharding.rows_on_batch(x.ndim, row_axis))

    return jax.tree.map(rows, trajectory, row_axes(trajectory))


class Engine:
    """Compiles and runs rollouts of one model graph under one `RolloutSpec`."""

    def __init__(self, model: Qwen2_5_VL, spec: RolloutSpec, mesh: Mesh | None = None, rules=None):
        """With a mesh, activations (the KV cache included) follow the logical sharding rules:
        rows over the data axes, heads over `tensor` (see `pixel_jax.sharding`)."""
        if spec.max_calls and spec.tools is None:
            raise ValueError("RolloutSpec.max_calls > 0 needs tool tables (RolloutSpec.tools)")
        self.spec = spec
        self.config = model.config
        self._placeholders = np.array([model.config.image_token_id, model.config.video_token_id,
                                       model.config.vision_start_token_id, model.config.vision_end_token_id])
        self._sharding = (mesh, sharding.make_rules() if rules is None else rules) if mesh is not None else None
        self._run = jax.jit(self._rollout, static_argnums=3)

    def __call__(self, model: Qwen2_5_VL, batch: dict, rng: jax.Array, group_size: int = 1) -> Trajectory:
        """batch: input_ids [B, P] (left-padded), attention_mask [B, P]; optional pixel_values
        [Σ patches, patch_dim] + image_grid_thw [I, 3] of the prompt images in reading order
        (or [B, P0, patch_dim] + [B, 3], one image per row); with tools:
        original [B, Hmax, Wmax, 3] uint8, original_wh [B, 2], view_wh [B, 2] (image 1's shown size);
        videos: pixel_values_videos + video_grid_thw (+ second_per_grid_ts) in the prompt, and for
        select_frames frames [B, F, h, w, 3] uint8 at the shown frame size with n_frames [B].
        Optional row_ids [B]: the key of row b is fold_in(rng, row_ids[b]) (default: b).
        Optional forced_tokens [B, F] int32: teacher-forced response tokens (the n-th token the
        policy writes is forced_tokens[b, n] unless -1), scored like sampled ones — for replaying
        or scoring given responses through the same program.
        Optional max_new_tokens [B] int32: row b's response token budget, clipped to
        [1, spec.max_new_tokens] (default: spec.max_new_tokens for every row).
        group_size G: each prompt is prefilled once and sampled G times; rows b·G … b·G + G − 1 of
        the trajectory are the group of prompt b (per-row image arrays must then be [B, P0, patch_dim]
        / [B, 3]). Per-row entries may also be given per sample ([B·G, ...], e.g. forced_tokens).
        """
        if group_size > 1:
            _check_one_image_per_row(batch)
        # The model crosses the jit boundary as a pytree of its arrays: ~0.5 ms a call, against
        # ~5 ms for nnx.state's graph traversal (a sampler benchmark call takes ~350 ms).
        return self._run(model, batch, rng, group_size)

    # ----------------------------------------------------------------- prefill
    def _rollout(self, model: Qwen2_5_VL, batch, rng, group_size: int) -> Trajectory:
        if self._sharding is None:
            return self._rollout_in_context(model, batch, rng, group_size)
        with sharding.activation_rules(*self._sharding):
            return self._rollout_in_context(model, batch, rng, group_size)

    def _rollout_in_context(self, model: Qwen2_5_VL, batch, rng, group_size: int) -> Trajectory:
        state, logits = self._prefill(model, batch, rng)
        if group_size > 1:  # the prompt is prefilled once; its G samples share its cache slots
            rows = logits.shape[0] * group_size  # entries already given per sample (e.g. forced_tokens) stay
            state, logits = _repeat_state(state, group_size), jnp.repeat(logits, group_size, axis=0)
            batch = {k: v if v.shape[0] == rows else jnp.repeat(v, group_size, axis=0)
                     for k, v in batch.items() if k not in _PACKED}
            row_ids = batch.pop("row_ids", None)
            member = jnp.tile(jnp.arange(group_size), rows // group_size)
            keys = jnp.arange(rows) if row_ids is None else row_ids * group_size + member
            state = state.replace(row_keys=jax.vmap(lambda i: jax.random.fold_in(rng, i))(keys))
        if "forced_tokens" in batch:
            state = state.replace(forced=batch["forced_tokens"].astype(jnp.int32))
        if "max_new_tokens" in batch:
            budget = jnp.clip(batch["max_new_tokens"], 1, self.spec.max_new_tokens)
            state = state.replace(budget=budget.astype(jnp.int32))
        state = self._append_sample(state, logits, state.phase == Phase.GENERATING,
                                    advance=jnp.zeros(logits.shape[:1], jnp.int32))

        # A decode step reads every weight for one token per row: with few rows on CPU, through
        # kernels laid out as panels, which stream ~2x faster (`layers.PANEL_WIDTH`).
        rows = state.tokens.shape[0]
        decoder = model.with_decode_panels() if layers.panels_pay_off(rows, model.language_model) else model

        def decode_until_inject(state):
            return jax.lax.while_loop(self._keeps_decoding, lambda s: self._decode(decoder, s), state)

        def round_(state):  # serve the pending calls (none in the first round), then decode on
            pending = jnp.any(state.phase == Phase.PENDING_TOOL)
            state = jax.lax.cond(pending, lambda s: self._inject(model, batch, s), lambda s: s, state)
            return decode_until_inject(state)

        if self.spec.tools is None:
            state = decode_until_inject(state)
        else:
            state = jax.lax.while_loop(lambda s: jnp.any(s.phase != Phase.DONE), round_, state)
        trajectory = Trajectory.from_state(state, prompt_len=batch["input_ids"].shape[1])
        return _rows_sharded(trajectory)

    def _keeps_decoding(self, state: RolloutState) -> jax.Array:
        """Another decode step: some row is generating and no pending call has waited L steps."""
        generating = jnp.any(state.phase == Phase.GENERATING)
        if self.spec.tools is None:
            return generating
        overdue = (state.phase == Phase.PENDING_TOOL) & (state.waited >= self.spec.tools.chunk_len)
        return generating & ~jnp.any(overdue)

    def _prefill(self, model, batch, rng) -> tuple[RolloutState, jax.Array]:
        """The prompts through the model: the state before the first sample, and the logits [B, V]."""
        cfg, spec = self.config, self.spec
        ids, mask = batch["input_ids"].astype(jnp.int32), batch["attention_mask"].astype(bool)
        b, p = ids.shape
        s = spec.cache_slots(p)
        grid, video_grid = batch.get("image_grid_thw"), batch.get("video_grid_thw")
        image_embeds = _encode(model, batch.get("pixel_values"), grid)
        video_embeds = _encode(model, batch.get("pixel_values_videos"), video_grid)
        positions, deltas = get_rope_index(cfg, ids, mask, grid, video_grid, batch.get("second_per_grid_ts"))
        hidden, prompt_kv = model.decode(model.embed(ids, image_embeds, video_embeds), positions,
                                         layers.CausalMask(mask))
        cache = text.start_cache(prompt_kv, own_slots=s - p)
        logits = model.logits(hidden[:, -1:])[:, 0]  # [B, V] (left padding: the last slot is real)

        pad = lambda x, value: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, s - p)], constant_values=value)
        c, i = max(spec.max_calls, 1), spec.max_calls + 1
        per_call, (h, w) = (spec.tools.images_per_call, spec.tools.image_hw) if spec.tools else (1, (1, 1))
        view_wh = batch.get("view_wh", jnp.ones((b, 2), jnp.int32)).astype(jnp.float32)
        original_wh = batch.get("original_wh", jnp.ones((b, 2), jnp.int32)).astype(jnp.float32)
        state = RolloutState(
            cache=cache, tokens=pad(ids * mask, 0), positions=pad(positions, 0), slot_valid=pad(mask, False),
            sampled=jnp.zeros((b, s), bool), logprobs=jnp.zeros((b, s), jnp.float32),
            temperature=jnp.zeros((b, s), jnp.float32), cursor=jnp.full((b,), p - 1, jnp.int32),
            next_position=(deltas[:, 0] + mask.sum(1)).astype(jnp.int32), n_sampled=jnp.zeros((b,), jnp.int32),
            budget=jnp.full((b,), spec.max_new_tokens, jnp.int32),  # set per sample once the groups are formed
            phase=jnp.full((b,), Phase.GENERATING, jnp.int32),
            finish=jnp.zeros((b,), jnp.int32), n_calls=jnp.zeros((b,), jnp.int32),
            n_errors=jnp.zeros((b,), jnp.int32), call_errors=jnp.zeros((b, c), jnp.int32),
            call_boxes=jnp.zeros((b, c, 4), jnp.float32), call_targets=jnp.zeros((b, c), jnp.int32),
            call_frames=jnp.zeros((b, c, per_call), jnp.int32), images=jnp.zeros((b, c * per_call, h, w, 3), jnp.uint8),
            source_boxes=jnp.zeros((b, i, 4), jnp.float32).at[:, 0, 2:].set(original_wh),
            shown_wh=jnp.ones((b, i, 2), jnp.float32).at[:, 0].set(view_wh), n_shown=jnp.ones((b,), jnp.int32),
            forced=jnp.full((b, 1), -1, jnp.int32),  # set per sample once the groups are formed
            row_keys=jax.vmap(lambda i: jax.random.fold_in(rng, i))(batch.get("row_ids", jnp.arange(b))),
            waited=jnp.zeros((b,), jnp.int32),
        )
        return state, logits

    # --------------------------------------------------------------- sampling
    def _append_sample(self, state: RolloutState, logits, rows, advance) -> RolloutState:
        """Samples a token from logits [B, V] for `rows`, writes it after the cursor + `advance`
        slots, and moves those rows to their next phase."""
        spec = self.spec
        later = state.n_calls > 0
        temperature = jnp.where(later, spec.later_turns.temperature, spec.first_turn.temperature)
        # the policy never writes a vision placeholder: the replay would read it as an image slot
        choosable = logits.at[:, self._placeholders].set(-jnp.inf)  # [B, V]
        if spec.first_turn.temperature == spec.later_turns.temperature == 0:  # greedy: no top-k / top-p work
            token = sampling.greedy_tokens(choosable)
        else:
            keys = jax.vmap(jax.random.fold_in)(state.row_keys, state.n_sampled)  # [B]
            top_p = jnp.where(later, spec.later_turns.top_p, spec.first_turn.top_p)
            top_k = jnp.where(later, spec.later_turns.top_k, spec.first_turn.top_k)
            token = sampling.sample(choosable, keys, temperature, top_k, top_p,
                                    max_top_k=max(spec.first_turn.top_k, spec.later_turns.top_k))
        forced = jnp.take_along_axis(state.forced, jnp.minimum(state.n_sampled, state.forced.shape[1] - 1)[:, None],
                                     axis=1)[:, 0]
        forced = jnp.where(state.n_sampled < state.forced.shape[1], forced, -1)
        token = jnp.where(forced >= 0, forced, token)
        logprob = sampling.token_logprob(logits, token, temperature)  # of the token written, forced or drawn
        slot = state.cursor + advance + 1
        position = state.next_position
        state = state.replace(
            tokens=_set_at(state.tokens, slot, token, rows),
            positions=jax.vmap(lambda pos: _set_at(pos, slot, position, rows))(state.positions),
            slot_valid=_set_at(state.slot_valid, slot, True, rows),
            sampled=_set_at(state.sampled, slot, True, rows),
            logprobs=_set_at(state.logprobs, slot, logprob, rows),
            temperature=_set_at(state.temperature, slot, sampling.effective_temperature(temperature), rows),
            cursor=jnp.where(rows, slot, state.cursor),
            next_position=jnp.where(rows, position + 1, state.next_position),
            n_sampled=state.n_sampled + rows,
        )
        return self._next_phase(state, token, rows)

    def _next_phase(self, state: RolloutState, token, rows) -> RolloutState:
        spec, s = self.spec, state.tokens.shape[1]
        stop = jnp.isin(token, jnp.asarray(spec.stop_ids, jnp.int32)) if spec.stop_ids else jnp.zeros_like(rows)
        out_of_tokens = (state.n_sampled >= state.budget) | (state.cursor + 1 >= s)
        finish = jnp.where(stop, FinishReason.STOP, jnp.where(out_of_tokens, FinishReason.LENGTH, FinishReason.RUNNING))
        phase = jnp.where(finish != FinishReason.RUNNING, Phase.DONE, Phase.GENERATING)
        if spec.tools is not None:
            tools = spec.tools
            closed = _ends_with(state.tokens, state.cursor, tools.close_ids) & ~stop
            no_room = state.cursor + 1 + tools.chunk_len >= s
            too_many = state.n_calls >= spec.max_calls
            finish = jnp.where(closed & too_many, FinishReason.TOO_MANY_CALLS,
                               jnp.where(closed & no_room, FinishReason.NO_ROOM_FOR_RESULT, finish))
            phase = jnp.where(closed & ~too_many & ~no_room & ~out_of_tokens, Phase.PENDING_TOOL,
                              jnp.where(finish != FinishReason.RUNNING, Phase.DONE, Phase.GENERATING))
        return state.replace(
            phase=jnp.where(rows, phase, state.phase),
            finish=jnp.where(rows, finish, state.finish),
        )

    # ------------------------------------------------------------------ decode
    def _decode(self, model, state: RolloutState) -> RolloutState:
        rows = state.phase == Phase.GENERATING
        b, s = state.tokens.shape
        take = lambda x: jnp.take_along_axis(x, state.cursor[:, None], axis=-1)  # [..., B, 1]
        hidden, cache = model.decode(
            model.embed(take(state.tokens)), jax.vmap(take)(state.positions), state.slot_valid[:, None, :],
            state.cache, jnp.where(rows, state.cursor, s),
        )
        state = state.replace(cache=cache, waited=state.waited + (state.phase == Phase.PENDING_TOOL))
        return self._append_sample(state, model.logits(hidden)[:, 0], rows, advance=jnp.zeros((b,), jnp.int32))

    # ------------------------------------------------------------------ inject
    def _inject(self, model, batch, state: RolloutState) -> RolloutState:
        tools, cfg = self.spec.tools, self.config
        pending = state.phase == Phase.PENDING_TOOL
        b, s = state.tokens.shape
        length, per_call = tools.chunk_len, tools.images_per_call
        h, w = tools.image_hw

        # 1. parse and execute every pending row's call (the parser reads the window ending at it).
        start = jnp.maximum(state.cursor + 1 - tools.window, 0)
        window = jax.vmap(lambda t, i: jax.lax.dynamic_slice(t, (i,), (tools.window,)))(
            jnp.pad(state.tokens, ((0, 0), (0, tools.window))), start)
        parsed = tools.parse.parse_batch(window, state.cursor + 1 - start)
        if tools.tool == ToolId.SELECT_FRAMES:
            result = jax.vmap(lambda *a: execute_frames(tools, *a))(parsed, batch["frames"], batch["n_frames"])
            images, count = result.images, result.count  # [B, K, h, w, 3], [B]
        else:
            result = jax.vmap(lambda *a: execute_crop(tools, *a))(
                parsed, batch["original"], batch["original_wh"], state.source_boxes, state.shown_wh, state.n_shown)
            images, count = result.pixels[:, None], (result.error == ToolError.OK).astype(jnp.int32)
        succeeded = pending & (result.error == ToolError.OK)
        too_many_images = succeeded & (state.n_shown - 1 + count > (self.spec.max_images or state.images.shape[1]))
        rows, ok = pending & ~too_many_images, succeeded & ~too_many_images  # the calls served; those that succeed
        count = jnp.where(ok, count, 0)

        # 2. the vision tower on every new image (those of rows without one are never placed).
        patches = jax.vmap(image_processing.to_pixel_values)(images.reshape(b * per_call, 1, h, w, 3).astype(jnp.float32))
        grid = np.tile(np.array([[1, h // 14, w // 14]]), (b * per_call, 1))  # static: attention image by image
        image_embeds = model.encode_vision(patches.reshape(-1, patches.shape[-1]), grid).reshape(b, -1, cfg.hidden_size)

        # 3. the chunk [close token | result tokens], its validity and positions.
        call = jnp.minimum(state.n_calls, self.spec.max_calls - 1)  # 0-based index of this call
        shown = jnp.minimum(state.n_shown - 1, tools.chunk_tokens.shape[1] - 1)
        outcome = jnp.where(ok, chunks.success_outcome(count), jnp.where(rows, result.error, ToolError.OK))
        chunk = jnp.asarray(tools.chunk_tokens)[call, shown, outcome]  # [B, L]
        chunk_length = jnp.asarray(tools.chunk_length)[call, shown, outcome]  # [B]
        chunk_valid = jnp.arange(length)[None] < chunk_length[:, None]
        relative = jnp.asarray(tools.chunk_positions)[call, shown, outcome]  # [B, 3, L]
        chunk_pos = state.next_position[None, :, None] + relative.transpose(1, 0, 2)  # [3, B, L]
        close_token = jnp.take_along_axis(state.tokens, state.cursor[:, None], axis=1)
        close_pos = jax.vmap(lambda pos: jnp.take_along_axis(pos, state.cursor[:, None], axis=1))(state.positions)
        ids = jnp.concatenate([close_token, chunk], axis=1)  # [B, 1 + L]
        positions = jnp.concatenate([close_pos, chunk_pos], axis=2)  # [3, B, 1 + L]
        slots = state.cursor[:, None] + jnp.arange(length + 1)[None]  # [B, 1 + L]
        written = rows[:, None] & jnp.concatenate([jnp.ones((b, 1), bool), chunk_valid], axis=1)
        write_rows = jnp.arange(b)[:, None]
        drop = lambda x: jnp.where(rows[:, None], x, s)
        slot_valid = state.slot_valid.at[write_rows, drop(slots)].set(written, mode="drop")
        causal = jnp.arange(s)[None, None, :] <= slots[:, :, None]  # [B, 1 + L, S]
        hidden, cache = model.decode(model.embed(ids, image_embeds), positions, slot_valid[:, None, :] & causal,
                                     state.cache, jnp.where(rows, state.cursor, s))
        last = chunk_length  # index in [close | chunk] of the last valid chunk token
        logits = model.logits(jnp.take_along_axis(hidden, last[:, None, None], axis=1))[:, 0]

        # 4. record the chunk, the call and the images, then sample the first token after it.
        first_image = state.n_shown - 1  # response images stored so far
        image_slots = first_image[:, None] + jnp.arange(per_call)[None]  # [B, K]
        keep = ok[:, None] & (jnp.arange(per_call)[None] < count[:, None])
        state = state.replace(
            cache=cache, waited=jnp.where(rows, 0, state.waited), slot_valid=slot_valid,
            tokens=state.tokens.at[write_rows, drop(slots[:, 1:])].set(chunk, mode="drop"),
            positions=state.positions.at[:, write_rows, drop(slots[:, 1:])].set(chunk_pos, mode="drop"),
            next_position=jnp.where(rows, state.next_position + jnp.asarray(tools.chunk_advance)[call, shown, outcome],
                                    state.next_position),
            n_calls=state.n_calls + rows, n_errors=state.n_errors + (rows & ~ok),
            call_errors=_set_at(state.call_errors, call, result.error, rows),
            call_targets=_set_at(state.call_targets, call, parsed.target_image, rows),
            images=state.images.at[write_rows, jnp.where(keep, image_slots, state.images.shape[1])].set(
                images, mode="drop"),
            n_shown=state.n_shown + count,
        )
        state = state.replace(  # a call past max_images ends its response unserved
            phase=jnp.where(too_many_images, Phase.DONE, state.phase),
            finish=jnp.where(too_many_images, FinishReason.TOO_MANY_IMAGES, state.finish),
        )
        if tools.tool == ToolId.SELECT_FRAMES:
            return self._append_sample(state.replace(call_frames=_set_at(state.call_frames, call, result.frames, rows)),
                                       logits, rows, advance=jnp.full((b,), length, jnp.int32))
        new_image = jnp.minimum(state.n_shown - 1, state.source_boxes.shape[1] - 1)
        state = state.replace(
            call_boxes=_set_at(state.call_boxes, call, result.box, rows),
            source_boxes=_set_at(state.source_boxes, new_image, result.source_box, ok),
            shown_wh=_set_at(state.shown_wh, new_image, jnp.array([w, h], jnp.float32), ok),
        )
        return self._append_sample(state, logits, rows, advance=jnp.full((b,), length, jnp.int32))
