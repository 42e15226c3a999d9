"""Multi-head attention over packed rows: tokens attend only within their own segment (clip).

Shapes: ``B`` rows, ``L`` query tokens, ``K`` key tokens, ``N`` heads of ``H`` features.
Which kernel computes it, and how it is split over the mesh, is chosen by
:class:`AttentionKernel` (from ``model.attention`` and ``model.sequence_parallel``); see
``sora_jax/parallel/sequence_attention.py``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.model.rope import apply_rope
from sora_jax.parallel.sequence_attention import LocalKernel, all_to_all_attention, ring_attention
from sora_jax.parallel.sharding import Rules, axis_size, logical_to_spec, mesh_axes


def segment_mask(q_segments_bl: jax.Array, kv_segments_bk: jax.Array) -> jax.Array:
    """``[B, 1, L, K]`` bool: query and key belong to the same segment.

    Padding (segment 0) attends to padding, so no row of the mask is empty and no softmax sees
    only masked logits; padding outputs are never read.
    """
    return q_segments_bl[:, None, :, None] == kv_segments_bk[:, None, None, :]


@dataclasses.dataclass(frozen=True)
class AttentionKernel:
    """How attention is computed; hashable, so it is part of a module's static structure.

    ``kernel``: xla | cudnn | splash | ring. ``sequence_parallel``: all_to_all | gather, used when
    keys are split over the mesh's sequence axis. ``rules`` map logical axes to mesh axes; attention
    reads the activation names (``activation_batch``, ``activation_length``, ``activation_heads``).
    ``interpret``: run the splash kernel in the Pallas interpreter (to check it off TPU).
    """

    kernel: str = "xla"
    sequence_parallel: str = "all_to_all"
    rules: Rules = ()
    interpret: bool = False


def dense_attention(
    q_blnh: jax.Array,
    k_bknh: jax.Array,
    v_bknh: jax.Array,
    q_segments_bl: jax.Array,
    kv_segments_bk: jax.Array,
    implementation: str | None = None,
) -> jax.Array:
    """Masked softmax attention ``[B, L, N, H]`` with the whole ``[L, K]`` logits per head.

    ``implementation="cudnn"`` is the fused GPU kernel (``jax.nn.dot_product_attention``). Otherwise
    XLA computes it as written here, which makes fewer passes over the ``[B, N, L, K]`` arrays than
    a plain softmax: the mask is added (its gradient is no pass at all), the softmax's max is held
    constant (its gradient is zero), and the normalisation divides the ``[L, H]`` output rather
    than the ``[L, K]`` weights. On CPU those passes, not the matmuls, are most of attention's
    time. Logits and weights are float32 whatever the inputs' dtype.
    """
    mask = segment_mask(q_segments_bl, kv_segments_bk)
    if implementation is not None:
        return jax.nn.dot_product_attention(q_blnh, k_bknh, v_bknh, mask=mask, implementation=implementation)
    logits = jnp.einsum("blnh,bknh->bnlk", q_blnh, k_bknh, preferred_element_type=jnp.float32)
    # An additive mask: its gradient passes the logits' through untouched, where a select would
    # cost one more pass over them. -1e30 underflows exp to exactly 0. The scale joins the same pass.
    logits = logits * q_blnh.shape[-1] ** -0.5 + jnp.where(mask, 0.0, -1e30).astype(jnp.float32)
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    # Every row has a key of its own segment (padding attends to padding), so no sum is 0.
    totals_bln = weights.sum(axis=-1).transpose(0, 2, 1)
    out = jnp.einsum(
        "bnlk,bknh->blnh", weights.astype(v_bknh.dtype), v_bknh, preferred_element_type=jnp.float32
    )
    return (out / totals_bln[..., None]).astype(q_blnh.dtype)


def local_kernel(kernel: str, interpret: bool = False) -> LocalKernel:
    """The single-device computation of ``kernel`` (ring attention is dense within one device)."""
    if kernel == "splash":
        from sora_jax.model.splash import splash_attention  # Imports Pallas TPU code: only when used.

        return functools.partial(splash_attention, interpret=interpret)
    implementation = "cudnn" if kernel == "cudnn" else None
    return lambda q, k, v, qs, ks: dense_attention(q, k, v, qs, ks, implementation)


def attend(
    q_blnh: jax.Array,
    k_bknh: jax.Array,
    v_bknh: jax.Array,
    q_segments_bl: jax.Array,
    kv_segments_bk: jax.Array,
    kernel: AttentionKernel,
    *,
    self_attention: bool,
) -> jax.Array:
    """Segment-masked attention ``[B, L, N, H]`` as ``kernel`` says, on the current mesh.

    Without a mesh (``jax.set_mesh``), or where XLA can partition the computation itself (dense
    kernels whose keys are not split over ``sequence``), it is one call that XLA shards over rows
    and heads. Otherwise it runs per device under ``jax.shard_map``: Pallas kernels cannot be
    partitioned by XLA, and split keys need the all-to-all or ring exchange.
    """
    mesh = jax.sharding.get_abstract_mesh()
    compute = local_kernel(kernel.kernel, kernel.interpret)
    if mesh.empty:
        return compute(q_blnh, k_bknh, v_bknh, q_segments_bl, kv_segments_bk)
    rules = kernel.rules
    # Activation names: the layout of the queries, keys and values, whatever the input batch's is.
    sequence = axis_size(mesh, "activation_length", rules)
    exchange = kernel.kernel == "ring" or kernel.sequence_parallel == "all_to_all"
    keys_split = self_attention and sequence > 1 and exchange
    if kernel.kernel != "splash" and not keys_split:
        return compute(q_blnh, k_bknh, v_bknh, q_segments_bl, kv_segments_bk)

    axis = mesh_axes("activation_length", rules)
    if kernel.kernel == "ring" and keys_split:
        body = lambda q, k, v, qs, ks: ring_attention(q, k, v, qs, ks, axis, sequence)  # noqa: E731
    elif keys_split:
        body = lambda q, k, v, qs, ks: all_to_all_attention(compute, q, k, v, qs, ks, axis)  # noqa: E731
    else:
        body = compute  # Splash on its shard; keys not split (cross-attention, or gathered).
    key_length = "activation_length" if keys_split else None
    q_spec = logical_to_spec(("activation_batch", "activation_length", "activation_heads", None), rules)
    kv_spec = logical_to_spec(("activation_batch", key_length, "activation_heads", None), rules)
    return jax.shard_map(
        body,
        in_specs=(
            q_spec,
            kv_spec,
            kv_spec,
            logical_to_spec(("activation_batch", "activation_length"), rules),
            logical_to_spec(("activation_batch", key_length), rules),
        ),
        out_specs=q_spec,
        check_vma=False,
    )(q_blnh, k_bknh, v_bknh, q_segments_bl, kv_segments_bk)


def dense(
    in_dim: int,
    out_dim: int,
    names: tuple[str | None, str | None],
    rngs: nnx.Rngs,
    *,
    zero_init: bool = False,
    kernel_init: nnx.Initializer | None = None,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
) -> nnx.Linear:
    """A Linear layer whose kernel ``[in, out]`` and bias ``[out]`` carry logical axis names.

    The kernel starts at zero with ``zero_init``, else from ``kernel_init`` (default Xavier uniform);
    the bias at zero."""
    if zero_init:
        kernel_init = nnx.initializers.zeros_init()
    elif kernel_init is None:
        kernel_init = nnx.initializers.xavier_uniform()
    return nnx.Linear(
        in_dim,
        out_dim,
        kernel_init=nnx.with_partitioning(kernel_init, names),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (names[1],)),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Self-attention (``context`` = the queries' own tokens) or cross-attention to ``context``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        rngs: nnx.Rngs,
        *,
        context_dim: int | None = None,
        qk_norm: bool = True,
        kernel: AttentionKernel = AttentionKernel(),
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ) -> None:
        self.heads, self.head_dim = heads, dim // heads
        self.kernel = kernel
        kv_dim = context_dim or dim
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.query = dense(dim, dim, ("embed", "heads"), rngs, **kw)
        self.key = dense(kv_dim, dim, ("embed", "heads"), rngs, **kw)
        self.value = dense(kv_dim, dim, ("embed", "heads"), rngs, **kw)
        self.out = dense(dim, dim, ("heads", "embed"), rngs, **kw)
        if qk_norm:
            norm = dict(
                scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (None,)),
                rngs=rngs,
                **kw,
            )
            self.query_norm = nnx.RMSNorm(self.head_dim, **norm)
            self.key_norm = nnx.RMSNorm(self.head_dim, **norm)
        else:
            self.query_norm = self.key_norm = None

    def _project_together(self, x_bld: jax.Array, query: bool = True) -> list[jax.Array]:
        """``[q,] k, v``, each ``[B, L, D]``: ``x`` through those layers as one matmul.

        The kernels are stacked on a new leading axis, which keeps each one's sharding as it is,
        and the products come out stacked on it, so taking each is a slice of contiguous memory.
        One matmul three times as wide runs closer to the machine's peak than three (on CPU, and
        for the small widths of a CPU run, markedly).
        """
        layers = (self.query, self.key, self.value) if query else (self.key, self.value)
        kernels = jnp.stack([layer.kernel[...] for layer in layers])  # [G, Din, D]
        biases = jnp.stack([layer.bias[...] for layer in layers])  # [G, D]
        dtype = layers[0].dtype
        x_bld, kernels, biases = x_bld.astype(dtype), kernels.astype(dtype), biases.astype(dtype)
        out_gbld = jnp.einsum("bld,gde->gble", x_bld, kernels) + biases[:, None, None, :]
        return list(out_gbld)

    def __call__(
        self,
        x_bld: jax.Array,
        context_bkd: jax.Array,
        q_segments_bl: jax.Array,
        kv_segments_bk: jax.Array,
        *,
        query_angles: jax.Array | None = None,
        key_angles: jax.Array | None = None,
        self_attention: bool = False,
    ) -> jax.Array:
        """``x [B, L, D]`` attends to the tokens of ``context [B, K, Dc]`` in its own segment.

        ``*_angles [B, L|K, H/2]`` rotate queries/keys (RoPE) when given. ``self_attention``: the
        context is ``x`` itself, so its tokens are split over the mesh like the queries.
        """
        b, length, dim = x_bld.shape
        split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)  # noqa: E731
        if self_attention:
            q_blnh, k_bknh, v_bknh = (split(t) for t in self._project_together(x_bld))
        else:
            q_blnh = split(self.query(x_bld))
            k_bknh, v_bknh = (split(t) for t in self._project_together(context_bkd, query=False))
        if self.query_norm is not None:
            q_blnh, k_bknh = self.query_norm(q_blnh), self.key_norm(k_bknh)
        if query_angles is not None:
            q_blnh = apply_rope(q_blnh, query_angles)
        if key_angles is not None:
            k_bknh = apply_rope(k_bknh, key_angles)
        out_blnh = attend(
            q_blnh, k_bknh, v_bknh, q_segments_bl, kv_segments_bk, self.kernel, self_attention=self_attention
        )
        return self.out(out_blnh.reshape(b, length, dim))


class JointAttention(nnx.Module):
    """MMDiT attention (SD3): two token streams, each with its own projections, in one attention.

    The clip tokens ``x [B, L, D]`` and the caption tokens ``c [B, K, D]`` of a packed row are
    projected by their own layers (``video_attention``, ``caption_attention``: LoRA's default
    targets, ``attention.query`` ..., name both), then attend together over the row's
    ``L + K`` tokens, each to the tokens of its own segment: a clip's tokens and its caption's share
    the clip's segment id, so a clip reads its caption and its caption reads the clip, and nothing
    crosses clips. RoPE turns only the clip tokens (caption tokens have no place in the video);
    word order is already in the caption states.

    Keys are not split over the mesh's ``sequence`` axis (``attend(..., self_attention=False)``):
    XLA partitions the dense kernels as it needs. Splash and ring attention take one stream; the
    config refuses them with ``model.text_attention = "joint"``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        rngs: nnx.Rngs,
        *,
        qk_norm: bool = True,
        kernel: AttentionKernel = AttentionKernel(),
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ) -> None:
        kw = dict(qk_norm=qk_norm, kernel=kernel, dtype=dtype, param_dtype=param_dtype)
        self.video_attention = Attention(dim, heads, rngs, **kw)
        self.caption_attention = Attention(dim, heads, rngs, **kw)
        self.kernel = kernel

    def _heads(self, stream: Attention, x_bld: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``q, k, v [B, L, N, H]`` of one stream (its query and key norms applied)."""
        split = lambda t: t.reshape(*t.shape[:2], stream.heads, stream.head_dim)  # noqa: E731
        q, k, v = (split(t) for t in stream._project_together(x_bld))
        if stream.query_norm is not None:
            q, k = stream.query_norm(q), stream.key_norm(k)
        return q, k, v

    def __call__(
        self,
        x_bld: jax.Array,
        c_bkd: jax.Array,
        segments_bl: jax.Array,
        text_segments_bk: jax.Array,
        angles_blh: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """``(x's update [B, L, D], c's update [B, K, D])``, each through its stream's output layer."""
        b, length, dim = x_bld.shape
        q, k, v = self._heads(self.video_attention, x_bld)
        q, k = apply_rope(q, angles_blh), apply_rope(k, angles_blh)
        qt, kt, vt = self._heads(self.caption_attention, c_bkd)
        segments = jnp.concatenate([segments_bl, text_segments_bk], axis=1)
        joint = lambda a, t: jnp.concatenate([a, t.astype(a.dtype)], axis=1)  # noqa: E731
        out = attend(
            joint(q, qt), joint(k, kt), joint(v, vt), segments, segments, self.kernel, self_attention=False
        )
        video_out = self.video_attention.out(out[:, :length].reshape(b, length, dim))
        text_out = self.caption_attention.out(out[:, length:].reshape(b, -1, dim))
        return video_out, text_out
