"""Segment-masked attention with the Pallas TPU splash-attention kernel, for one device's shard.

Same contract as the dense path in ``sora_jax.model.attention``: ``softmax(q·k / sqrt(H))`` over keys
of the query's own segment. Call it inside ``jax.shard_map`` (with ``check_vma=False``: Pallas calls
carry no varying-manual-axes information) on the local block of rows and heads; the kernel holds the
whole key sequence, so keys must not be sharded along their length here.

Shapes: ``B`` rows, ``L`` query tokens, ``K`` key tokens, ``N`` heads of ``H`` features.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

# The kernel tiles sequences in blocks that are multiples of the 128-wide vector lanes. Bigger blocks
# mean fewer grid steps but more VMEM per step; 512 is the usual compromise for head dims up to 128.
_LANES = 128
_MAX_BLOCK = 512
# Ids we give to the tokens we add to reach a whole number of blocks. Real ids are >= 0 (0 = padding,
# which attends to padding), so added keys match no real query; added queries match added keys only,
# or nothing when no keys were added. Either way their outputs are finite, and we slice them off.
_PAD_SEGMENT = -1


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def block_size(length: int) -> int:
    """The kernel block along a sequence of ``length`` tokens: ``min(512, length rounded up to 128)``."""
    return min(_MAX_BLOCK, _round_up(length, _LANES))


def _pad_tokens(x: jax.Array, length: int, value: int | float = 0) -> jax.Array:
    """Pad axis 1 of ``x`` to ``length`` with ``value``."""
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, length - x.shape[1])
    return jnp.pad(x, pad, constant_values=value)


def splash_attention(
    q_blnh: jax.Array,
    k_bknh: jax.Array,
    v_bknh: jax.Array,
    q_segment_ids_bl: jax.Array,
    kv_segment_ids_bk: jax.Array,
    *,
    interpret: bool = False,
) -> jax.Array:
    """Attention of ``q [B, L, N, H]`` to ``k, v [B, K, N, H]`` within segments; returns ``[B, L, N, H]``.

    ``q_segment_ids [B, L]`` and ``kv_segment_ids [B, K]`` are int32 clip ids (0 = padding); a query
    attends to the keys with its own id. Self-attention passes the same ids twice; cross-attention
    (video to text) passes each side's own, and ``K`` may differ from ``L``.

    A query whose id matches no key (e.g. video padding when the text row has no padding) gets an
    average of values, finite but meaningless (the dense path does the same); such outputs are
    padding and must not be read, and their gradients are zero when nothing reads them.

    Output dtype is ``q``'s. Differentiable (the kernel's own backward pass). ``interpret=True``
    runs the kernel in the Pallas interpreter on any backend: slow, for tests.
    """
    b, length, heads, head_dim = q_blnh.shape
    kv_length = k_bknh.shape[1]
    if k_bknh.shape != (b, kv_length, heads, head_dim) or v_bknh.shape[:3] != (b, kv_length, heads):
        raise ValueError(
            f"q {q_blnh.shape}, k {k_bknh.shape}, v {v_bknh.shape}: expected [B,L,N,H], [B,K,N,H]"
        )
    if q_segment_ids_bl.shape != (b, length) or kv_segment_ids_bk.shape != (b, kv_length):
        raise ValueError(
            f"segment ids {q_segment_ids_bl.shape} / {kv_segment_ids_bk.shape} do not match q/kv rows and "
            f"lengths {(b, length)} / {(b, kv_length)}"
        )

    block_q, block_kv = block_size(length), block_size(kv_length)
    padded_q, padded_kv = _round_up(length, block_q), _round_up(kv_length, block_kv)

    # The kernel applies no softmax scale; fold 1/sqrt(H) into q in float32, then return to q's dtype.
    q_scaled = (q_blnh.astype(jnp.float32) * (1.0 / math.sqrt(head_dim))).astype(q_blnh.dtype)
    # The kernel wants heads before tokens: [B, N, L, H].
    to_heads_major = lambda t: jnp.swapaxes(t, 1, 2)  # noqa: E731
    q_bnlh = to_heads_major(_pad_tokens(q_scaled, padded_q))
    k_bnkh = to_heads_major(_pad_tokens(k_bknh, padded_kv))
    v_bnkh = to_heads_major(_pad_tokens(v_bknh, padded_kv))
    segment_ids = splash.SegmentIds(
        q=_pad_tokens(q_segment_ids_bl.astype(jnp.int32), padded_q, _PAD_SEGMENT),
        kv=_pad_tokens(kv_segment_ids_bk.astype(jnp.int32), padded_kv, _PAD_SEGMENT),
    )

    # Segment ids do all the masking; the static mask only says "no block may be skipped".
    mask = splash.MultiHeadMask([splash.FullMask((padded_q, padded_kv)) for _ in range(heads)])
    # Separate dq and dk/dv backward kernels: the fused one keeps a partial dq per key block,
    # [K / block_kv, N, L, H], which is 128 copies of q at 64k tokens.
    blocks = splash.BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_kv_dkv_compute=block_kv,
        block_q_dq=block_q,
        block_kv_dq=block_kv,
    )
    # Built per call on local shapes: under shard_map this is one device's heads, so no head or
    # sequence sharding inside the kernel.
    kernel = splash.make_splash_mha(
        mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret
    )
    out_bnlh = jax.vmap(kernel)(q_bnlh, k_bnkh, v_bnkh, segment_ids=segment_ids)
    return jnp.swapaxes(out_bnlh, 1, 2)[:, :length]
