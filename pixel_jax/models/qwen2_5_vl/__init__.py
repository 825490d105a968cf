"""Flax NNX port of Qwen2.5-VL (matches transformers' Qwen2_5_VLForConditionalGeneration)."""

from pixel_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig, VisionConfig
from pixel_jax.models.qwen2_5_vl.model import Qwen2_5_VL
from pixel_jax.models.qwen2_5_vl.rope_index import get_rope_index
from pixel_jax.models.qwen2_5_vl.weights import from_pretrained, save_pretrained

__all__ = [
    "Qwen2_5_VL",
    "Qwen2_5_VLConfig",
    "VisionConfig",
    "from_pretrained",
    "get_rope_index",
    "save_pretrained",
]
