"""Multi-turn rollouts/s: pixel_jax's one-program engine vs a host loop written like the public code.

Same weights on both sides: a Qwen2.5-VL config with 4 layers, hidden 256, 8 heads, 2 KV heads on
the packaged tokenizer's ids (`Qwen2_5_VLConfig.tiny` overrides, vocabulary padded to 2,048),
initialised by transformers and read by pixel_jax (`from_pretrained`). The task: `--prompts`
questions of the synthetic task (`pixel_jax.data.synthetic`: "What is written on the small white
sign?"), each shown as a `--view` W×H image of a `--original` full-resolution canvas; G = `--group`
responses per prompt; one zoom per response in the `hermes` protocol (Pixel Reasoner's
`crop_image`), crops shown at the `--crop` grid.

Equal work on random weights. Both sides teacher-force the same response opening,
"Let me zoom in on the sign.\\n<tool_call>\\n{crop_image call}\\n</tool_call>" — a box around the
sign, shifted per sample so the rows crop different regions — and then decode up to
`--free-tokens` tokens greedily. Forcing only replaces the argmax: the model runs one forward pass
per token either way. A response ends at <|im_end|> or <|endoftext|>, at a second call, or at its
token budget (forced + free); the script checks that every row of both sides made exactly one
successful zoom, and prints how many response tokens each side wrote.

- pixel_jax: `rollout.engine.Engine`, the whole batch in one compiled program: the forced tokens go
  in as `forced_tokens`; the call is parsed from token ids on device, the original (kept on
  device) cropped, patchified and encoded, the result's tokens appended to the KV cache, and
  decoding goes on.
- host loop, the way Pixel Reasoner's experience maker and verl's multi-turn rollouts work: every
  turn, each unfinished row's whole conversation is rendered with the chat template and
  re-tokenised, all its images pre-processed again (`preprocess_images`, the HF processor path),
  and transformers `generate` runs on the batch from scratch until each row closes a call or
  stops; a closed call is parsed in Python (the protocol's host parser), its box cropped from the
  original with PIL (`crop_image_normalized`: normalised box padded by 0.1 and clamped), resized
  to the crop grid, and appended as a user turn ("Here is the cropped image ..."). Forcing is a
  `LogitsProcessor`.

Each side is timed from the prompts (questions and images) to finished responses, prompt
tokenisation and pre-processing included; the fastest of `--repeats` rounds, the two sides taking
turns within a round. rollouts/s = responses finished per second (prompts × G); tokens/s = response
tokens (forced + free) per second. transformers runs with `--torch-threads` intra-op threads and
XLA's dot kernels with `--xla-threads`, 1 each by default: on a shared 2-core machine both
libraries' worker threads spin against the other processes' (measured under load: 2 threads made
the host loop 1.7–4x slower and `benchmarks/sampler.py`'s reference 10x slower, and pixel_jax ~2x
slower, `threads.py`), so 1 is each side's fastest setting there; pass 2 on an idle machine.

    python benchmarks/rollout.py [--prompts 2] [--group 8] [--view 224x168] [--original 896x672]
                                 [--crop 224x224] [--free-tokens 16] [--repeats 3] [--torch-threads 1]
                                 [--xla-threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import torch
from threads import add_thread_flags, xla_kernel_threads
from timing import best_of_interleaved
from transformers import LogitsProcessor, LogitsProcessorList
from transformers import Qwen2_5_VLConfig as HFConfig
from transformers import Qwen2_5_VLForConditionalGeneration

from pixel_jax.data import synthetic
from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.processing import chat
from pixel_jax.processing import image as image_processing
from pixel_jax.processing.tokenizer import Tokenizer, load_tokenizer
from pixel_jax.rollout import engine as engine_lib
from pixel_jax.rollout import sampling
from pixel_jax.rollout.tool_step import ToolTables
from pixel_jax.tools.crop import PIXEL_REASONER_PADDING
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import PROTOCOLS, ToolProtocol
from pixel_jax.tools.protocols.base import USER_TURN, VISION_START

PROTOCOL = "hermes"
MAX_CALLS = 1  # one zoom per response
LEAD_TEXT = "Let me zoom in on the sign.\n"
BOX_HALF_SIDE = 0.1  # the call's box: the sign's centre ± this, in normalised image coordinates
BOX_SHIFT = 0.05  # largest per-sample shift of that box
GREEDY = sampling.SamplingParams(temperature=0.0)


def benchmark_config() -> qvl.Qwen2_5_VLConfig:
    """4 layers, hidden 256, 8 heads (head_dim 32), 2 KV heads; a 2-block ViT; packaged token ids."""
    vision = qvl.VisionConfig(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                              fullatt_block_indexes=(1,), out_hidden_size=256)
    return qvl.Qwen2_5_VLConfig.tiny(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                     num_attention_heads=8, num_key_value_heads=2, mrope_section=(4, 6, 6),
                                     vision=vision)


def build_models(config: qvl.Qwen2_5_VLConfig, seed: int):
    """(pixel_jax model, transformers model) with the same random weights. transformers draws them
    (torch's initialisers start instantly, jax.random compiles once per parameter shape: ~15 s on a
    shared 2-core machine) and pixel_jax reads the folder it writes."""
    torch.manual_seed(seed)
    hf = Qwen2_5_VLForConditionalGeneration(HFConfig(**config.to_hf_config())).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = qvl.from_pretrained(folder)
    return ours, hf


# ------------------------------------------------------------------------------ the task


@dataclasses.dataclass(frozen=True)
class Prompt:
    question: str
    original: np.ndarray  # [H, W, 3] uint8, the full-resolution canvas
    view: np.ndarray  # [h, w, 3] uint8, the image the model is shown
    sign_centre: tuple[float, float]  # (x, y) of the sign, normalised to the image


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """What one side produced, per response (prompt-major rows)."""

    zooms: np.ndarray  # [B] successful zooms
    tokens: np.ndarray  # [B] response tokens written by the policy (forced + free)


def make_prompts(count: int, view_wh: tuple[int, int], original_wh: tuple[int, int]) -> list[Prompt]:
    """`count` sign-reading examples of the synthetic task, canvases of original_wh seen at view_wh."""
    factor = original_wh[0] // view_wh[0]
    if factor < 1 or (view_wh[0] * factor, view_wh[1] * factor) != tuple(original_wh):
        raise ValueError(f"--original {original_wh} must be --view {view_wh} times a positive integer")
    config = synthetic.SyntheticConfig(view_sizes=(view_wh[::-1],), downsample_factors=(factor,),
                                       kind_weights={"text": 1.0})
    prompts = []
    for index in range(count):
        example = synthetic.generate(config, "eval", index)
        x1, y1, x2, y2 = example.target_boxes[0]
        view = np.asarray(PIL.Image.fromarray(example.image).resize(view_wh, PIL.Image.BICUBIC))
        centre = ((x1 + x2) / 2 / original_wh[0], (y1 + y2) / 2 / original_wh[1])
        prompts.append(Prompt(example.question, example.image, view, centre))
    return prompts


def zoom_responses(protocol: ToolProtocol, prompts: list[Prompt], group: int, rng: np.random.Generator) -> list[str]:
    """The forced opening of every response: a sentence and one crop_image call around the sign."""
    responses = []
    for prompt in prompts:
        for _ in range(group):
            centre = np.asarray(prompt.sign_centre) + rng.uniform(-BOX_SHIFT, BOX_SHIFT, 2)  # [2]
            box = np.clip(np.concatenate([centre - BOX_HALF_SIDE, centre + BOX_HALF_SIDE]), 0.01, 0.99)  # [4]
            call = {"name": "crop_image", "arguments": {"bbox_2d": np.round(box, 2).tolist(), "target_image": 1}}
            responses.append(f"{LEAD_TEXT}{protocol.call_open}\n{json.dumps(call)}\n{protocol.call_close}")
    return responses


def forced_token_array(forced: list[list[int]]) -> np.ndarray:
    """Per-row forced tokens → [B, F] int64, -1 after a row's last forced token (free decoding)."""
    width = max(map(len, forced))
    return np.array([tokens + [-1] * (width - len(tokens)) for tokens in forced], np.int64)


