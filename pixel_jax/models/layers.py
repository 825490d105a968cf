"""Layers shared by every model in pixel_jax: written once, used by the ViT and the decoder.

Einsum letters: B batch, T query length, S key length, N query heads, K key/value heads,
G query heads per kv head (N = K·G), Q queries of a kv head (Q = T·G), H head dim, D model dim,
F MLP hidden dim.

Parameters carry logical axis names (`out_sharding` metadata) that `pixel_jax.sharding` maps
to mesh axes; activations are constrained with `sharding.constrain` (the identity outside
`sharding.activation_rules`).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_MASKED = -1e30  # large negative logit for masked keys (finite: a fully masked row stays NaN-free)

# What a rematerialised block keeps from its forward pass for the backward pass (the rest is
# recomputed there): "none" no remat (every activation kept); "dots" the matmul outputs (the
# elementwise ops are recomputed); "full" nothing but the block's inputs (the block runs twice).
REMAT_POLICIES = {
    "none": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def rematerialised(call: Callable, policy: str) -> Callable:
    """call(module, *args) with its activations kept for the backward pass as `policy` says (a
    `REMAT_POLICIES` name); without differentiation, the same computation as `call`.

    The module is read, never written (a pure function of its state): so it may run inside a
    loop or branch of the caller, as the ViT does in the rollout's tool steps.
    """
    if policy == "none":
        return call

    def checkpointed(module: nnx.Module, *args):
        graphdef, state = nnx.split(module)
        pure = lambda state, *args: call(nnx.merge(graphdef, state), *args)
        return jax.checkpoint(pure, policy=REMAT_POLICIES[policy])(state, *args)

    return checkpointed


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


# Decoding a few rows reads every weight once per token, so on CPU its speed is the rate at which
# the projections stream their kernels from memory. XLA:CPU's dot kernels read a row-major [D, F]
# kernel in column panels, each strided by the row length, and stream ~10 GB/s on this project's
# 2-core machines; the same product over the kernel stored as contiguous [D, 64] panels (one
# batched product of [M, D] x [D, 64] per panel) streams 20-30 GB/s, as fast as a plain sum reads
# memory. Beyond ~64 rows the product is compute-bound and the plain layout is as fast or faster
# ([M, 256] x [256, 1024] from memory, one thread: M = 8 99 vs 50 µs, 64 245 vs 226, 128 415 vs 426).
PANEL_WIDTH = 64
PANEL_MAX_ROWS = 64
PANEL_MAX_BYTES = 2**30  # the panels are a copy of the kernels: at most 1 GiB of it


def panels_pay_off(rows: int, module: nnx.Module) -> bool:
    """Whether products of `rows` rows with the `Einsum`s of `module` should go through panels
    (`add_panels`): on CPU (accelerators read the plain layout at full speed), for at most
    PANEL_MAX_ROWS rows, when the copy of the kernels takes at most PANEL_MAX_BYTES."""
    kernels = [m.kernel for _, m in nnx.iter_graph(module) if isinstance(m, Einsum)]
    copy_bytes = sum(k.size * k.dtype.itemsize for k in kernels)
    return jax.default_backend() == "cpu" and rows <= PANEL_MAX_ROWS and copy_bytes <= PANEL_MAX_BYTES


def to_panels(kernel: jax.Array, contracted: int = 1) -> jax.Array | None:
    """kernel [*I, *O] (its first `contracted` dims are the input) -> panels [F / P, D, P] with
    D = prod(I), F = prod(O), P = PANEL_WIDTH: panel j holds output columns j·P … j·P + P − 1,
    contiguous. None when F is not a multiple of P (the kernel stays in its plain layout)."""
    d = math.prod(kernel.shape[:contracted])
    f = kernel.size // d
    if f % PANEL_WIDTH:
        return None
    return kernel.reshape(d, f // PANEL_WIDTH, PANEL_WIDTH).transpose(1, 0, 2)  # [F/P, D, P]


def panel_product(x: jax.Array, panels: jax.Array, out_dtype=None) -> jax.Array:
    """x [..., D] · the kernel whose panels are [F / P, D, P] -> [..., F] (`to_panels`)."""
    lead, d = x.shape[:-1], x.shape[-1]
    j, _, p = panels.shape
    rows = jnp.broadcast_to(x.reshape(1, -1, d), (j, math.prod(lead), d))  # [F/P, M, D]
    y = jnp.einsum("JMD,JDP->JMP", rows, panels.astype(x.dtype), preferred_element_type=out_dtype)  # [F/P, M, P]
    return y.transpose(1, 0, 2).reshape(*lead, j * p)


class Einsum(nnx.Module):
    """A projection written as an equation, e.g. "BTD,DNH->BTNH", with an optional bias.

    The equation contracts the trailing `contracted` dims of x with the leading ones of the
    kernel. `add_panels` gives it the kernel also as panels (`to_panels`) to multiply through:
    the same product, for decoding a few rows on CPU.
    """

    contracted = 1
    panels = None  # [F / P, D, P] or None (see `add_panels`)

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
        if self.panels is None:
            y = self._product(x, self.kernel[...].astype(x.dtype))
        else:
            lead = x.shape[:x.ndim - self.contracted]
            y = panel_product(x.reshape(*lead, -1), self.panels)
            y = y.reshape(*lead, *self.kernel.shape[self.contracted:])
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y

    def _product(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return jnp.einsum(self.equation, x, kernel)


class HeadsOutProjection(Einsum):
    """The attention output projection [B, T, N, H] -> [B, T, D] with a per-head kernel [N, H, D],
    computed as one [B·T, N·H] x [N·H, D] product. Written per head ("BTNH,NHD->BTD"), XLA:CPU
    copies the kernel into a [H, N, D] layout inside a decode loop, on every step."""

    contracted = 2

    def __init__(self, kernel_shape: Sequence[int], kernel_axes: Sequence[str | None], *, param_dtype,
                 rngs: nnx.Rngs):
        super().__init__("BTF,FD->BTD", kernel_shape, kernel_axes, param_dtype=param_dtype, rngs=rngs)

    def _product(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        b, t, n, h = x.shape
        return jnp.einsum(self.equation, x.reshape(b, t, n * h), kernel.reshape(n * h, -1))  # free reshapes


def add_panels(module: nnx.Module, dtype) -> None:
    """Gives every `Einsum` in `module` whose output width is a multiple of PANEL_WIDTH its kernel
    as panels in `dtype`, to multiply through from then on. For a copy made inside the jitted
    program, outside its decode loop: the panels are laid out once per program."""
    for _, projection in nnx.iter_graph(module):
        if isinstance(projection, Einsum):
            panels = to_panels(projection.kernel[...].astype(dtype), projection.contracted)
            if panels is not None:
                projection.panels = nnx.data(panels)


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


class CausalMask(NamedTuple):
    """The mask of a sequence attending to itself without a cache, kept structured:
    query t sees the valid keys s ≤ t. Dense, it is `dense(0, S)`; `dot_product_attention` uses
    the structure to skip the keys after each block of queries (it never forms the [B, S, S] array).
    A query that sees no key at all (a hole before the first valid slot) gets another meaningless
    output than under the dense mask: a mean of the values of its block's keys, not of all.
    """

    key_valid: jax.Array  # [B, S] bool

    def dense(self, start: int, stop: int) -> jax.Array:
        """[B, stop − start, stop]: queries start … stop − 1 against keys 0 … stop − 1."""
        causal = jnp.arange(start, stop)[:, None] >= jnp.arange(stop)[None, :]  # [T', S']
        return causal[None] & self.key_valid[:, None, :stop]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | CausalMask) -> jax.Array:
    """Grouped-query attention with an explicit boolean mask.

    q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S] (True = may attend) or a `CausalMask` (T = S)
    -> [B, T, N, H]. Logits and softmax in float32.

    Written for the CPU backend, where the [B, K, Q, S] logits and probabilities (Q = T·G: the G
    query heads of a kv head folded into the query axis) cost more to move than to compute:
    q is scaled by 1/√H before its product, not the logits after it; both products take operands
    with their contracted axis last ("BKQH,BKSH", "BKQS,BKHS"), so that the logits leave the
    first one in the layout the softmax and the second one read (never transposed); the gradient
    is written out (`_grouped_attention_bwd`); and under a `CausalMask` the queries attend in
    blocks of `CAUSAL_BLOCK`, each to the keys up to its last query only (with n blocks, (n + 1)/2n
    of the dense work).
    """
    t, groups = q.shape[1], q.shape[2] // k.shape[2]
    q = _group_queries(q, k.shape[2])  # [B, K, Q, H]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 3, 1)  # [B, K, S, H], [B, K, H, S]
    if isinstance(mask, CausalMask):
        blocks = [_grouped_attention(q[:, :, start * groups:stop * groups], k[:, :, :stop], v[..., :stop],
                                     mask.dense(start, stop))
                  for start, stop in _blocks(t, CAUSAL_BLOCK)]
        out = jnp.concatenate(blocks, axis=2)  # [B, K, Q, H]
    else:
        out = _grouped_attention(q, k, v, mask)  # [B, K, Q, H]
    return _ungroup_queries(out, t)


CAUSAL_BLOCK = 128  # queries per block under a CausalMask


def _blocks(length: int, size: int) -> list[tuple[int, int]]:
    """[(start, stop)] covering 0 … length − 1 in blocks of `size` (the last one shorter)."""
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def _group_mask(mask: jax.Array) -> jax.Array:
    """mask [B, T, S] -> [B, 1, T, 1, S], against [B, K, T, G, S] (`_grouped`)."""
    return mask[:, None, :, None, :]


def _grouped(x: jax.Array, t: int) -> jax.Array:
    """[B, K, Q, S] -> [B, K, T, G, S] (a free reshape: query row t·G + g is query t of group g)."""
    b, kv_heads, queries, s = x.shape
    return x.reshape(b, kv_heads, t, queries // t, s)


def _masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax over the keys `mask` [B, T, S] opens: logits [B, K, Q, S] (Q = T·G) -> probs [B, K, Q, S]."""
    logits = jnp.where(_group_mask(mask), _grouped(logits, mask.shape[1]), _MASKED)  # [B, K, T, G, S]
    return jax.nn.softmax(logits, axis=-1).reshape(logits.shape[:2] + (-1, logits.shape[-1]))


