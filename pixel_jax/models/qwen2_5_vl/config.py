"""Qwen2.5-VL configuration: one dataclass, presets equal to the published checkpoints.

Sharding is not configured here (see `pixel_jax.sharding`); only architecture, dtypes and what
the backward pass recomputes (`remat`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from pixel_jax.models.layers import REMAT_POLICIES

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The ViT of Qwen2.5-VL (window attention, 2-D rotary, 2x2 patch merger)."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    tokens_per_second: int = 2
    hidden_act: str = "silu"
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: C * temporal_patch * patch * patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def window_merged_size(self) -> int:
        """Side of an attention window, in merged (2x2) units."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig:
    """Text decoder fields at the top level (as in the HF config.json), the ViT in `vision`."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    max_position_embeddings: int = 128000
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    dtype: str = "float32"  # compute dtype of activations
    param_dtype: str = "float32"  # storage dtype of parameters
    remat: str = "none"  # activations the backward pass recomputes per decoder layer / ViT block (layers.REMAT_POLICIES)

    def __post_init__(self):
        self.validate()

    # ----------------------------------------------------------------- derived
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return _DTYPES[self.param_dtype]

    def replace(self, **changes) -> "Qwen2_5_VLConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raises ValueError naming the first inconsistent field."""
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        elif self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        elif sum(self.mrope_section) * 2 != self.head_dim:
            problems.append(
                f"sum(mrope_section)={sum(self.mrope_section)} must equal head_dim/2={self.head_dim // 2} "
                f"(mrope_section={tuple(self.mrope_section)}, head_dim={self.head_dim})"
            )
        if len(self.mrope_section) != 3:
            problems.append(f"mrope_section must have 3 entries (t, h, w), got {tuple(self.mrope_section)}")
        v = self.vision
        if v.hidden_size % v.num_heads:
            problems.append(f"vision.hidden_size={v.hidden_size} is not divisible by vision.num_heads={v.num_heads}")
        elif v.head_dim % 4:
            problems.append(f"vision head_dim={v.head_dim} must be divisible by 4 (2-D rotary over h and w)")
        if v.window_merged_size < 1:
            problems.append(
                f"vision.window_size={v.window_size} is smaller than one merged patch "
                f"({v.patch_size * v.spatial_merge_size} px)"
            )
        if any(not 0 <= i < v.depth for i in v.fullatt_block_indexes):
            problems.append(f"vision.fullatt_block_indexes={v.fullatt_block_indexes} outside [0, depth={v.depth})")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {sorted(_DTYPES)}")
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat={self.remat!r} is not one of {sorted(REMAT_POLICIES)}")
        for act in (self.hidden_act, v.hidden_act):
            if act != "silu":
                problems.append(f"hidden_act={act!r} is not supported (Qwen2.5-VL uses 'silu')")
        if problems:
            raise ValueError("Invalid Qwen2_5_VLConfig: " + "; ".join(problems))

    # ------------------------------------------------------------------ presets
    # Equal to the published Hugging Face config.json files; keyword overrides win.
    @classmethod
    def qwen2_5_vl_3b(cls, **overrides) -> "Qwen2_5_VLConfig":
        return cls(**{
            "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
            "num_attention_heads": 16, "num_key_value_heads": 2, "tie_word_embeddings": True,
            "vision": VisionConfig(out_hidden_size=2048), **overrides,
        })

    @classmethod
    def qwen2_5_vl_7b(cls, **overrides) -> "Qwen2_5_VLConfig":
        return cls(**{"vision": VisionConfig(out_hidden_size=3584), **overrides})

    @classmethod
    def qwen2_5_vl_32b(cls, **overrides) -> "Qwen2_5_VLConfig":
        return cls(**{
            "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
            "num_attention_heads": 40, "num_key_value_heads": 8,
            "vision": VisionConfig(out_hidden_size=5120), **overrides,
        })

    @classmethod
    def qwen2_5_vl_72b(cls, **overrides) -> "Qwen2_5_VLConfig":
        return cls(**{
            "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
            "num_attention_heads": 64, "num_key_value_heads": 8,
            "vision": VisionConfig(out_hidden_size=8192), **overrides,
        })

    @classmethod
    def tiny(cls, **overrides) -> "Qwen2_5_VLConfig":
        """A few-MB model for tests and the embedded CPU default (window 56 px = 2 merged units).

        Its vocabulary and special-token ids are those of the packaged tokenizer
        (`pixel_jax/assets/tokenizer`, 2,000 tokens; the embedding is padded to 2,048 rows).
        """
        return cls(**{
            "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "mrope_section": (2, 3, 3),
            "bos_token_id": 1984, "eos_token_id": 1986, "vision_start_token_id": 1993,
            "vision_end_token_id": 1994, "image_token_id": 1996, "video_token_id": 1997,
            "vision": VisionConfig(
                depth=3, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56,
                fullatt_block_indexes=(1,), out_hidden_size=64,
            ),
            **overrides,
        })

    # ------------------------------------------------------- Hugging Face format
    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides) -> "Qwen2_5_VLConfig":
        """Builds a config from a Hugging Face `config.json` dict (v4 flat or v5 nested layout).

        Unknown fields raise, so a config of another architecture is never half-read silently.
        """
        hf = dict(hf)
        model_type = hf.pop("model_type", "qwen2_5_vl")
        if model_type != "qwen2_5_vl":
            raise ValueError(f"config.json has model_type={model_type!r}; expected 'qwen2_5_vl'")
        text = dict(hf.pop("text_config", None) or {})
        text.pop("model_type", None)
        merged = {**hf, **{k: v for k, v in text.items() if v is not None}}
        vision_hf = dict(merged.pop("vision_config", None) or {})

        rope = merged.pop("rope_parameters", None) or merged.pop("rope_scaling", None) or {}
        kwargs: dict[str, Any] = {}
        if "mrope_section" in rope:
            kwargs["mrope_section"] = tuple(rope["mrope_section"])
        theta = rope.get("rope_theta", merged.pop("rope_theta", None))
        merged.pop("rope_theta", None)
        if theta is not None:
            kwargs["rope_theta"] = float(theta)
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
            raise ValueError(f"config.json rope type {rope.get('rope_type', rope.get('type'))!r} is not supported")

        ours = {f.name for f in dataclasses.fields(cls)} - {"vision", "dtype", "param_dtype", "remat"}
        for key in ours:
            if key in merged and merged[key] is not None:
                value = merged.pop(key)
                kwargs[key] = value[0] if key == "eos_token_id" and isinstance(value, list) else value
        if merged.get("use_sliding_window"):
            raise ValueError("config.json sets use_sliding_window=true, which Qwen2.5-VL checkpoints never use")
        unknown = sorted(k for k in merged if k not in _HF_IGNORED_FIELDS)
        if unknown:
            raise ValueError(f"config.json has fields this port does not understand: {unknown}")
        kwargs["vision"] = _vision_from_hf(vision_hf)
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_config(self) -> dict[str, Any]:
        """The nested (transformers v5) config.json dict of this architecture."""
        v = self.vision
        text = {
            "model_type": "qwen2_5_vl_text", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": self.hidden_act, "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "use_sliding_window": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta,
                                "mrope_section": list(self.mrope_section)},
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
        }
        vision = {
            "model_type": "qwen2_5_vl_vision", "depth": v.depth, "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_heads": v.num_heads, "in_channels": v.in_channels,
            "patch_size": v.patch_size, "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": v.temporal_patch_size, "window_size": v.window_size,
            "fullatt_block_indexes": list(v.fullatt_block_indexes), "out_hidden_size": v.out_hidden_size,
            "tokens_per_second": v.tokens_per_second, "hidden_act": v.hidden_act,
        }
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "text_config": text, "vision_config": vision, "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id, "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id, "tie_word_embeddings": self.tie_word_embeddings,
        }