def image_wh(image: np.ndarray) -> tuple[int, int]:
    return image.shape[1], image.shape[0]


def stop_ids(tok: Tokenizer) -> tuple[int, ...]:
    return tok.special.im_end, tok.special.endoftext


# ------------------------------------------------------------------------------ pixel_jax


def build_engine(model: qvl.Qwen2_5_VL, tok: Tokenizer, protocol: ToolProtocol, crop_hw: tuple[int, int],
                 max_new_tokens: int) -> engine_lib.Engine:
    tables = ToolTables.build(protocol, tok, model.config, crop_hw=crop_hw, max_calls=MAX_CALLS)
    spec = engine_lib.RolloutSpec(max_new_tokens=max_new_tokens, stop_ids=stop_ids(tok), first_turn=GREEDY,
                                  later_turns=GREEDY, max_calls=MAX_CALLS, tools=tables)
    return engine_lib.Engine(model, spec)


def engine_batch(tok: Tokenizer, protocol: ToolProtocol, prompts: list[Prompt], group: int,
                 forced: np.ndarray) -> dict[str, np.ndarray]:
    """The engine's input: each prompt tokenised and pre-processed once (the engine prefills it once
    and samples its G rows, `group_size`); the forced responses are given per sample."""
    ids, pixel_values, grids = [], [], []
    for prompt in prompts:
        values, grid = image_processing.preprocess_images([prompt.view])  # [P0, patch_dim], [1, 3]
        messages = protocol.prompt_messages(prompt.question, image_wh(prompt.view))
        ids += [chat.encode_conversation(tok, messages, image_grid_thw=grid)["input_ids"]]
        pixel_values.append(values)
        grids.append(grid[0])
    input_ids, attention_mask = chat.left_pad_batch(ids, tok.special.endoftext)  # [prompts, P] each
    return dict(
        input_ids=input_ids, attention_mask=attention_mask, forced_tokens=forced.astype(np.int32),  # [B, F]
        pixel_values=np.stack(pixel_values),  # [prompts, P0, patch_dim]
        image_grid_thw=np.stack(grids),  # [prompts, 3]
        original=np.stack([p.original for p in prompts]),  # [prompts, H, W, 3]
        original_wh=np.stack([image_wh(p.original) for p in prompts]),  # [prompts, 2]
        view_wh=np.stack([image_wh(p.view) for p in prompts]),  # [prompts, 2]
    )


