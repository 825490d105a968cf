"""Tiny random transformers Qwen2.5-VL models and matching inputs, built offline for parity tests."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig as HFConfig
from transformers import Qwen2_5_VLForConditionalGeneration

VOCAB = 256
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = 250, 251, 252, 253
PATCH_DIM = 3 * 2 * 14 * 14


def hf_config(*, tie_word_embeddings=False, vision_depth=4, fullatt=(1, 3), window_size=56) -> HFConfig:
    """4 heads of 16 (mrope 2|3|3), 2 kv heads; ViT of width 32 whose 56-px window splits images."""
    return HFConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=0, eos_token_id=1, pad_token_id=2,
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
            window_size=window_size, fullatt_block_indexes=list(fullatt), tokens_per_second=2,
        ),
        image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
        tie_word_embeddings=tie_word_embeddings,
    )


def build_hf_model(config: HFConfig, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """Random weights with a larger scale than the default init, so every path matters numerically."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    model.config._attn_implementation = "eager"
    return model


def vision_tokens(grid_thw) -> int:
    t, h, w = grid_thw
    return t * h * w // 4


def sample(rng: np.random.Generator, pieces) -> list[int]:
    """pieces: ints (that many random text tokens) or ("image"|"video", grid) -> token ids."""
    ids = []
    for piece in pieces:
        if isinstance(piece, int):
            ids += rng.integers(3, 240, size=piece).tolist()
        else:
            kind, grid = piece
            pad = IMAGE_PAD if kind == "image" else VIDEO_PAD
            ids += [VISION_START] + [pad] * vision_tokens(grid) + [VISION_END]
    return ids


def left_pad(rows: list[list[int]], pad_id: int = 2) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def pixels(rng: np.random.Generator, grids) -> np.ndarray:
    n = sum(t * h * w for t, h, w in grids)
    return rng.standard_normal((n, PATCH_DIM)).astype(np.float32)


def mm_token_type_ids(ids: np.ndarray) -> np.ndarray:
    return (ids == IMAGE_PAD).astype(np.int64) + 2 * (ids == VIDEO_PAD).astype(np.int64)
