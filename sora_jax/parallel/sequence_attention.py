"""Attention whose tokens are split over the mesh's ``sequence`` axis, inside ``jax.shard_map``.

A row of a long video (a minute of 720p is hundreds of thousands of tokens) does not fit on one
chip, so its tokens are split ``s`` ways. Self-attention still needs every key of the row; two
ways to give it them:

- **all-to-all** (Ulysses): trade token shards for head shards, so each device holds every token of
  ``N / s`` heads, run any single-device kernel, and trade back. Two all-to-alls per call; needs
  the heads to divide by ``s``.
- **ring**: keep the queries, pass key/value blocks around the ring of ``s`` devices, and fold each
  block into a running softmax (max, denominator, weighted sum), as flash attention does over
  blocks. ``s - 1`` neighbour exchanges, any head count, memory per device independent of ``s``.

Both functions run per device; shapes are the local shards: ``b`` rows, ``l = L / s`` tokens,
``n`` heads, ``h`` features. ``axis`` names the mesh axes of the sequence split.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

LocalKernel = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
_MASKED = -1e30  # Logit of a masked pair: finite, so a block with no visible key makes no NaN.


def all_to_all_attention(
    kernel: LocalKernel,
    q_blnh: jax.Array,
    k_blnh: jax.Array,
    v_blnh: jax.Array,
    q_segments_bl: jax.Array,
    kv_segments_bl: jax.Array,
    axis: str | tuple[str, ...],
) -> jax.Array:
    """Self-attention over the whole row with ``kernel`` on ``n / s`` heads; returns ``[b, l, n, h]``."""

    def tokens_to_heads(x_blnh: jax.Array) -> jax.Array:  # [b, l, n, h] -> [b, L, n/s, h]
        return jax.lax.all_to_all(x_blnh, axis, split_axis=2, concat_axis=1, tiled=True)

    def whole_row(segments_bl: jax.Array) -> jax.Array:  # [b, l] -> [b, L]
        return jax.lax.all_gather(segments_bl, axis, axis=1, tiled=True)

    out = kernel(
        tokens_to_heads(q_blnh),
        tokens_to_heads(k_blnh),
        tokens_to_heads(v_blnh),
        whole_row(q_segments_bl),
        whole_row(kv_segments_bl),
    )
    return jax.lax.all_to_all(out, axis, split_axis=1, concat_axis=2, tiled=True)


def ring_attention(
    q_blnh: jax.Array,
    k_blnh: jax.Array,
    v_blnh: jax.Array,
    q_segments_bl: jax.Array,
    kv_segments_bl: jax.Array,
    axis: str | tuple[str, ...],
    axis_size: int,
) -> jax.Array:
    """Self-attention over the whole row, one key/value block of the ring at a time; ``[b, l, n, h]``.

    Softmax statistics are kept in float32. Every query sees at least its own token, so the
    denominator is never zero.
    """
    scale = q_blnh.shape[-1] ** -0.5
    q_blnh32 = q_blnh.astype(jnp.float32) * scale
    b, length, heads, features = q_blnh.shape
    shift = [(i, (i + 1) % axis_size) for i in range(axis_size)]

    def fold_block(carry: tuple, _: None) -> tuple[tuple, None]:
        k_block, v_block, kv_segments, running_max, denominator, weighted = carry
        logits_bnlk = jnp.einsum("blnh,bknh->bnlk", q_blnh32, k_block.astype(jnp.float32))
        visible = q_segments_bl[:, None, :, None] == kv_segments[:, None, None, :]
        logits_bnlk = jnp.where(visible, logits_bnlk, _MASKED)
        new_max = jnp.maximum(running_max, logits_bnlk.max(axis=-1))
        probs = jnp.exp(logits_bnlk - new_max[..., None]) * visible
        correction = jnp.exp(running_max - new_max)  # [b, n, l]
        denominator = denominator * correction + probs.sum(axis=-1)
        weighted = weighted * correction.transpose(0, 2, 1)[..., None] + jnp.einsum(
            "bnlk,bknh->blnh", probs, v_block.astype(jnp.float32)
        )
        # Pass this block on and receive the previous device's (the last exchange is unused).
        k_block, v_block, kv_segments = (
            jax.lax.ppermute(x, axis, shift) for x in (k_block, v_block, kv_segments)
        )
        return (k_block, v_block, kv_segments, new_max, denominator, weighted), None

    start = (
        k_blnh,
        v_blnh,
        kv_segments_bl,
        jnp.full((b, heads, length), _MASKED, jnp.float32),
        jnp.zeros((b, heads, length), jnp.float32),
        jnp.zeros((b, length, heads, features), jnp.float32),
    )
    (_, _, _, _, denominator, weighted), _ = jax.lax.scan(fold_block, start, None, length=axis_size)
    return (weighted / denominator.transpose(0, 2, 1)[..., None]).astype(q_blnh.dtype)