def _group_queries(q: jax.Array, kv_heads: int) -> jax.Array:
    """q [B, T, N, H] -> [B, K, Q, H] scaled by 1/√H: the G = N/K query heads of kv head k folded
    into its query axis (row t·G + g is query t of head k·G + g)."""
    b, t, n, h = q.shape
    q = (q * h**-0.5).reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 1, 3, 4)  # [B, K, T, G, H]
    return q.reshape(b, kv_heads, t * (n // kv_heads), h)


def _ungroup_queries(out: jax.Array, t: int) -> jax.Array:
    """[B, K, Q, H] -> [B, T, N, H] (the inverse of `_group_queries`' folding)."""
    b, kv_heads, queries, h = out.shape
    groups = queries // t
    return out.reshape(b, kv_heads, t, groups, h).transpose(0, 2, 1, 3, 4).reshape(b, t, kv_heads * groups, h)


@jax.custom_vjp
def _grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q·kᵀ)·v over the keys `mask` opens: q [B, K, Q, H] (scaled), k [B, K, S, H],
    v [B, K, H, S], mask [B, T, S] -> [B, K, Q, H]."""
    return _grouped_attention_fwd(q, k, v, mask)[0]


def _grouped_attention_fwd(q, k, v, mask):
    logits = jnp.einsum("BKQH,BKSH->BKQS", q, k, preferred_element_type=jnp.float32)  # [B, K, Q, S]
    probs = _masked_softmax(logits, mask)  # [B, K, Q, S]
    out = jnp.einsum("BKQS,BKHS->BKQH", probs.astype(v.dtype), v)  # [B, K, Q, H]
    return out, (q, k, v, mask, probs, out)


def _grouped_attention_bwd(residuals, d_out):
    """With P the probabilities and O = P·V: dP = dO·Vᵀ and the softmax gradient
    dL = P ⊙ (dP − Σ_s P·dP), where Σ_s P_s·dP_s = dO·O is a sum over H instead of S (as in
    FlashAttention, it spares a pass over the [B, K, Q, S] arrays); dq = dL·k, dk = dLᵀ·q,
    dv = Pᵀ·dO. dL is zeroed on closed keys (which matters only in rows whose keys are all
    closed, where P is uniform rather than 0 there)."""
    q, k, v, mask, probs, out = residuals
    t = mask.shape[1]
    d_probs = jnp.einsum("BKQH,BKHS->BKQS", d_out, v, preferred_element_type=jnp.float32)  # [B, K, Q, S]
    row_dot = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)  # [B, K, Q, 1]
    d_logits = _grouped(probs * (d_probs - row_dot), t)  # [B, K, T, G, S]
    d_logits = jnp.where(_group_mask(mask), d_logits, 0.0).reshape(probs.shape).astype(q.dtype)
    d_q = jnp.einsum("BKQS,BKSH->BKQH", d_logits, k)
    d_k = jnp.einsum("BKQS,BKQH->BKSH", d_logits, q)
    d_v = jnp.einsum("BKQS,BKQH->BKHS", probs.astype(v.dtype), d_out)
    return d_q, d_k, d_v, None


_grouped_attention.defvjp(_grouped_attention_fwd, _grouped_attention_bwd)


OWN_BLOCK = 512  # own cache slots per step of `cached_attention`'s loop


def cached_attention(
    q: jax.Array,
    prompt_keys: jax.Array,
    prompt_values: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    own_block: int | None = None,
) -> jax.Array:
    """Grouped-query attention against a KV cache whose prompt slots are shared by groups of rows
    (inference only: no gradient is written).

    q [B, T, N, H]; the prompts' keys [B/G, K, H, P] and values [B/G, K, P, H], prompt b shared by
    rows b·G … b·G + G − 1; the rows' own keys [B, K, H, R] and values [B, K, R, H];
    mask [B, T, P + R] over [prompt slots | own slots] -> [B, T, N, H]. Logits and softmax in float32.

    A decode step's cost is the cache it reads, so it reads only what it must:
    - the G rows of a group read their prompt once, in one product with G times the queries
      (group-major [B/G, K, G·Q, ·]);
    - the own slots are read in blocks of `own_block` (default `OWN_BLOCK`), in a loop that stops
      after the last block any query opens: early in a rollout, most of a long cache is not read.
    The softmax is accumulated over the parts as in FlashAttention (a running maximum, rescaled
    normalisers and outputs), so only [B, K, Q]-sized statistics change layout. Every product reads
    the cache as its right-hand operand in the [contracted, free] layout ("…QH,…HS", "…QS,…SH")
    the CPU dot kernels stream without packing it first. A query that opens no slot gets the mean
    of the values of the slots read (all slots, as `dot_product_attention`, when some query opens
    the last block).
    """
    t, (groups, kv_heads, _, p) = q.shape[1], prompt_keys.shape
    q = _group_queries(q, kv_heads)  # [B, K, Q, H]
    rows, _, queries, h = q.shape
    own_slots = keys.shape[-1]
    block = min(own_block or OWN_BLOCK, own_slots)

    def to_groups(x):  # [B, K', ...] -> [B/G, K', G, ...]
        return x.reshape(groups, rows // groups, *x.shape[1:]).swapaxes(1, 2)

    def to_rows(x):  # [B/G, K', G, ...] -> [B, K', ...]
        return x.swapaxes(1, 2).reshape(rows, *x.shape[1:2], *x.shape[3:])

    prompt_q = to_groups(q).reshape(groups, kv_heads, -1, h)  # [B/G, K, G·Q, H]
    prompt_logits = jnp.einsum("BKQH,BKHS->BKQS", prompt_q, prompt_keys, preferred_element_type=jnp.float32)
    prompt_logits = jnp.where(to_groups(_group_mask(mask[..., :p])),  # [B/G, K, G, T, Gh, P]
                              prompt_logits.reshape(groups, kv_heads, rows // groups, t, -1, p), _MASKED)
    top = prompt_logits.max(-1)  # [B/G, K, G, T, Gh]
    prompt_weights = jnp.exp(prompt_logits - top[..., None])
    prompt_out = jnp.einsum("BKQS,BKSH->BKQH", prompt_weights.reshape(groups, kv_heads, -1, p).astype(values.dtype),
                            prompt_values, preferred_element_type=jnp.float32)  # [B/G, K, G·Q, H]
    softmax = _Running(to_rows(top), to_rows(prompt_weights.sum(-1)),
                       to_rows(prompt_out.reshape(groups, kv_heads, -1, queries, h)))

    def read_block(index, softmax):  # own slots [start, start + block); those before index·block were read
        start = jnp.minimum(index * block, own_slots - block)  # the last block ends at R
        block_mask = jax.lax.dynamic_slice_in_dim(mask, p + start, block, axis=2)  # [B, T, block]
        block_keys = jax.lax.dynamic_slice_in_dim(keys, start, block, axis=3)  # [B, K, H, block]
        block_values = jax.lax.dynamic_slice_in_dim(values, start, block, axis=2)  # [B, K, block, H]
        logits = jnp.einsum("BKQH,BKHS->BKQS", q, block_keys, preferred_element_type=jnp.float32)
        logits = jnp.where(_group_mask(block_mask), _grouped(logits, t), _MASKED)  # [B, K, T, Gh, block]
        read = start + jnp.arange(block) < index * block  # weight 0 even for a query that opens nothing
        return softmax.add(jnp.where(read, -jnp.inf, logits), block_values)

    if block == own_slots:  # at most one block: read it whole (a loop would only add its overhead)
        softmax = read_block(0, softmax) if own_slots else softmax
    else:
        opened = jnp.any(mask[..., p:], axis=(0, 1))  # [R]: some query opens the slot
        blocks_read = (jnp.max(jnp.where(opened, jnp.arange(own_slots) + 1, 0)) + block - 1) // block
        softmax = jax.lax.fori_loop(0, blocks_read, read_block, softmax)
    return _ungroup_queries(softmax.result().astype(q.dtype), t)


class _Running(NamedTuple):
    """Softmax-weighted sums accumulated over blocks of keys (FlashAttention's online softmax):
    the running maximum logit, the normaliser and the unnormalised output, all relative to `top`."""

    top: jax.Array  # [B, K, T, Gh] float32
    total: jax.Array  # [B, K, T, Gh] float32
    out: jax.Array  # [B, K, Q, H] float32

    def add(self, logits: jax.Array, values: jax.Array) -> "_Running":
        """logits [B, K, T, Gh, S] (closed keys at _MASKED) of keys whose values are [B, K, S, H]."""
        b, kv_heads, t, groups, s = logits.shape
        top = jnp.maximum(self.top, logits.max(-1))
        scale = jnp.exp(self.top - top)  # [B, K, T, Gh]
        weights = jnp.exp(logits - top[..., None])  # [B, K, T, Gh, S]
        out = jnp.einsum("BKQS,BKSH->BKQH", weights.reshape(b, kv_heads, t * groups, s).astype(values.dtype),
                         values, preferred_element_type=jnp.float32)  # [B, K, Q, H]
        return _Running(top, self.total * scale + weights.sum(-1),
                        self.out * scale.reshape(b, kv_heads, -1, 1) + out)

    def result(self) -> jax.Array:
        return self.out / self.total.reshape(self.out.shape[:3] + (1,))  # [B, K, Q, H]
