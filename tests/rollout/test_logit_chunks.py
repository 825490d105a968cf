"""The learner's head over the response in chunks of slots: the same log-probabilities, entropies
and gradients as over the whole response at once, without ever holding its [B, R, V] logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals  # what jax.ad_checkpoint.print_saved_residuals prints

from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.rollout.trajectory import sampled_logprobs_and_entropy

B, R = 2, 37  # 37 slots: chunks of 8 leave a padded last chunk


def setup():
    config = qvl.Qwen2_5_VLConfig.tiny()
    graphdef, state = nnx.split(qvl.Qwen2_5_VL(config, rngs=nnx.Rngs(0)))
    keys = jax.random.split(jax.random.key(1), 3)
    hidden = jax.random.normal(keys[0], (B, R, config.hidden_size))
    tokens = jax.random.randint(keys[1], (B, R), 0, config.vocab_size)
    temperature = jax.random.uniform(keys[2], (B, R), minval=0.5, maxval=1.5).at[0, :5].set(1.0)

    def objective(state, hidden, chunk):  # a scalar of both outputs, as the learner's loss uses them
        chosen, entropy = sampled_logprobs_and_entropy(nnx.merge(graphdef, state), hidden, tokens, temperature, chunk)
        return jnp.sum(chosen) + 0.1 * jnp.sum(entropy), (chosen, entropy)

    return state, hidden, objective, config.vocab_size


def test_chunks_give_the_values_and_gradients_of_the_whole_response():
    state, hidden, objective, _ = setup()
    grad = jax.jit(jax.grad(objective, argnums=(0, 1), has_aux=True), static_argnums=2)
    (whole_grads, (whole_chosen, whole_entropy)) = grad(state, hidden, R)
    (chunk_grads, (chunk_chosen, chunk_entropy)) = grad(state, hidden, 8)
    assert chunk_chosen.shape == chunk_entropy.shape == (B, R)
    np.testing.assert_allclose(np.asarray(chunk_chosen), np.asarray(whole_chosen), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(chunk_entropy), np.asarray(whole_entropy), rtol=1e-6, atol=1e-6)
    for got, expected in zip(jax.tree.leaves(chunk_grads), jax.tree.leaves(whole_grads)):
        assert np.all(np.isfinite(np.asarray(got)))  # the padded slots add no NaN
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_the_backward_pass_keeps_no_logits_of_the_whole_response():
    state, hidden, objective, vocab = setup()

    def largest_residual(chunk):  # elements of the largest array the backward pass keeps
        loss = lambda state, hidden: objective(state, hidden, chunk)[0]
        return max(a.size for a, source in saved_residuals(loss, state, hidden) if "from the argument" not in source)

    assert largest_residual(R) >= B * R * vocab  # the whole [B, R, V] log-softmax
    assert largest_residual(8) < B * 8 * vocab  # per chunk, only what the recomputation starts from