def engine_rollouts(engine: engine_lib.Engine, model: qvl.Qwen2_5_VL, tok: Tokenizer, protocol: ToolProtocol,
                    prompts: list[Prompt], group: int, forced: np.ndarray) -> Rollouts:
    batch = engine_batch(tok, protocol, prompts, group, forced)
    trajectory = engine(model, {name: jnp.asarray(value) for name, value in batch.items()}, jax.random.key(0),
                        group_size=group)
    calls, errors, lengths = jax.device_get((trajectory.n_calls, trajectory.n_errors, trajectory.response_length))
    return Rollouts(zooms=calls - errors, tokens=lengths)


# ------------------------------------------------------------------------------ host loop


class ForcedTokens(LogitsProcessor):
    """Teacher forcing inside `generate`: row b's n-th new token is forced[b, n] unless -1.

    The forward pass still runs for every token; only the choice among the logits is replaced.
    """

    def __init__(self, forced: torch.Tensor, prompt_len: int):
        self.forced = forced  # [B, F] int64
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_len
        if step >= self.forced.shape[1]:
            return scores
        token = self.forced[:, step]  # [B]
        only_token = torch.full_like(scores, -torch.inf).scatter_(1, token.clamp(min=0)[:, None], 0.0)  # [B, V]
        return torch.where((token >= 0)[:, None], only_token, scores)


@dataclasses.dataclass
class HostRow:
    """One response of the host loop, kept as the public code keeps it: messages and images."""

    prompt: Prompt
    forced: list[int]
    messages: list[dict]
    images: list[np.ndarray]  # the conversation's images in order, uint8 [h, w, 3]
    response: list[int] = dataclasses.field(default_factory=list)  # tokens the policy wrote
    zooms: int = 0
    done: bool = False


def until_stop(tokens: list[int], stops: tuple[int, ...]) -> list[int]:
    """tokens up to and including the first stop token (generate pads finished rows after it)."""
    ends = [index for index, token in enumerate(tokens) if token in stops]
    return tokens[: ends[0] + 1] if ends else tokens


