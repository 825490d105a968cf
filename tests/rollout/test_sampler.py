"""The KV-cache sampler against transformers' generate, and the sampling distributions."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import hf_tiny  # noqa: E402
from pixel_jax.models import qwen2_5_vl as qvl  # noqa: E402
from pixel_jax.rollout import sampler, sampling  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf = hf_tiny.build_hf_model(hf_tiny.hf_config(), seed=1)
    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(folder)
    return hf, qvl.from_pretrained(folder)


def hf_greedy(hf, ids, mask, n, pv=None, grid=None):
    kwargs = {}
    if pv is not None:
        kwargs = dict(pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grid),
                      mm_token_type_ids=torch.tensor(hf_tiny.mm_token_type_ids(ids)))
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n,
                          min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=2, **kwargs)
    return out[:, ids.shape[1]:].numpy()


def test_greedy_equals_transformers_text_only(models):
    hf, ours = models
    rng = np.random.default_rng(0)
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, [9]), hf_tiny.sample(rng, [14])])
    expected = hf_greedy(hf, ids, mask, 12)
    got = sampler.generate(ours, ids, mask, max_new_tokens=12)
    np.testing.assert_array_equal(np.asarray(got.tokens), expected)
    assert len(set(expected[0].tolist())) > 3  # not a degenerate repeated token


def test_greedy_equals_transformers_with_images(models):
    hf, ours = models
    rng = np.random.default_rng(1)
    grids = [(1, 8, 8), (1, 4, 12)]
    rows = [hf_tiny.sample(rng, [3, ("image", grids[0]), 4]), hf_tiny.sample(rng, [6, ("image", grids[1]), 2])]
    ids, mask = hf_tiny.left_pad(rows)
    pv = hf_tiny.pixels(rng, grids)
    expected = hf_greedy(hf, ids, mask, 10, pv, np.array(grids))
    got = sampler.generate(ours, ids, mask, max_new_tokens=10, pixel_values=pv, image_grid_thw=np.array(grids))
    np.testing.assert_array_equal(np.asarray(got.tokens), expected)


def test_stop_token_ends_a_row_and_pads_after_it(models):
    _, ours = models
    rng = np.random.default_rng(2)
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, [9]), hf_tiny.sample(rng, [5])])
    free = np.asarray(sampler.generate(ours, ids, mask, max_new_tokens=8).tokens)
    stop = int(free[0, 3])
    out = sampler.generate(ours, ids, mask, max_new_tokens=8, stop_token_ids=(stop,))
    first_stop = int(np.argmax(free[0] == stop))
    assert int(out.lengths[0]) == first_stop + 1
    np.testing.assert_array_equal(np.asarray(out.tokens[0, : first_stop + 1]), free[0, : first_stop + 1])
    assert np.all(np.asarray(out.tokens[0, first_stop + 1:]) == 0)


def test_per_row_token_budgets(models):
    """Row b stops after max_new_tokens[b] tokens, which are those of a run with one budget for all."""
    _, ours = models
    rng = np.random.default_rng(3)
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, [9]), hf_tiny.sample(rng, [14]), hf_tiny.sample(rng, [5])])
    budgets = [3, 7, 1]
    out = sampler.generate(ours, ids, mask, max_new_tokens=budgets)
    full = sampler.generate(ours, ids, mask, max_new_tokens=max(budgets))
    tokens, reference = np.asarray(out.tokens), np.asarray(full.tokens)
    assert tokens.shape == reference.shape == (ids.shape[0], max(budgets))
    np.testing.assert_array_equal(np.asarray(out.lengths), budgets)
    for row, budget in enumerate(budgets):
        np.testing.assert_array_equal(tokens[row, :budget], reference[row, :budget])
        assert not tokens[row, budget:].any()
    with pytest.raises(ValueError, match="one int per row"):
        sampler.generate(ours, ids, mask, max_new_tokens=[3] * (ids.shape[0] + 1))
    with pytest.raises(ValueError, match="integers ≥ 1"):
        sampler.generate(ours, ids, mask, max_new_tokens=[0] + [3] * (ids.shape[0] - 1))


def test_sampled_logprobs_are_those_of_the_tempered_distribution(models):
    _, ours = models
    rng = np.random.default_rng(3)
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, [7])] * 2)
    out = sampler.generate(ours, ids, mask, max_new_tokens=1, temperature=0.7, rng=jax.random.key(1))
    logits = ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[:, -1]
    expected = jax.nn.log_softmax(logits / 0.7)[np.arange(2), np.asarray(out.tokens[:, 0])]
    np.testing.assert_allclose(np.asarray(out.logprobs[:, 0]), np.asarray(expected), atol=1e-5)


def test_top_k_and_top_p_restrict_the_support():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.key(0)
    top1 = sampling.sample(logits, keys, 1.0, top_k=1, top_p=1.0)
    assert set(np.asarray(top1).tolist()) == {0}
    top2 = sampling.sample(logits, keys, 1.0, top_k=2, top_p=1.0)
    counts = np.bincount(np.asarray(top2), minlength=4) / 4000
    assert counts[2] == counts[3] == 0 and abs(counts[0] - 0.5 / 0.8) < 0.03
    nucleus = sampling.sample(logits, keys, 1.0, top_k=0, top_p=0.8)  # {0, 1} reach 0.8
    assert set(np.asarray(nucleus).tolist()) == {0, 1}
    free = sampling.sample(logits, keys, 1.0, top_k=0, top_p=1.0)
    np.testing.assert_allclose(np.bincount(np.asarray(free), minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_greedy_tokens_is_argmax_with_its_tie_and_nan_rules():
    rng = np.random.default_rng(0)
    logits = rng.integers(-3, 3, (64, 50)).astype(np.float32)  # many ties: the first maximum wins
    logits[5, [7, 30]] = np.nan  # the first NaN wins
    logits[6] = -np.inf
    logits[7, 49] = np.inf
    got = np.asarray(jax.jit(sampling.greedy_tokens)(jnp.asarray(logits)))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)))
    assert got[5] == 7 and got[6] == 0 and got[7] == 49 and got.dtype == np.int32


def test_token_logprob_per_row_temperature():
    """logits [0, ln 3]: at T = 1 (and for greedy rows, T = 0, taken at 1) π = [1/4, 3/4]; at
    T = 2 the logits halve to [0, ln √3], π = [1, √3] / (1 + √3)."""
    logits = jnp.log(jnp.array([[1.0, 3.0]] * 3))
    got = sampling.token_logprob(logits, jnp.array([1, 0, 1]), jnp.array([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(np.asarray(got), np.log([0.75, 0.25, np.sqrt(3) / (1 + np.sqrt(3))]), rtol=1e-6)


def test_top_k_per_row():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    rows_k = jnp.where(jnp.arange(4000) < 2000, 1, 0)  # first half top-1, second half unrestricted
    tokens = sampling.sample(logits, jax.random.key(0), 1.0, rows_k, 1.0, max_top_k=2)
    tokens = np.asarray(tokens)
    assert set(tokens[:2000].tolist()) == {0}
    assert set(tokens[2000:].tolist()) == {0, 1, 2, 3}


def test_top_k_then_top_p_over_the_candidates_or_the_sorted_vocabulary():
    """top-k 3 then top-p 0.78 of [.4, .25, .15, .1, .06, .04]: the 3 best renormalised to
    [.5, .3125, .1875], whose first two reach 0.78 -> [.4, .25] / .65. Drawn over the top-k
    candidates when every row has top-k on, over the sorted vocabulary when a row has it off
    (that row: top-p alone keeps [.4, .25, .15] / .8)."""
    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    logits = jnp.log(jnp.array([probs] * 4000))
    keys = jax.random.split(jax.random.key(1), 4000)
    frequencies = lambda tokens: np.bincount(np.asarray(tokens), minlength=6) / len(tokens)
    top_k_on = sampling.sample(logits, keys, 1.0, 3, 0.78)
    np.testing.assert_allclose(frequencies(top_k_on), [0.4 / 0.65, 0.25 / 0.65, 0, 0, 0, 0], atol=0.03)
    rows_k = jnp.where(jnp.arange(4000) < 2000, 3, 0)
    mixed = sampling.sample(logits, keys, 1.0, rows_k, 0.78, max_top_k=3)
    np.testing.assert_allclose(frequencies(mixed[:2000]), [0.4 / 0.65, 0.25 / 0.65, 0, 0, 0, 0], atol=0.04)
    np.testing.assert_allclose(frequencies(mixed[2000:]), [0.5, 0.3125, 0.1875, 0, 0, 0], atol=0.04)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_policy_never_writes_a_vision_placeholder(models, temperature):
    """With the image placeholder made by far the most likely token in most steps, greedy and
    sampled rows write other tokens (a written placeholder would be replayed as an image slot);
    the log-probs recorded stay those of the unrestricted model."""
    _, ours = models
    rigged = nnx.clone(ours)
    image_token = rigged.config.image_token_id
    rigged.lm_head.kernel[...] = rigged.lm_head.kernel[...].at[:, image_token].set(1e3)  # [D, V]
    rng = np.random.default_rng(4)
    ids, mask = hf_tiny.left_pad([hf_tiny.sample(rng, [9]), hf_tiny.sample(rng, [6])])
    out = sampler.generate(rigged, ids, mask, max_new_tokens=6, temperature=temperature, rng=jax.random.key(0))
    written = np.asarray(out.tokens)
    assert not np.isin(written, [image_token, rigged.config.video_token_id, rigged.config.vision_start_token_id,
                                 rigged.config.vision_end_token_id]).any()
    assert (np.asarray(out.logprobs) < -100).mean() > 0.5  # the placeholder held ~all of π's mass


def test_sampling_params_are_validated():
    with pytest.raises(ValueError, match="top_p must be in"):
        sampling.SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be"):
        sampling.SamplingParams(temperature=-1.0)
