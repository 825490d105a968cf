"""The GRPO update step: pixel_jax's jitted learner vs the same step in transformers + torch AdamW.

Same weights on both sides: a Qwen2.5-VL config with 4 layers, hidden 256, 8 heads, 2 KV heads,
vocabulary 4,096 and a 2-block ViT, built by pixel_jax and exported with `save_pretrained` for
transformers. Same batch: one group of G = B = `--batch` sequences of `--tokens` slots, each the
group's prompt with its one 224×224 image (64 visual tokens) followed by a sampled response that
carries the loss, with 0/1 task rewards. pixel_jax encodes the image once for the group;
transformers is given it with every sequence, as the public code does, and encodes it B times.

One update, both sides: log π_θ of the response tokens from one forward pass over text and image,
the token entropy (a metric), group-relative advantages, the clipped policy loss (ε 0.2 / 0.35,
token mean), backward, clip by global norm 1, AdamW. pixel_jax runs `rl.learner.make_update_step`
(μ = 1 policy iteration, 1 micro-batch; curiosity-shaped rewards included); torch runs the
transformers model, `torch.nn.utils.clip_grad_norm_` and `torch.optim.AdamW`. The first update of
each side starts from the same weights: their gradient norms and entropies are printed side by side.

Printed: seconds per update (best of `--repeats`), tokens/s, and achieved FLOP/s — the compiled
step's XLA cost analysis divided by its time — against this machine's dense float32 matmul peak,
measured here with `jnp.dot` on 2048×2048 matrices.

    python benchmarks/train_step.py [--batch 8] [--tokens 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from timing import best_of
from transformers import Qwen2_5_VLForConditionalGeneration

from pixel_jax import sharding
from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.rl import learner
from pixel_jax.rollout.trajectory import Trajectory, token_logprobs

IMAGE_GRID = (1, 16, 16)  # a 224×224 image: 256 patches, 64 visual tokens
PROMPT_TEXT = (16, 14)  # text tokens before and after the image
EPS_LOW, EPS_HIGH, MAX_GRAD_NORM, LEARNING_RATE = 0.2, 0.35, 1.0, 1e-6
MATMUL_SIZE = 2048


def benchmark_config() -> qvl.Qwen2_5_VLConfig:
    """4 layers, hidden 256, 8 heads (head_dim 32), 2 KV heads, vocabulary 4,096; a 2-block ViT."""
    vision = qvl.VisionConfig(depth=2, hidden_size=128, intermediate_size=256, num_heads=2,
                              fullatt_block_indexes=(1,), out_hidden_size=256)
    return qvl.Qwen2_5_VLConfig.tiny(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                     num_attention_heads=8, num_key_value_heads=2, mrope_section=(4, 6, 6),
                                     vision=vision)


# ------------------------------------------------------------------------- the batch
def make_batch(config: qvl.Qwen2_5_VLConfig, model: qvl.Qwen2_5_VL, rows: int, slots: int,
               rng: np.random.Generator) -> learner.RolloutBatch:
    """One group: the prompt (text, image, text) + random response tokens per row; log π_old =
    log π_θ (ratio 1)."""
    image_tokens = IMAGE_GRID[0] * IMAGE_GRID[1] * IMAGE_GRID[2] // 4
    prompt = [1] * PROMPT_TEXT[0] + [config.vision_start_token_id] + [config.image_token_id] * image_tokens + [
        config.vision_end_token_id] + [1] * PROMPT_TEXT[1]
    prompt_len = len(prompt)
    if slots <= prompt_len:
        raise ValueError(f"--tokens {slots} leaves no room for a response after the {prompt_len}-token prompt")
    tokens = rng.integers(3, 1900, size=(rows, slots)).astype(np.int32)  # [B, S] text ids
    tokens[:, :prompt_len] = np.where(np.array(prompt) == 1, tokens[:, :prompt_len], prompt)
    grids = np.tile(np.array([IMAGE_GRID], np.int32), (rows, 1))  # [B, 3]
    positions, _ = qvl.get_rope_index(config, jnp.asarray(tokens), None, jnp.asarray(grids))  # [3, B, S]
    pixel_values = rng.normal(size=(1, np.prod(IMAGE_GRID), config.vision.patch_dim)).astype(np.float32)  # [Q=1, P, ·]
    response = np.arange(slots)[None] >= prompt_len  # [1, S]
    trajectory = Trajectory(
        tokens=jnp.asarray(tokens), positions=positions, slot_valid=jnp.ones((rows, slots), bool),
        loss_mask=jnp.asarray(np.repeat(response, rows, axis=0)), logprobs=jnp.zeros((rows, slots)),
        temperature=jnp.ones((rows, slots)), crops=jnp.zeros((rows, 1, 1, 1, 3), jnp.uint8),
        n_crops=jnp.zeros(rows, jnp.int32), n_calls=jnp.zeros(rows, jnp.int32), n_errors=jnp.zeros(rows, jnp.int32),
        call_errors=jnp.zeros((rows, 1), jnp.int32), call_boxes=jnp.zeros((rows, 1, 4)),
        call_targets=jnp.zeros((rows, 1), jnp.int32), finish=jnp.ones(rows, jnp.int32),
        response_length=jnp.full(rows, slots - prompt_len, jnp.int32), prompt_len=prompt_len,
    )
    old = jax.jit(token_logprobs, static_argnames="group_size")(model, trajectory, jnp.asarray(pixel_values),
                                                                 jnp.asarray(grids[:1]), group_size=rows)
    task_reward = (np.arange(rows) % 2).astype(np.float32)  # half the group right
    return learner.RolloutBatch(trajectory=trajectory.replace(logprobs=jnp.where(trajectory.loss_mask, old, 0.0)),
                                task_reward=jnp.asarray(task_reward), prompt_pixel_values=jnp.asarray(pixel_values),
                                prompt_grid_thw=jnp.asarray(grids[:1]))


# -------------------------------------------------------------------------- pixel_jax
def learner_config(group_size: int) -> learner.LearnerConfig:
    return learner.LearnerConfig(group_size=group_size, advantage_estimator="grpo", eps_low=EPS_LOW,
                                 eps_high=EPS_HIGH, learning_rate=LEARNING_RATE, max_grad_norm=MAX_GRAD_NORM)


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


# ------------------------------------------------------------------------------ torch
class TorchStep:
    """The same update with transformers + torch AdamW (β, ε of optax; no weight decay on either side)."""

    def __init__(self, hf, batch: learner.RolloutBatch):
        trajectory = batch.trajectory
        self.hf = hf.train()
        self.optimizer = torch.optim.AdamW(hf.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=0.0)
        as_torch = lambda x: torch.from_numpy(np.array(x))
        rows = trajectory.tokens.shape[0]
        self.inputs = {
            "input_ids": as_torch(trajectory.tokens).long(),
            "attention_mask": torch.ones(trajectory.tokens.shape, dtype=torch.long),
            "position_ids": as_torch(trajectory.positions).long(),
            "pixel_values": as_torch(batch.prompt_pixel_values).repeat(rows, 1, 1).flatten(0, 1),  # once per row
            "image_grid_thw": as_torch(batch.prompt_grid_thw).long().repeat(rows, 1),
        }
        self.targets = self.inputs["input_ids"][:, 1:]  # token s is predicted at slot s − 1
        self.mask = as_torch(trajectory.loss_mask)[:, 1:].float()  # [B, S-1]
        self.old_logprobs = as_torch(trajectory.logprobs)[:, 1:]
        self.rewards = as_torch(batch.task_reward)

    def __call__(self) -> tuple[float, float]:
        """One update; (gradient norm before clipping, mean entropy of the response tokens)."""
        logits = self.hf(**self.inputs).logits[:, :-1].float()  # [B, S-1, V]
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = logprobs.gather(-1, self.targets[..., None])[..., 0]  # [B, S-1]
        with torch.no_grad():
            entropy = (-(logprobs.exp() * logprobs).sum(-1) * self.mask).sum() / self.mask.sum()
        advantages = ((self.rewards - self.rewards.mean()) / (self.rewards.std() + 1e-6))[:, None]  # [B, 1]
        ratio = torch.exp(chosen - self.old_logprobs)
        clipped = torch.clamp(ratio, 1 - EPS_LOW, 1 + EPS_HIGH)
        per_token = torch.maximum(-ratio * advantages, -clipped * advantages)
        loss = (per_token * self.mask).sum() / self.mask.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.hf.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        return grad_norm.item(), entropy.item()


# ------------------------------------------------------------------------------- peak
def matmul_peak(repeats: int) -> float:
    """FLOP/s of a jitted float32 jnp.dot of two MATMUL_SIZE² matrices (best of `repeats`)."""
    a, b = (jax.random.normal(jax.random.key(i), (MATMUL_SIZE, MATMUL_SIZE)) for i in range(2))
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    seconds, _ = best_of(repeats, lambda: dot(a, b).block_until_ready())
    return 2 * MATMUL_SIZE**3 / seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="sequences per update (one group)")
    parser.add_argument("--tokens", type=int, default=512, help="slots per sequence, prompt included")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.batch < 2 or args.repeats < 1:
        parser.error(f"--batch must be >= 2 (a group) and --repeats >= 1, got {args.batch}, {args.repeats}")
    return args


def main() -> None:
    args = parse_args()
    config = benchmark_config()
    ours = qvl.Qwen2_5_VL(config, rngs=nnx.Rngs(0))
    with tempfile.TemporaryDirectory() as folder:
        qvl.save_pretrained(ours, folder)
        hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    batch = make_batch(config, ours, args.batch, args.tokens, np.random.default_rng(0))

    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    plan = learner.plan_learner(lambda: qvl.Qwen2_5_VL(config, rngs=nnx.Rngs(0)), learner_config(args.batch),
                                mesh, sharding.make_rules())
    step = learner.make_update_step(plan)
    state, frozen = learner.init_learner(plan, ours)
    batch = learner.shard_batch(plan, batch)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
    flops = flops_of(compiled)

    def run_ours():
        nonlocal state
        state, metrics = step(state, frozen, batch)
        return jax.block_until_ready(metrics)

    first = run_ours()
    ours_s, _ = best_of(args.repeats, run_ours)
    torch_step = TorchStep(hf, batch)
    torch_norm, torch_entropy = torch_step()
    torch_s, _ = best_of(args.repeats, torch_step)
    peak = matmul_peak(args.repeats)

    tokens = args.batch * args.tokens
    print(f"GRPO update: B={args.batch} x {args.tokens} tokens (the group's one 224x224 image), "
          f"{batch.trajectory.loss_mask.sum()} response tokens; best of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(f"first update from the same weights, pixel_jax / torch: grad norm {float(first['grad_norm'][0]):.6f} / "
          f"{torch_norm:.6f}, entropy {float(first['entropy'][0]):.6f} / {torch_entropy:.6f}")
    print(f"{'implementation':<30}{'s/update':>10}{'tokens/s':>10}{'GFLOP/s':>9}{'of peak':>9}")
    print(f"{'pixel_jax learner (jit)':<30}{ours_s:>10.3f}{tokens / ours_s:>10.0f}{flops / ours_s / 1e9:>9.1f}"
          f"{flops / ours_s / peak:>9.1%}")
    print(f"{'transformers + torch AdamW':<30}{torch_s:>10.3f}{tokens / torch_s:>10.0f}{flops / torch_s / 1e9:>9.1f}"
          f"{flops / torch_s / peak:>9.1%}")
    print(f"{'jnp.dot 2048^2 float32 (peak)':<30}{'':>10}{'':>10}{peak / 1e9:>9.1f}{1:>9.0%}")
    print(f"XLA cost analysis: {flops / 1e9:.1f} GFLOP per update (torch credited with the same); "
          f"compile {compile_s:.1f} s")
    print(f"ratios: pixel_jax / torch speed {torch_s / ours_s:.2f}x; pixel_jax at {flops / ours_s / peak:.1%} of "
          f"the matmul peak")


if __name__ == "__main__":
    main()
