"""layers.dot_product_attention (values and gradients) and layers.cached_attention against a plain
softmax(q·kᵀ/√H)·v: under a dense mask (rows with no open key included), under a CausalMask attended
in blocks, and against a cache whose prompt slots are shared by groups of rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixel_jax.models import layers

B, T, N, K, H = 2, 11, 4, 2, 8  # G = 2 query heads per kv head


def reference_attention(q, k, v, mask):
    """GQA spelled out: kv heads repeated to N, masked logits, softmax, weighted values."""
    k, v = jnp.repeat(k, N // K, axis=2), jnp.repeat(v, N // K, axis=2)  # [B, S, N, H]
    logits = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(H)
    logits = jnp.where(mask[:, None], logits, -1e30)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, axis=-1), v)


def inputs(seed: int):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (B, T, N, H))
    k, v = jax.random.normal(keys[1], (B, T, K, H)), jax.random.normal(keys[2], (B, T, K, H))
    weights = jax.random.normal(keys[3], (B, T, N, H))  # a loss Σ w·out with no symmetry
    return q, k, v, weights


def value_and_grads(attention, q, k, v, mask, weights):
    loss = lambda q, k, v: jnp.sum(weights * attention(q, k, v, mask))
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


def assert_close(ours, reference):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_dense_mask_matches_the_reference_with_a_row_that_sees_nothing():
    q, k, v, weights = inputs(0)
    mask = jax.random.bernoulli(jax.random.key(1), 0.6, (B, T, T)).at[0, 3].set(False)  # [B, T, S]
    np.testing.assert_allclose(layers.dot_product_attention(q, k, v, mask), reference_attention(q, k, v, mask),
                               rtol=1e-5, atol=1e-5)
    assert_close(value_and_grads(layers.dot_product_attention, q, k, v, mask, weights),
                 value_and_grads(reference_attention, q, k, v, mask, weights))


@pytest.mark.parametrize("block", [2, 11, 64])  # a one-query last block; exactly one block; one larger block
def test_causal_mask_in_blocks_matches_the_dense_causal_mask(monkeypatch, block):
    monkeypatch.setattr(layers, "CAUSAL_BLOCK", block)
    q, k, v, weights = inputs(2)
    key_valid = jnp.array([[1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1], [1, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1]], bool)  # [B, S]
    causal = layers.CausalMask(key_valid)
    dense = jnp.tril(jnp.ones((T, T), bool))[None] & key_valid[:, None, :]
    np.testing.assert_array_equal(causal.dense(0, T), dense)
    assert_close(value_and_grads(layers.dot_product_attention, q, k, v, causal, weights),
                 value_and_grads(reference_attention, q, k, v, dense, weights))


def test_causal_mask_dense_block_is_the_slice_of_the_full_mask():
    key_valid = jnp.array([[0, 1, 1, 0, 1]], bool)
    full = layers.CausalMask(key_valid).dense(0, 5)
    np.testing.assert_array_equal(layers.CausalMask(key_valid).dense(2, 4), full[:, 2:4, :4])
    np.testing.assert_array_equal(full[0, 4], [False, True, True, False, True])


def cached_and_reference(group_size: int, own_block: int | None, mask_fn, unread_from: int = 7):
    """cached_attention over a group-shared prompt cache (P = 5) and R = 7 own slots per row, and
    the reference over each row's [its prompt's keys | its own keys], under mask_fn(key) [B, T, P + R].
    cached_attention's own keys and values are NaN from slot `unread_from` on: it must not read them."""
    prompts, p, r, t = 2, 5, 7, 3
    rows = prompts * group_size
    keys = jax.random.split(jax.random.key(3), 6)
    q = jax.random.normal(keys[0], (rows, t, N, H))
    prompt_k, prompt_v = jax.random.normal(keys[1], (prompts, p, K, H)), jax.random.normal(keys[2], (prompts, p, K, H))
    own_k, own_v = jax.random.normal(keys[3], (rows, r, K, H)), jax.random.normal(keys[4], (rows, r, K, H))
    mask = mask_fn(keys[5], (rows, t, p + r))
    unread_k, unread_v = (jnp.where(jnp.arange(r)[:, None, None] < unread_from, x, jnp.nan)  # [B, R, K, H]
                          for x in (own_k, own_v))
    ours = jax.jit(layers.cached_attention, static_argnums=6)(
        q, prompt_k.transpose(0, 2, 3, 1), prompt_v.transpose(0, 2, 1, 3),  # [B/G, K, H, P], [B/G, K, P, H]
        unread_k.transpose(0, 2, 3, 1), unread_v.transpose(0, 2, 1, 3), mask, own_block)  # [B, K, H, R], [B, K, R, H]
    full_k = jnp.concatenate([jnp.repeat(prompt_k, group_size, axis=0), own_k], axis=1)  # [B, P + R, K, H]
    full_v = jnp.concatenate([jnp.repeat(prompt_v, group_size, axis=0), own_v], axis=1)
    return ours, reference_attention(q, full_k, full_v, mask)


# own blocks of 3 slots: 7 = 3 + 3 + 1, the last block read as slots 4 … 6 with 4 and 5 already read
@pytest.mark.parametrize("own_block", [None, 3, 7])
@pytest.mark.parametrize("group_size", [1, 3])
def test_cached_attention_with_group_shared_prompts_matches_the_reference(group_size, own_block):
    """Rows b·G … b·G + G − 1 read prompt b's P slots from one shared copy and their own R slots
    (in blocks): the same as each row attending to [its prompt's keys | its own keys]."""
    random_mask = lambda key, shape: jax.random.bernoulli(key, 0.6, shape).at[0, 1].set(False).at[1, 2, -1].set(True)
    ours, reference = cached_and_reference(group_size, own_block, random_mask)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opened", [0, 1, 3, 4])
def test_cached_attention_reads_own_blocks_up_to_the_last_opened_slot(opened):
    """A cache whose rows have used only `opened` own slots (as early in a rollout): blocks of 3 own
    slots are read up to the last block some query opens, no further (the later slots are NaN)."""
    def used_mask(key, shape):
        p = shape[-1] - 7
        return jax.random.bernoulli(key, 0.7, shape).at[..., 0].set(True) & (jnp.arange(shape[-1]) < p + opened)
    ours, reference = cached_and_reference(3, 3, used_mask, unread_from=-(-opened // 3) * 3)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