def generate_turn(hf, tok: Tokenizer, rows: list[HostRow], max_new_tokens: int,
                  stops: tuple[int, ...]) -> list[list[int]]:
    """One `generate` from scratch over the rows' whole conversations (re-rendered, re-tokenised,
    images pre-processed again); each row's new tokens up to its first stop or its budget."""
    ids, types, pixel_values, grids = [], [], [], []
    for row in rows:
        values, grid = image_processing.preprocess_images(row.images)  # [Σ patches, patch_dim], [I, 3]
        encoded = chat.encode_conversation(tok, row.messages, image_grid_thw=grid)
        ids.append(encoded["input_ids"])
        types.append(encoded["mm_token_type_ids"])
        pixel_values.append(values)
        grids.append(grid)
    input_ids, attention_mask = chat.left_pad_batch(ids, tok.special.endoftext)  # [B, P] each
    mm_token_type_ids, _ = chat.left_pad_batch(types, chat.TEXT_TOKEN)  # [B, P]
    budgets = [max_new_tokens - len(row.response) for row in rows]
    forced = forced_token_array([row.forced[len(row.response):] or [-1] for row in rows])  # [B, F]
    with torch.inference_mode():
        output = hf.generate(
            input_ids=torch.from_numpy(input_ids).long(), attention_mask=torch.from_numpy(attention_mask),
            mm_token_type_ids=torch.from_numpy(mm_token_type_ids).long(),
            pixel_values=torch.from_numpy(np.concatenate(pixel_values)),  # [Σ patches, patch_dim]
            image_grid_thw=torch.from_numpy(np.concatenate(grids)),  # [Σ images, 3]
            max_new_tokens=max(budgets), do_sample=False, eos_token_id=list(stops),
            pad_token_id=tok.special.endoftext,
            logits_processor=LogitsProcessorList([ForcedTokens(torch.from_numpy(forced), input_ids.shape[1])]),
        )
    new = output[:, input_ids.shape[1]:].tolist()  # [B, ≤ max(budgets)]
    return [until_stop(tokens[:budget], stops) for tokens, budget in zip(new, budgets)]


def host_zoom(protocol: ToolProtocol, turn_text: str, prompt: Prompt, crop_hw: tuple[int, int]) -> np.ndarray:
    """The call that `turn_text` ends with, parsed in Python, cropped from the original with PIL
    (normalised box padded by PIXEL_REASONER_PADDING, clamped) and resized to the crop grid."""
    call = protocol.parse_host(turn_text, max_chars=len(turn_text))
    if call.error != ToolError.OK or call.target_image != 1 or max(call.numbers) >= 1:
        raise RuntimeError(f"the host loop crops image 1 with normalised boxes, got {call}")
    size = np.array(image_wh(prompt.original) * 2)  # [4] (W, H, W, H)
    padding = PIXEL_REASONER_PADDING * np.array([-1, -1, 1, 1])  # [4]
    region = np.clip(np.array(call.numbers) + padding, 0.0, 1.0) * size  # [4] original pixels
    crop = PIL.Image.fromarray(prompt.original).crop(tuple(region.tolist()))
    return np.asarray(crop.resize(crop_hw[::-1], PIL.Image.BILINEAR))


def crop_turn_text(protocol: ToolProtocol, crop_hw: tuple[int, int], call_index: int) -> str:
    """The text of the user turn showing a crop: the protocol's injected text without the chat
    markers that the chat template writes itself."""
    first_segment = protocol.crop_result(crop_hw[::-1], call_index).segments[0]
    return first_segment.removeprefix(USER_TURN).removesuffix(VISION_START)


def host_rollouts(hf, tok: Tokenizer, protocol: ToolProtocol, prompts: list[Prompt], group: int,
                  forced: list[list[int]], max_new_tokens: int, crop_hw: tuple[int, int]) -> Rollouts:
    close = protocol.call_close_ids(tok)
    if len(close) != 1:
        raise ValueError(f"the host loop stops generate at a one-token call close marker, got {close}")
    stops = (*close, *stop_ids(tok))
    rows = [
        HostRow(prompt, forced[index * group + sample],
                protocol.prompt_messages(prompt.question, image_wh(prompt.view)), [prompt.view])
        for index, prompt in enumerate(prompts) for sample in range(group)
    ]
    while active := [row for row in rows if not row.done]:
        for row, new in zip(active, generate_turn(hf, tok, active, max_new_tokens, stops)):
            row.response += new
            if new[-1] not in close or row.zooms == MAX_CALLS or len(row.response) >= max_new_tokens:
                row.done = True
                continue
            text = tok.decode(new)
            row.images.append(host_zoom(protocol, text, row.prompt, crop_hw))
            row.zooms += 1
            row.messages += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": [{"type": "text", "text": crop_turn_text(protocol, crop_hw, row.zooms)},
                                             {"type": "image"}]},
            ]
    return Rollouts(zooms=np.array([row.zooms for row in rows]),
                    tokens=np.array([len(row.response) for row in rows]))


