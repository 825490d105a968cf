"""Layers shared by every model in pixel_jax: written once, used by the ViT and the decoder.

Einsum letters: B batch, T query length, S key length, N query heads, K key/value heads,
G query heads per kv head (N = K·G), H head dim, D model dim, F MLP hidden dim.

Parameters carry logical axis names (`out_sharding` metadata) that `pixel_jax.sharding` maps
to mesh axes; activations are constrained with `sharding.constrain` (the identity outside
`sharding.activation_rules`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_MASKED = -1e30  # large negative logit for masked keys (finite: a fully masked row stays NaN-free)


def make_param(
        rngs: nnx.Rngs | None,
        shape: Sequence[int],
        axes: Sequence[str | None],
        dtype,
        init: str = "normal",
) -> nnx.Param:
    """A parameter with logical axis names in its `out_sharding` metadata.

    Created unsharded (flax's eager sharding is off); `pixel_jax.sharding` places parameters by
    resolving these names with its rules (`create_sharded`, `from_pretrained(mesh=...)`).
    """
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class RMSNorm(nnx.Module):
    """y = w · x / sqrt(mean(x²) + ε), normalised in float32 as the reference does."""

    def __init__(self, dim: int, *, eps: float, param_dtype, axis_name: str = "norm"):
        self.weight = make_param(None, (dim,), (axis_name,), param_dtype, init="ones")
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


class Einsum(nnx.Module):
    """A projection written as an equation, e.g. "BTD,DNH->BTNH", with an optional bias."""

    def __init__(
            self,
            equation: str,
            kernel_shape: Sequence[int],
            kernel_axes: Sequence[str | None],
            *,
            bias_shape: Sequence[int] | None = None,
            bias_axes: Sequence[str | None] | None = None,
            param_dtype,
            rngs: nnx.Rngs,
    ):
        self.equation = equation
        self.kernel = make_param(rngs, kernel_shape, kernel_axes, param_dtype)
        self.bias = (
                make_param(None, bias_shape, bias_axes, param_dtype, init="zeros") if bias_shape is not None else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum(self.equation, x, self.kernel[...].astype(x.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class GatedMLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) · up(x)); biases optional (the ViT has them, the decoder not)."""

    def __init__(self, dim: int, hidden: int, *, bias: bool, param_dtype, rngs: nnx.Rngs,
                              axes: tuple[str, str] = ("embed", "mlp")):
        d_axis, f_axis = axes
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Einsum("...D,DF->...F", (dim, hidden), (d_axis, f_axis),
                                                        bias_shape=(hidden,) if bias else None, bias_axes=(f_axis,), **kw)
        self.up_proj = Einsum("...D,DF->...F", (dim, hidden), (d_axis, f_axis),
                                                    bias_shape=(hidden,) if bias else None, bias_axes=(f_axis,), **kw)
        self.down_proj = Einsum("...F,FD->...D", (hidden, dim), (f_axis, d_axis),
                                                        bias_shape=(dim,) if bias else None, bias_axes=(d_axis,), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [..., T, N, H] rotated by cos/sin [..., T, H] (broadcast over heads)."""
    cos, sin = cos[..., None, :], sin[..., None, :]
    return x * cos + rotate_half(x) * sin


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention with an explicit boolean mask.

    q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S] (True = may attend) -> [B, T, N, H].
    Logits and softmax in float32.
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, n // kv_heads, h)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    logits = logits * (h**-0.5)
    logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [B, K, G, T, S]
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
    return out.reshape(b, t, n, h)
