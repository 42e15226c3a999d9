"""T5-family encoder stacks (T5, T5 v1.1, mT5, UMT5) as a Flax NNX module.

Pre-norm transformer with RMS layer norms (scale only, no bias), unscaled dot-product attention
plus a learned bias per bucketed relative position (shared from block 0 in T5; one table per
block in UMT5), and a ReLU (original T5) or gated-GELU (v1.1, mT5, UMT5) feed-forward.
``token ids [B, L]`` and ``mask [B, L]`` to ``[B, L, D]``, matching
``transformers.T5EncoderModel``'s ``last_hidden_state``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.text.hf_loading import Weight, weight
from sora_jax.text.layers import activation, embedding, key_padding_attention, linear, rms_norm


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int
    dim: int
    depth: int
    heads: int
    head_dim: int
    mlp_dim: int
    num_buckets: int
    max_distance: int
    layer_norm_eps: float
    dense_act: str
    gated: bool
    bias_per_layer: bool
    pad_token_id: int

    @classmethod
    def from_hf(cls, hf: dict) -> T5Config:
        """From a ``config.json`` dict, reading ``feed_forward_proj`` as ``transformers`` does."""
        umt5 = hf.get("model_type") == "umt5"
        proj = hf.get("feed_forward_proj", "gated-gelu" if umt5 else "relu")
        parts = proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj {proj!r} is neither 'ACT' nor 'gated-ACT'")
        dense_act = "gelu_new" if proj == "gated-gelu" else parts[-1]
        activation(dense_act)  # Fail now on an unknown activation.
        return cls(
            vocab_size=hf["vocab_size"],
            dim=hf["d_model"],
            depth=hf["num_layers"],
            heads=hf["num_heads"],
            head_dim=hf["d_kv"],
            mlp_dim=hf["d_ff"],
            num_buckets=hf.get("relative_attention_num_buckets", 32),
            max_distance=hf.get("relative_attention_max_distance", 128),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
            dense_act=dense_act,
            gated=parts[0] == "gated",
            bias_per_layer=umt5,
            pad_token_id=hf.get("pad_token_id") or 0,
        )


def relative_position_bucket(relative: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket (int32, same shape) of each key-minus-query offset in ``relative``, bidirectional.

    Half the buckets are for keys after the query. Within each half, distances below a quarter
    of ``num_buckets`` get a bucket each; larger ones share logarithmically wider buckets up to
    ``max_distance``. The log is taken in float32 and truncated, as in ``transformers``.
    """
    half = num_buckets // 2
    exact = half // 2
    distance = np.abs(relative)
    # Distances below ``exact`` take the exact branch; clipping them keeps log() finite.
    scaled = np.maximum(distance, exact).astype(np.float32) / np.float32(exact)
    log_ratio = np.log(scaled) / np.float32(math.log(max_distance / exact))
    large = exact + (log_ratio * np.float32(half - exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return ((relative > 0) * half + np.where(distance < exact, distance, large)).astype(np.int32)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """``[L, L]`` bucket of (key position - query position) for every query and key of a caption."""
    positions = np.arange(length)
    return relative_position_bucket(positions[None, :] - positions[:, None], num_buckets, max_distance)


class T5SelfAttention(nnx.Module):
    def __init__(self, config: T5Config, has_bias_table: bool, rngs: nnx.Rngs, dtype) -> None:
        self.config = config
        inner = config.heads * config.head_dim
        self.query = linear(config.dim, inner, ("embed", "heads"), rngs, use_bias=False, dtype=dtype)
        self.key = linear(config.dim, inner, ("embed", "heads"), rngs, use_bias=False, dtype=dtype)
        self.value = linear(config.dim, inner, ("embed", "heads"), rngs, use_bias=False, dtype=dtype)
        self.out = linear(inner, config.dim, ("heads", "embed"), rngs, use_bias=False, dtype=dtype)
        self.bias_table = (
            embedding(config.num_buckets, config.heads, (None, "heads"), rngs, dtype)
            if has_bias_table
            else None
        )

    def position_bias(self, length: int) -> jax.Array:
        """``[1, N, L, L]`` additive logits from this layer's relative-position table."""
        buckets = relative_position_buckets(length, self.config.num_buckets, self.config.max_distance)
        return jnp.transpose(self.bias_table(jnp.asarray(buckets)), (2, 0, 1))[None]

    def __call__(self, x_bld: jax.Array, mask_bl: jax.Array, bias_1nll: jax.Array) -> jax.Array:
        b, length, _ = x_bld.shape
        split = lambda t: t.reshape(b, length, self.config.heads, self.config.head_dim)  # noqa: E731
        out_blnh = key_padding_attention(
            split(self.query(x_bld)),
            split(self.key(x_bld)),
            split(self.value(x_bld)),
            mask_bl,
            scale=1.0,  # T5 folds the 1/sqrt(H) into its initialisation.
            bias_1nll=bias_1nll,
        )
        return self.out(out_blnh.reshape(b, length, -1))


class T5Block(nnx.Module):
    def __init__(self, config: T5Config, has_bias_table: bool, rngs: nnx.Rngs, dtype) -> None:
        d, f = config.dim, config.mlp_dim
        self.attention_norm = rms_norm(d, config.layer_norm_eps, rngs, dtype)
        self.attention = T5SelfAttention(config, has_bias_table, rngs, dtype)
        self.mlp_norm = rms_norm(d, config.layer_norm_eps, rngs, dtype)
        self.mlp_in = linear(d, f, ("embed", "mlp"), rngs, use_bias=False, dtype=dtype)
        self.mlp_gate = (
            linear(d, f, ("embed", "mlp"), rngs, use_bias=False, dtype=dtype) if config.gated else None
        )
        self.mlp_out = linear(f, d, ("mlp", "embed"), rngs, use_bias=False, dtype=dtype)
        self.act = activation(config.dense_act)

    def __call__(self, x_bld: jax.Array, mask_bl: jax.Array, bias_1nll: jax.Array) -> jax.Array:
        x_bld = x_bld + self.attention(self.attention_norm(x_bld), mask_bl, bias_1nll)
        h_bld = self.mlp_norm(x_bld)
        hidden = self.act(self.mlp_in(h_bld))
        if self.mlp_gate is not None:
            hidden = hidden * self.mlp_gate(h_bld)
        return x_bld + self.mlp_out(hidden)


class T5Encoder(nnx.Module):
    """``token_ids [B, L]`` int, ``mask [B, L]`` bool -> final-normed hidden states ``[B, L, D]``."""

    def __init__(self, config: T5Config, rngs: nnx.Rngs, dtype=jnp.float32) -> None:
        self.config = config
        self.embed = embedding(config.vocab_size, config.dim, ("vocab", "embed"), rngs, dtype)
        self.blocks = nnx.List(
            [T5Block(config, config.bias_per_layer or i == 0, rngs, dtype) for i in range(config.depth)]
        )
        self.final_norm = rms_norm(config.dim, config.layer_norm_eps, rngs, dtype)

    def __call__(self, token_ids_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
        length = token_ids_bl.shape[1]
        x_bld = self.embed(token_ids_bl)
        bias_1nll = self.blocks[0].attention.position_bias(length)
        for block in self.blocks:
            if block.attention.bias_table is not None:
                bias_1nll = block.attention.position_bias(length)
            x_bld = block(x_bld, mask_bl, bias_1nll)
        return self.final_norm(x_bld)


def t5_weights(config: T5Config) -> dict[tuple, Weight]:
    """Parameter path -> checkpoint weight, for ``T5EncoderModel`` / ``T5ForConditionalGeneration``
    / ``UMT5EncoderModel`` checkpoints (decoder weights, if present, are ignored)."""

    def dense(path: tuple, name: str) -> dict[tuple, Weight]:
        return {(*path, "kernel"): weight(name, transpose=True)}

    weights = {
        ("embed", "embedding"): weight("shared.weight", "encoder.embed_tokens.weight"),
        ("final_norm", "scale"): weight("encoder.final_layer_norm.weight"),
    }
    for i in range(config.depth):
        block, hf_block = ("blocks", i), f"encoder.block.{i}"
        attention, hf_attention = (*block, "attention"), f"{hf_block}.layer.0.SelfAttention"
        for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            weights |= dense((*attention, ours), f"{hf_attention}.{theirs}.weight")
        if config.bias_per_layer or i == 0:
            weights[(*attention, "bias_table", "embedding")] = weight(
                f"{hf_attention}.relative_attention_bias.weight"
            )
        weights[(*block, "attention_norm", "scale")] = weight(f"{hf_block}.layer.0.layer_norm.weight")
        weights[(*block, "mlp_norm", "scale")] = weight(f"{hf_block}.layer.1.layer_norm.weight")
        ff = f"{hf_block}.layer.1.DenseReluDense"
        if config.gated:
            weights |= dense((*block, "mlp_in"), f"{ff}.wi_0.weight")
            weights |= dense((*block, "mlp_gate"), f"{ff}.wi_1.weight")
        else:
            weights |= dense((*block, "mlp_in"), f"{ff}.wi.weight")
        weights |= dense((*block, "mlp_out"), f"{ff}.wo.weight")
    return weights
