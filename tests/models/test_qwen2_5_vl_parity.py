"""Parity of the Flax port with transformers' Qwen2_5_VLForConditionalGeneration (float32, ≤ 1e-4)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_tiny
from pixel_jax.models import qwen2_5_vl as qvl

TOL = 1e-4


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def models(request, tmp_path_factory):
    hf = hf_tiny.build_hf_model(hf_tiny.hf_config(tie_word_embeddings=request.param))
    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(folder)
    return hf, qvl.from_pretrained(folder, dtype=jnp.float32)


def _torch(x, dtype=None):
    return None if x is None else torch.tensor(np.asarray(x), dtype=dtype)


def hf_logits(hf, ids, mask, pv=None, grid=None, pvv=None, vgrid=None, ts=None):
    with torch.no_grad():
        out = hf(
            input_ids=_torch(ids), attention_mask=_torch(mask), pixel_values=_torch(pv),
            image_grid_thw=_torch(grid), pixel_values_videos=_torch(pvv), video_grid_thw=_torch(vgrid),
            second_per_grid_ts=_torch(ts, torch.float32), mm_token_type_ids=_torch(hf_tiny.mm_token_type_ids(ids)),
        )
    return out.logits.numpy()


def our_logits(model, ids, mask, pv=None, grid=None, pvv=None, vgrid=None, ts=None):
    as_jnp = lambda x: None if x is None else jnp.asarray(x)
    return np.asarray(model(
        jnp.asarray(ids), attention_mask=jnp.asarray(mask), pixel_values=as_jnp(pv), image_grid_thw=as_jnp(grid),
        pixel_values_videos=as_jnp(pvv), video_grid_thw=as_jnp(vgrid), second_per_grid_ts=as_jnp(ts),
    ))


def assert_parity(models, ids, mask, **vision):
    hf, ours = models
    expected = hf_logits(hf, ids, mask, **vision)
    got = our_logits(ours, ids, mask, **vision)
    valid = mask.astype(bool)
    err = np.max(np.abs(expected[valid] - got[valid]))
    assert err <= TOL, f"max |Δlogit| = {err:.2e}"
    assert np.std(expected[valid]) > 0.1  # the comparison is not between two near-constant arrays


def test_text_only(models):
    rng = np.random.default_rng(0)
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, [17])])
    assert_parity(models, ids, mask)


def test_one_image(models):
    rng = np.random.default_rng(1)
    grid = [(1, 8, 12)]  # 4x6 merged units: split into 2x3 windows of 2x2
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, [5, ("image", grid[0]), 7])])
    assert_parity(models, ids, mask, pv=hf_tiny.pixels(rng, grid), grid=np.array(grid))


def test_several_images_of_different_sizes_in_one_sample(models):
    rng = np.random.default_rng(2)
    grids = [(1, 6, 10), (1, 4, 4), (1, 12, 2)]
    pieces = [3, ("image", grids[0]), 4, ("image", grids[1]), ("image", grids[2]), 6]
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, pieces)])
    assert_parity(models, ids, mask, pv=hf_tiny.pixels(rng, grids), grid=np.array(grids))


def test_video(models):
    rng = np.random.default_rng(3)
    vgrid = [(3, 4, 6)]
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, [4, ("video", vgrid[0]), 5])])
    assert_parity(models, ids, mask, pvv=hf_tiny.pixels(rng, vgrid), vgrid=np.array(vgrid), ts=np.array([1.5]))


def test_left_padded_batch_with_different_images(models):
    rng = np.random.default_rng(4)
    grids = [(1, 8, 8), (1, 4, 10)]
    rows = [hf_tiny.sample(rng, [2, ("image", grids[0]), 3]), hf_tiny.sample(rng, [9, ("image", grids[1]), 8])]
    ids, mask = hf_tiny.left_pad(rows)
    assert mask[0].sum() < mask.shape[1]  # the first row really is padded
    assert_parity(models, ids, mask, pv=hf_tiny.pixels(rng, grids), grid=np.array(grids))


def test_images_and_video_in_a_batch(models):
    rng = np.random.default_rng(5)
    grids, vgrids = [(1, 4, 4), (1, 6, 4)], [(2, 4, 4)]
    rows = [hf_tiny.sample(rng, [2, ("image", grids[0]), 2, ("video", vgrids[0]), 3]),
            hf_tiny.sample(rng, [4, ("image", grids[1]), 1])]
    ids, mask = hf_tiny.left_pad(rows)
    assert_parity(models, ids, mask, pv=hf_tiny.pixels(rng, grids), grid=np.array(grids),
                  pvv=hf_tiny.pixels(rng, vgrids), vgrid=np.array(vgrids), ts=np.array([0.5]))


def test_vision_tower_alone(models):
    hf, ours = models
    rng = np.random.default_rng(6)
    grids = np.array([(1, 8, 12), (2, 4, 6), (1, 2, 2)])
    pv = hf_tiny.pixels(rng, grids)
    with torch.no_grad():
        expected = hf.model.visual(torch.tensor(pv), grid_thw=torch.tensor(grids)).pooler_output.numpy()
    got = np.asarray(ours.encode_vision(jnp.asarray(pv), jnp.asarray(grids)))
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= TOL


def test_get_rope_index_is_exact(models):
    hf, _ = models
    rng = np.random.default_rng(7)
    grids, vgrids = [(1, 6, 10), (1, 4, 4)], [(3, 4, 6)]
    rows = [hf_tiny.sample(rng, [3, ("image", grids[0]), 4, ("video", vgrids[0]), 2]),
            hf_tiny.sample(rng, [12, ("image", grids[1]), 5])]
    ids, mask = hf_tiny.left_pad(rows)
    ts = np.array([0.75])
    expected_pos, expected_delta = hf.model.get_rope_index(
        torch.tensor(ids), mm_token_type_ids=torch.tensor(hf_tiny.mm_token_type_ids(ids)),
        image_grid_thw=torch.tensor(grids), video_grid_thw=torch.tensor(vgrids),
        second_per_grid_ts=torch.tensor(ts), attention_mask=torch.tensor(mask),
    )
    cfg = qvl.Qwen2_5_VLConfig.from_hf_config(hf.config.to_dict())
    pos, delta = qvl.get_rope_index(cfg, ids, mask, np.array(grids), np.array(vgrids), ts)
    np.testing.assert_array_equal(np.asarray(pos), expected_pos.numpy())
    np.testing.assert_array_equal(np.asarray(delta), expected_delta.numpy())
