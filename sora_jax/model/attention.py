"""Multi-head attention over packed rows: tokens attend only within their own segment (clip).

Shapes: ``B`` rows, ``L`` query tokens, ``K`` key tokens, ``N`` heads of ``H`` features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.model.rope import apply_rope


def segment_mask(q_segments_bl: jax.Array, kv_segments_bk: jax.Array) -> jax.Array:
    """``[B, 1, L, K]`` bool: query and key belong to the same segment.

    Padding (segment 0) attends to padding, so no row of the mask is empty and no softmax sees
    only masked logits; padding outputs are never read.
    """
    return q_segments_bl[:, None, :, None] == kv_segments_bk[:, None, None, :]


def dense(
    in_dim: int,
    out_dim: int,
    names: tuple[str | None, str | None],
    rngs: nnx.Rngs,
    *,
    zero_init: bool = False,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
) -> nnx.Linear:
    """A Linear layer whose kernel ``[in, out]`` and bias ``[out]`` carry logical axis names."""
    kernel_init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.xavier_uniform()
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
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ) -> None:
        self.heads, self.head_dim = heads, dim // heads
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

    def __call__(
        self,
        x_bld: jax.Array,
        context_bkd: jax.Array,
        mask_b1lk: jax.Array,
        *,
        query_angles: jax.Array | None = None,
        key_angles: jax.Array | None = None,
    ) -> jax.Array:
        """``x [B, L, D]`` attends to ``context [B, K, Dc]`` where ``mask``; returns ``[B, L, D]``.

        ``*_angles [B, L|K, H/2]`` rotate queries/keys (RoPE) when given.
        """
        b, length, dim = x_bld.shape
        split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)  # noqa: E731
        q_blnh = split(self.query(x_bld))
        k_bknh = split(self.key(context_bkd))
        v_bknh = split(self.value(context_bkd))
        if self.query_norm is not None:
            q_blnh, k_bknh = self.query_norm(q_blnh), self.key_norm(k_bknh)
        if query_angles is not None:
            q_blnh = apply_rope(q_blnh, query_angles)
        if key_angles is not None:
            k_bknh = apply_rope(k_bknh, key_angles)
        out_blnh = jax.nn.dot_product_attention(q_blnh, k_bknh, v_bknh, mask=mask_b1lk)
        return self.out(out_blnh.reshape(b, length, dim))
