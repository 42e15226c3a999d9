"""The DiT's text encoder, trained with it: caption token ids (or a frozen encoder's states) to token
hidden states.

Captions of a packed row are encoded together; each attends only to its own tokens
(``text_segment_ids``), with 1D rotary positions from ``text_positions``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from sora_jax.model.attention import Attention, dense
from sora_jax.model.rope import rope_angles


def frozen_text_dim(model_config: ml_collections.ConfigDict) -> int:
    """Width of the frozen encoder's states the DiT reads (``model.text_encoder``); 0 if learned."""
    if model_config.text_encoder == "learned":
        return 0
    from sora_jax.text.encoder import text_encoder_dim

    return text_encoder_dim(model_config.text_encoder)


class TextBlock(nnx.Module):
    def __init__(self, dim: int, heads: int, rngs: nnx.Rngs, **kw) -> None:
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs, **kw)
        self.attention = Attention(dim, heads, rngs, **kw)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs, **kw)
        self.mlp_in = dense(dim, 4 * dim, ("embed", "mlp"), rngs, **kw)
        self.mlp_out = dense(4 * dim, dim, ("mlp", "embed"), rngs, **kw)

    def __call__(self, x: jax.Array, segment_ids: jax.Array, angles: jax.Array) -> jax.Array:
        h = self.norm1(x)
        x = x + self.attention(h, h, segment_ids, segment_ids, query_angles=angles, key_angles=angles)
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm2(x))))


class TextEncoder(nnx.Module):
    """Caption tokens to hidden states ``[B, Lt, Dt]``.

    ``input_dim == 0``: the inputs are token ids ``[B, Lt]`` int32, embedded by a learned table.
    ``input_dim > 0``: they are a frozen encoder's hidden states ``[B, Lt, input_dim]``, projected
    to ``dim``; the blocks then adapt them to the DiT (the frozen encoder itself is never trained).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        heads: int,
        rngs: nnx.Rngs,
        input_dim: int = 0,
        embed_std: float = 1.0,
        **kw,
    ) -> None:
        self.head_dim = dim // heads
        if input_dim:
            self.embed = dense(input_dim, dim, (None, "embed"), rngs, **kw)
        else:
            self.embed = nnx.Embed(
                vocab_size,
                dim,
                embedding_init=nnx.with_partitioning(
                    nnx.initializers.normal(stddev=embed_std), ("vocab", "embed")
                ),
                rngs=rngs,
                **kw,
            )
        self.blocks = nnx.List([TextBlock(dim, heads, rngs, **kw) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs, **kw)

    def __call__(self, inputs: jax.Array, segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
        x = self.embed(inputs)
        angles = rope_angles(positions[..., None], (self.head_dim,), theta=10_000.0)
        for block in self.blocks:
            x = block(x, segment_ids, angles)
        return self.norm(x).astype(jnp.float32)