# ------------------------------------------------------------------------------ main


def size_arg(text: str) -> tuple[int, int]:
    """'224x168' → (224, 168)."""
    try:
        width, height = (int(value) for value in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 224x168, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return width, height


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=8, help="G responses per prompt")
    parser.add_argument("--view", type=size_arg, default=(224, 168), help="WxH the model sees")
    parser.add_argument("--original", type=size_arg, default=(896, 672), help="WxH of the full-resolution image")
    parser.add_argument("--crop", type=size_arg, default=(224, 224), help="WxH of the crop grid")
    parser.add_argument("--free-tokens", type=int, default=16, help="greedy tokens after the forced call")
    parser.add_argument("--repeats", type=int, default=3)
    add_thread_flags(parser)
    args = parser.parse_args()
    for name in ("prompts", "group", "repeats", "torch_threads", "xla_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.free_tokens < 0:
        parser.error(f"--free-tokens must be >= 0, got {args.free_tokens}")
    return args


def main() -> None:
    args = parse_args()
    crop_hw = args.crop[::-1]
    torch.set_num_threads(args.torch_threads)
    xla_threads = xla_kernel_threads(args.xla_threads)
    tok, protocol = load_tokenizer(), PROTOCOLS.get(PROTOCOL)
    ours, hf = build_models(benchmark_config(), seed=0)
    prompts = make_prompts(args.prompts, args.view, args.original)
    forced = [tok.encode(text) for text in zoom_responses(protocol, prompts, args.group, np.random.default_rng(0))]
    max_new_tokens = max(map(len, forced)) + args.free_tokens
    engine = build_engine(ours, tok, protocol, crop_hw, max_new_tokens)

    def run_ours() -> Rollouts:
        return engine_rollouts(engine, ours, tok, protocol, prompts, args.group, forced_token_array(forced))

    def run_host() -> Rollouts:
        return host_rollouts(hf, tok, protocol, prompts, args.group, forced, max_new_tokens, crop_hw)

    start = time.perf_counter()
    run_ours()
    compile_s = time.perf_counter() - start
    (ours_s, ours_out), (host_s, host_out) = best_of_interleaved(args.repeats, run_ours, run_host)
    for name, out in (("pixel_jax", ours_out), ("host loop", host_out)):
        if np.any(out.zooms != MAX_CALLS):
            raise RuntimeError(f"{name}: every response must make one successful zoom, got {out.zooms.tolist()}")

    rows = args.prompts * args.group
    lengths = sorted({len(tokens) for tokens in forced})
    print(f"{args.prompts} prompts x G={args.group} = {rows} rollouts, one zoom each; view {args.view[0]}x"
          f"{args.view[1]}, original {args.original[0]}x{args.original[1]}, crop {args.crop[0]}x{args.crop[1]}")
    print(f"{lengths[0]}-{lengths[-1]} forced + up to {args.free_tokens} greedy tokens per response; "
          f"best of {args.repeats}; torch threads {args.torch_threads}, XLA kernel threads {xla_threads}")
    print(f"{'implementation':<34}{'seconds':>9}{'rollouts/s':>12}{'tokens':>8}{'tokens/s':>10}")
    for label, seconds, out in (("pixel_jax engine (one program)", ours_s, ours_out),
                                ("host loop (transformers + PIL)", host_s, host_out)):
        tokens = int(out.tokens.sum())
        print(f"{label:<34}{seconds:>9.3f}{rows / seconds:>12.2f}{tokens:>8d}{tokens / seconds:>10.0f}")
    print(f"speed-up: {host_s / ours_s:.2f}x   (pixel_jax first call incl. compile: {compile_s:.1f} s)")


if __name__ == "__main__":
    main()
