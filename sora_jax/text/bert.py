"""BERT-family encoders (BERT, MiniLM, ...; ``model_type: "bert"``) as a Flax NNX module.

Post-LayerNorm transformer with learned absolute positions: ``token ids [B, L]`` and
``mask [B, L]`` to the last hidden state ``[B, L, D]``, matching ``transformers.BertModel``'s
``last_hidden_state`` (the pooler is not loaded).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.text.hf_loading import Weight, weight
from sora_jax.text.layers import activation, embedding, key_padding_attention, layer_norm, linear


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    pad_token_id: int

    @classmethod
    def from_hf(cls, hf: dict) -> BertConfig:
        """From a ``config.json`` dict; ValueError names an unsupported setting."""
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"BERT position_embedding_type {position_type!r} is not supported (only 'absolute')"
            )
        activation(hf.get("hidden_act", "gelu"))  # Fail now on an unknown activation.
        dim, heads = hf["hidden_size"], hf["num_attention_heads"]
        if dim % heads:
            raise ValueError(f"hidden_size {dim} is not a multiple of num_attention_heads {heads}")
        return cls(
            vocab_size=hf["vocab_size"],
            dim=hf["hidden_size"],
            depth=hf["num_hidden_layers"],
            heads=hf["num_attention_heads"],
            mlp_dim=hf["intermediate_size"],
            max_positions=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_act=hf.get("hidden_act", "gelu"),
            pad_token_id=hf.get("pad_token_id") or 0,
        )


class BertSelfAttention(nnx.Module):
    def __init__(self, config: BertConfig, rngs: nnx.Rngs, dtype) -> None:
        self.heads, self.head_dim = config.heads, config.dim // config.heads
        d = config.dim
        self.query = linear(d, d, ("embed", "heads"), rngs, use_bias=True, dtype=dtype)
        self.key = linear(d, d, ("embed", "heads"), rngs, use_bias=True, dtype=dtype)
        self.value = linear(d, d, ("embed", "heads"), rngs, use_bias=True, dtype=dtype)
        self.out = linear(d, d, ("heads", "embed"), rngs, use_bias=True, dtype=dtype)

    def __call__(self, x_bld: jax.Array, mask_bl: jax.Array) -> jax.Array:
        b, length, dim = x_bld.shape
        split = lambda t: t.reshape(b, length, self.heads, self.head_dim)  # noqa: E731
        out_blnh = key_padding_attention(
            split(self.query(x_bld)),
            split(self.key(x_bld)),
            split(self.value(x_bld)),
            mask_bl,
            scale=1.0 / math.sqrt(self.head_dim),
        )
        return self.out(out_blnh.reshape(b, length, dim))


class BertLayer(nnx.Module):
    def __init__(self, config: BertConfig, rngs: nnx.Rngs, dtype) -> None:
        self.attention = BertSelfAttention(config, rngs, dtype)
        self.attention_norm = layer_norm(config.dim, config.layer_norm_eps, rngs, dtype)
        self.mlp_in = linear(config.dim, config.mlp_dim, ("embed", "mlp"), rngs, use_bias=True, dtype=dtype)
        self.mlp_out = linear(config.mlp_dim, config.dim, ("mlp", "embed"), rngs, use_bias=True, dtype=dtype)
        self.mlp_norm = layer_norm(config.dim, config.layer_norm_eps, rngs, dtype)
        self.act = activation(config.hidden_act)

    def __call__(self, x_bld: jax.Array, mask_bl: jax.Array) -> jax.Array:
        x_bld = self.attention_norm(x_bld + self.attention(x_bld, mask_bl))
        return self.mlp_norm(x_bld + self.mlp_out(self.act(self.mlp_in(x_bld))))


class BertEncoder(nnx.Module):
    """``token_ids [B, L]`` int, ``mask [B, L]`` bool -> last hidden state ``[B, L, D]``."""

    def __init__(self, config: BertConfig, rngs: nnx.Rngs, dtype=jnp.float32) -> None:
        self.config = config
        self.word_embed = embedding(config.vocab_size, config.dim, ("vocab", "embed"), rngs, dtype)
        self.position_embed = embedding(config.max_positions, config.dim, (None, "embed"), rngs, dtype)
        self.type_embed = embedding(config.type_vocab_size, config.dim, (None, "embed"), rngs, dtype)
        self.embed_norm = layer_norm(config.dim, config.layer_norm_eps, rngs, dtype)
        self.layers = nnx.List([BertLayer(config, rngs, dtype) for _ in range(config.depth)])

    def __call__(self, token_ids_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
        length = token_ids_bl.shape[1]
        if length > self.config.max_positions:
            raise ValueError(f"{length} tokens exceed the model's {self.config.max_positions} positions")
        # A single caption per row: token type 0 everywhere, positions 0..L-1.
        x_bld = (
            self.word_embed(token_ids_bl)
            + self.position_embed(jnp.arange(length))[None]
            + self.type_embed(jnp.zeros((), jnp.int32))
        )
        x_bld = self.embed_norm(x_bld)
        for layer in self.layers:
            x_bld = layer(x_bld, mask_bl)
        return x_bld


def bert_weights(config: BertConfig) -> dict[tuple, Weight]:
    """Parameter path -> checkpoint weight, for ``BertModel`` checkpoints (names with or without
    the ``bert.`` prefix of task heads, LayerNorm as ``weight/bias`` or the older ``gamma/beta``)."""

    def hf(name: str, transpose: bool = False) -> Weight:
        names = [name]
        if name.endswith("LayerNorm.weight"):
            names.append(name.removesuffix("weight") + "gamma")
        if name.endswith("LayerNorm.bias"):
            names.append(name.removesuffix("bias") + "beta")
        return weight(*names, *("bert." + n for n in names), transpose=transpose)

    def norm(path: tuple, name: str) -> dict[tuple, Weight]:
        return {(*path, "scale"): hf(f"{name}.weight"), (*path, "bias"): hf(f"{name}.bias")}

    def dense(path: tuple, name: str) -> dict[tuple, Weight]:
        return {(*path, "kernel"): hf(f"{name}.weight", transpose=True), (*path, "bias"): hf(f"{name}.bias")}

    weights = {
        ("word_embed", "embedding"): hf("embeddings.word_embeddings.weight"),
        ("position_embed", "embedding"): hf("embeddings.position_embeddings.weight"),
        ("type_embed", "embedding"): hf("embeddings.token_type_embeddings.weight"),
        **norm(("embed_norm",), "embeddings.LayerNorm"),
    }
    for i in range(config.depth):
        layer, hf_layer = ("layers", i), f"encoder.layer.{i}"
        for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
            weights |= dense((*layer, "attention", ours), f"{hf_layer}.attention.self.{theirs}")
        weights |= dense((*layer, "attention", "out"), f"{hf_layer}.attention.output.dense")
        weights |= norm((*layer, "attention_norm"), f"{hf_layer}.attention.output.LayerNorm")
        weights |= dense((*layer, "mlp_in"), f"{hf_layer}.intermediate.dense")
        weights |= dense((*layer, "mlp_out"), f"{hf_layer}.output.dense")
        weights |= norm((*layer, "mlp_norm"), f"{hf_layer}.output.LayerNorm")
    return weights
