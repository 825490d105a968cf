"""Sampler throughput: pixel_jax's compiled KV-cache sampler vs transformers `generate`.

Same weights (written by transformers, read by pixel_jax), a Qwen2.5-VL config with 4 layers,
hidden 256, 8 heads, 2 KV heads, vocab 4096; by default batch 8, 64-token prompts, 128 new tokens,
greedy. Prints a table and the speed ratio measured in this run, then the rate at which a decode
step reads its bytes (weights and KV cache: decoding a small batch is memory-bound) against the
rate at which this machine reads memory (a sum over 64 MB), measured in the same run: the ceiling
a decode step could reach. transformers runs with
`--torch-threads` intra-op threads and XLA's dot kernels with `--xla-threads`, 1 each by default:
on a shared 2-core machine both libraries' worker threads spin against the other processes' and a
2-thread run measures the contention, not the library (`threads.py`); pass 2 on an idle machine.

    python benchmarks/sampler.py [--batch 8] [--prompt-len 64] [--new-tokens 128] [--repeats 3]
                                 [--torch-threads 1] [--xla-threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from threads import add_thread_flags, xla_kernel_threads
from timing import best_of, best_of_interleaved
from transformers import Qwen2_5_VLConfig as HFConfig
from transformers import Qwen2_5_VLForConditionalGeneration

from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.rollout import sampler

VOCAB = 4096


def benchmark_config() -> HFConfig:
    return HFConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, bos_token_id=None, eos_token_id=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=256,
                           fullatt_block_indexes=[1]),
        image_token_id=VOCAB - 4, video_token_id=VOCAB - 3, vision_start_token_id=VOCAB - 6,
        vision_end_token_id=VOCAB - 5,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    add_thread_flags(parser)
    args = parser.parse_args()
    for name in ("batch", "prompt_len", "new_tokens", "repeats", "torch_threads", "xla_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main() -> None:
    args = parse_args()
    batch, new = args.batch, args.new_tokens
    torch.set_num_threads(args.torch_threads)
    xla_threads = xla_kernel_threads(args.xla_threads)
    torch.manual_seed(0)
    hf = Qwen2_5_VLForConditionalGeneration(benchmark_config()).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = qvl.from_pretrained(folder)
    ids = np.random.default_rng(0).integers(0, VOCAB - 8, (batch, args.prompt_len))
    mask = np.ones_like(ids)

    def run_ours():
        jax.block_until_ready(sampler.generate(ours, ids, mask, max_new_tokens=new).tokens)

    def run_hf():
        with torch.no_grad():
            hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=new,
                        min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)

    def run_ours_prompt():  # the prefill and one token: subtracted to leave the decode steps
        jax.block_until_ready(sampler.generate(ours, ids, mask, max_new_tokens=1).tokens)

    start = time.perf_counter()
    run_ours()
    compile_s = time.perf_counter() - start
    run_ours_prompt()
    (ours_s, _), (hf_s, _), (prompt_s, _) = best_of_interleaved(args.repeats, run_ours, run_hf, run_ours_prompt)
    tokens = batch * new
    print(f"batch {batch}, prompt {args.prompt_len}, {new} new tokens, greedy, best of {args.repeats}, "
          f"torch threads {args.torch_threads}, XLA kernel threads {xla_threads}")
    print(f"{'implementation':<28}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'pixel_jax sampler':<28}{ours_s:>10.3f}{tokens / ours_s:>12.0f}")
    print(f"{'transformers generate':<28}{hf_s:>10.3f}{tokens / hf_s:>12.0f}")
    print(f"speed-up: {hf_s / ours_s:.2f}x   (pixel_jax first call incl. compile: {compile_s:.1f} s)")
    if new > 1 and ours_s > prompt_s:
        step_s = (ours_s - prompt_s) / (new - 1)
        weights, cache = decode_step_bytes(ours, batch, args.prompt_len + new)
        rate = memory_read_rate()
        achieved = (weights + cache) / step_s
        print(f"decode step: {step_s * 1e3:.2f} ms, reading {weights / 1e6:.1f} MB of weights + {cache / 1e6:.1f} MB "
              f"of KV cache = {achieved / 1e9:.1f} GB/s; summing 64 MB of memory here now: "
              f"{rate / 1e9:.1f} GB/s (the step reaches {achieved / rate:.2f}x of it)")


def decode_step_bytes(model: qvl.Qwen2_5_VL, batch: int, slots: int) -> tuple[int, int]:
    """(weights, cache) bytes one decode step reads: every decoder and LM-head weight (the
    embedding table is only gathered from, unless it is the tied LM head) and the keys and values
    of `slots` slots per row in every layer."""
    cfg = model.config
    decoder = nnx.state(model.language_model)
    weights = sum(x.nbytes for x in jax.tree.leaves(decoder)) - model.language_model.embed_tokens[...].nbytes
    head = model.language_model.embed_tokens if model.lm_head is None else model.lm_head.kernel
    itemsize = jnp.dtype(cfg.compute_dtype).itemsize
    cache = cfg.num_hidden_layers * 2 * batch * cfg.num_key_value_heads * cfg.head_dim * slots * itemsize
    return weights + head[...].nbytes, cache


def memory_read_rate(megabytes: int = 64, repeats: int = 5) -> float:
    """Bytes/s at which a jitted sum reads `megabytes` of float32, more than the caches hold (the
    fastest of `repeats` passes)."""
    data = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    seconds, _ = best_of(repeats, lambda: jax.block_until_ready(total(data)))
    return data.nbytes / seconds


if __name__ == "__main__":
    main()
