"""Round trip, parameter counts, dtypes, compilation and error handling of the Qwen2.5-VL port."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Qwen2_5_VLConfig as HFConfig
from transformers import Qwen2_5_VLForConditionalGeneration

import hf_tiny
from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.processing.tokenizer import load_tokenizer


def _param_count(model: nnx.Module) -> int:
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("preset", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_eval_shape_parameter_count_equals_transformers(preset):
    cfg = getattr(qvl.Qwen2_5_VLConfig, preset)()
    ours = _param_count(nnx.eval_shape(lambda: qvl.Qwen2_5_VL(cfg, rngs=nnx.Rngs(0))))
    with torch.device("meta"):
        hf = Qwen2_5_VLForConditionalGeneration(HFConfig(**cfg.to_hf_config()))
    assert ours == sum(p.numel() for p in hf.parameters())
    assert ours > 3e9


def test_save_pretrained_round_trips_through_transformers(tmp_path):
    cfg = qvl.Qwen2_5_VLConfig.tiny(vocab_size=hf_tiny.VOCAB, image_token_id=hf_tiny.IMAGE_PAD,
                                    video_token_id=hf_tiny.VIDEO_PAD, vision_start_token_id=hf_tiny.VISION_START,
                                    vision_end_token_id=hf_tiny.VISION_END, bos_token_id=0, eos_token_id=1)
    ours = qvl.Qwen2_5_VL(cfg, rngs=nnx.Rngs(3))
    qvl.save_pretrained(ours, tmp_path)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    rng = np.random.default_rng(0)
    grid = [(1, 8, 4)]
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, [3, ("image", grid[0]), 4])])
    pv = hf_tiny.pixels(rng, grid)
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pv),
                      image_grid_thw=torch.tensor(grid), mm_token_type_ids=torch.tensor(hf_tiny.mm_token_type_ids(ids))
                      ).logits.numpy()
    got = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask), pixel_values=jnp.asarray(pv),
                          image_grid_thw=jnp.asarray(grid)))
    assert np.max(np.abs(got - expected)) <= 1e-5
    reloaded = qvl.from_pretrained(tmp_path)
    assert reloaded.config == cfg
    np.testing.assert_array_equal(
        np.asarray(reloaded.language_model.embed_tokens[...]), np.asarray(ours.language_model.embed_tokens[...])
    )


def test_forward_compiles_once_per_shape_bucket():
    model = qvl.Qwen2_5_VL(qvl.Qwen2_5_VLConfig.tiny(), rngs=nnx.Rngs(0))
    traces = []

    @nnx.jit
    def forward(model, ids, mask, pv, grid):
        traces.append(ids.shape)
        return model(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid)

    cfg = model.config
    rng = np.random.default_rng(0)
    for grid in [(1, 4, 8), (1, 8, 4), (1, 2, 16)]:  # same patch count, different layouts: one bucket
        n = grid[1] * grid[2] // 4
        ids = np.concatenate([rng.integers(0, 1900, 5), [cfg.vision_start_token_id], [cfg.image_token_id] * n,
                              [cfg.vision_end_token_id], rng.integers(0, 1900, 3)])[None]
        out = forward(model, jnp.asarray(ids), jnp.ones_like(ids), jnp.asarray(hf_tiny.pixels(rng, [grid])),
                      jnp.asarray([grid]))
        assert out.shape == (1, ids.shape[1], cfg.vocab_size)
    assert len(traces) == 1


def test_bfloat16_compute_and_params_stay_close_to_float32():
    cfg32 = qvl.Qwen2_5_VLConfig.tiny()
    model32 = qvl.Qwen2_5_VL(cfg32, rngs=nnx.Rngs(0))
    model16 = qvl.Qwen2_5_VL(cfg32.replace(dtype="bfloat16", param_dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert model16.language_model.embed_tokens[...].dtype == jnp.bfloat16
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 1900, (2, 12)))
    out32, out16 = model32(ids), model16(ids)
    assert out16.dtype == jnp.float32  # logits are always float32
    assert np.max(np.abs(np.asarray(out16) - np.asarray(out32))) < 0.05 * np.max(np.abs(np.asarray(out32))) + 1e-3


def test_tiny_preset_uses_the_packaged_tokenizer_ids():
    special = load_tokenizer().special
    cfg = qvl.Qwen2_5_VLConfig.tiny()
    assert (cfg.image_token_id, cfg.video_token_id) == (special.image_pad, special.video_pad)
    assert (cfg.vision_start_token_id, cfg.vision_end_token_id) == (special.vision_start, special.vision_end)
    assert cfg.eos_token_id == special.im_end
    assert cfg.vocab_size >= load_tokenizer().vocab_size


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, message", [
    (dict(mrope_section=(2, 2, 2)), "sum(mrope_section)=6 must equal head_dim/2=8"),
    (dict(num_key_value_heads=3), "not a multiple of num_key_value_heads=3"),
    (dict(hidden_size=66), "not divisible by num_attention_heads"),
    (dict(dtype="float64"), "dtype='float64' is not one of"),
])
def test_bad_config_names_the_field(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        qvl.Qwen2_5_VLConfig.tiny(**change)


def test_from_hf_config_reads_the_published_flat_layout_and_rejects_unknown_fields():
    flat = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16, "num_hidden_layers": 36,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": True,
        "vocab_size": 151936, "max_position_embeddings": 128000, "sliding_window": 32768,
        "use_sliding_window": False, "torch_dtype": "bfloat16",
        "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                          "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14,
                          "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                          "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    }
    assert qvl.Qwen2_5_VLConfig.from_hf_config(flat) == qvl.Qwen2_5_VLConfig.qwen2_5_vl_3b()
    with pytest.raises(ValueError, match=r"does not understand: \['attn_logit_softcapping'\]"):
        qvl.Qwen2_5_VLConfig.from_hf_config({**flat, "attn_logit_softcapping": 30.0})
    with pytest.raises(ValueError, match="model_type='llama'"):
        qvl.Qwen2_5_VLConfig.from_hf_config({**flat, "model_type": "llama"})
    with pytest.raises(ValueError, match="sum\\(mrope_section\\)"):
        qvl.Qwen2_5_VLConfig.from_hf_config({**flat, "rope_scaling": {"type": "mrope", "mrope_section": [8, 8, 8]}})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    qvl.save_pretrained(qvl.Qwen2_5_VL(qvl.Qwen2_5_VLConfig.tiny(), rngs=nnx.Rngs(0)), folder)
    return folder


def _copy_with(checkpoint, tmp_path, edit):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(checkpoint / "model.safetensors")
    edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    return tmp_path


def test_broken_checkpoint_lists_every_problem(checkpoint, tmp_path):
    def edit(t):
        del t["model.norm.weight"]
        del t["visual.merger.ln_q.weight"]
        t["model.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
        t["model.extra.weight"] = np.zeros(2, np.float32)

    with pytest.raises(ValueError) as err:
        qvl.from_pretrained(_copy_with(checkpoint, tmp_path, edit))
    text = str(err.value)
    assert "missing tensors: ['model.norm.weight', 'visual.merger.ln_q.weight']" in text
    assert "model.layers.0.self_attn.q_proj.weight: (3, 3) (expected (64, 64))" in text
    assert "unexpected tensors: ['model.extra.weight']" in text


def test_missing_files_are_named(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qvl.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        qvl.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor model.safetensors.index.json"):
        qvl.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        qvl.from_pretrained(tmp_path)


def test_sharded_index_checkpoint_loads(checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(checkpoint / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, tmp_path / file)
    index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    a, b = qvl.from_pretrained(tmp_path), qvl.from_pretrained(checkpoint)
    ids = jnp.arange(10)[None]
    np.testing.assert_array_equal(np.asarray(a(ids)), np.asarray(b(ids)))


def test_equal_images_are_attended_one_by_one_with_the_same_result():
    model = qvl.Qwen2_5_VL(qvl.Qwen2_5_VLConfig.tiny(), rngs=nnx.Rngs(0))
    grids = np.array([[1, 8, 12]] * 3)  # windows split each image; three images of one size
    pv = jnp.asarray(np.random.default_rng(0).standard_normal((3 * 96, 1176)).astype(np.float32))
    image_by_image = model.encode_vision(pv, grids)  # host grids: the per-image path
    masked = model.encode_vision(pv, jnp.asarray(grids))  # traced grids: one masked attention
    assert image_by_image.shape == (72, 64)
    assert np.max(np.abs(np.asarray(image_by_image) - np.asarray(masked))) <= 1e-5