# Fields of HF config.json files that do not change the computation.
_HF_IGNORED_FIELDS = frozenset({
    "architectures", "attention_dropout", "initializer_range", "max_window_layers", "sliding_window",
    "torch_dtype", "dtype", "transformers_version", "use_cache", "use_sliding_window", "vision_token_id",
    "pad_token_id", "layer_types", "_name_or_path", "output_attentions", "output_hidden_states",
    "return_dict", "tie_word_embeddings", "id2label", "label2id", "problem_type", "chunk_size_feed_forward",
    "is_encoder_decoder", "add_cross_attention", "tf_legacy_loss", "use_bfloat16", "pruned_heads",
    "torchscript", "task_specific_params", "finetuning_task", "prefix", "sep_token_id",
    "decoder_start_token_id", "cross_attention_hidden_size", "is_decoder", "tokenizer_class",
    "base_config_key",
})

_HF_VISION_RENAMES = {"in_chans": "in_channels", "num_attention_heads": "num_heads", "num_hidden_layers": "depth"}
_HF_VISION_IGNORED = _HF_IGNORED_FIELDS | {"model_type", "spatial_patch_size", "rope_parameters"}


def _vision_from_hf(hf: dict[str, Any]) -> VisionConfig:
    fields = {f.name for f in dataclasses.fields(VisionConfig)}
    kwargs, unknown = {}, []
    for key, value in hf.items():
        key = _HF_VISION_RENAMES.get(key, key)
        if key in fields:
            kwargs[key] = tuple(value) if key == "fullatt_block_indexes" else value
        elif key not in _HF_VISION_IGNORED:
            unknown.append(key)
    if unknown:
        raise ValueError(f"config.json vision_config has fields this port does not understand: {sorted(unknown)}")
    rope = hf.get("rope_parameters") or {}
    if "rope_theta" in rope:
        kwargs["rope_theta"] = float(rope["rope_theta"])
    return VisionConfig(**kwargs)
