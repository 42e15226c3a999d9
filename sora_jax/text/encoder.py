"""Frozen pretrained text encoders for caption conditioning: captions in, token hidden states out.

    encoder = load_text_encoder("/models/all-MiniLM-L6-v2")
    hidden, mask = encoder.encode(["a red ball bounces", "waves at dusk"], max_tokens=32)
    # hidden [2, 32, 384] float32, mask [2, 32] bool (True on real tokens, False on padding)

Every call pads (and truncates) to ``max_tokens``, so one compiled forward serves every batch of
that size. The parameters are never trained: ``encode`` stops gradients, and they carry logical
axis names (``nnx.get_partition_spec(encoder.params)``) for placing them on a mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from sora_jax.text.bert import BertConfig, BertEncoder, bert_weights
from sora_jax.text.hf_loading import (
    Checkpoint,
    load_params,
    model_directory,
    read_config,
    tokenizer_file,
)
from sora_jax.text.t5 import T5Config, T5Encoder, t5_weights

# model_type in config.json -> (config class, module class, weight map).
ARCHITECTURES: dict[str, tuple[type, type, Callable]] = {
    "bert": (BertConfig, BertEncoder, bert_weights),
    "t5": (T5Config, T5Encoder, t5_weights),
    "mt5": (T5Config, T5Encoder, t5_weights),
    "umt5": (T5Config, T5Encoder, t5_weights),
}


class FrozenTextEncoder:
    """A pretrained encoder with its tokenizer. Build it with :func:`load_text_encoder`."""

    def __init__(self, model: nnx.Module, tokenizer: Tokenizer, model_type: str, pad_token_id: int) -> None:
        self.model_type = model_type
        self.config = model.config
        self.dim: int = model.config.dim
        self.tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self.graphdef, self.params = nnx.split(model)
        graphdef = self.graphdef

        @jax.jit
        def forward(params: nnx.State, token_ids_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
            return jax.lax.stop_gradient(nnx.merge(graphdef, params)(token_ids_bl, mask_bl))

        self._forward = forward

    def tokenize(self, captions: Sequence[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """``token_ids [B, max_tokens]`` int32 and ``mask [B, max_tokens]`` bool, special tokens included.

        Longer captions are truncated (keeping the tokenizer's closing special token), shorter
        ones padded on the right.
        """
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, not one string")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        self.tokenizer.enable_truncation(max_length=max_tokens)
        pad_token = self.tokenizer.id_to_token(self.pad_token_id) or ""
        self.tokenizer.enable_padding(length=max_tokens, pad_id=self.pad_token_id, pad_token=pad_token)
        encodings = self.tokenizer.encode_batch(list(captions))
        token_ids = np.asarray([e.ids for e in encodings], np.int32).reshape(len(encodings), max_tokens)
        mask = np.asarray([e.attention_mask for e in encodings], bool).reshape(len(encodings), max_tokens)
        return token_ids, mask

    def encode_tokens(
        self, token_ids_bl: jax.Array | np.ndarray, mask_bl: jax.Array | np.ndarray
    ) -> jax.Array:
        """Hidden states ``[B, L, D]`` (in the loaded dtype) for already tokenized captions."""
        return self._forward(self.params, jnp.asarray(token_ids_bl, jnp.int32), jnp.asarray(mask_bl, bool))

    def encode(self, captions: Sequence[str], max_tokens: int) -> tuple[jax.Array, jax.Array]:
        """``hidden [B, max_tokens, D]`` and ``mask [B, max_tokens]`` bool (True: a real token).

        Hidden states at padding positions are not meaningful; cross-attention must mask them.
        """
        token_ids, mask = self.tokenize(captions, max_tokens)
        return self.encode_tokens(token_ids, mask), jnp.asarray(mask)


def _architecture(directory: Path) -> tuple[dict, str]:
    hf_config = read_config(directory)
    model_type = hf_config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"unsupported model_type {model_type!r} in {str(directory / 'config.json')!r}; "
            f"supported: {sorted(ARCHITECTURES)}"
        )
    return hf_config, model_type


def text_encoder_dim(path: str | Path) -> int:
    """Width of the hidden states of the encoder in ``path``, from its ``config.json`` alone."""
    hf_config, model_type = _architecture(model_directory(path))
    return ARCHITECTURES[model_type][0].from_hf(hf_config).dim


def load_text_encoder(path: str | Path, dtype: jnp.dtype = jnp.float32) -> FrozenTextEncoder:
    """Load a BERT-family or T5-family encoder from a local Hugging Face-format directory.

    ``path`` holds ``config.json`` (``model_type`` bert, t5, mt5 or umt5), ``tokenizer.json`` and
    safetensors weights (``model.safetensors`` or shards with ``model.safetensors.index.json``); or
    it is a diffusers pipeline directory (a Wan model: ``text_encoder/`` beside ``tokenizer/``),
    see :func:`~sora_jax.text.hf_loading.model_directory`.
    Parameters are stored and computed in ``dtype`` (norm statistics and softmax in float32).
    Raises FileNotFoundError for a missing directory or file, ValueError for an unsupported
    ``model_type`` or setting, and CheckpointError (a ValueError) for a missing or misshapen weight.
    """
    directory = model_directory(path)
    hf_config, model_type = _architecture(directory)
    tokenizer_path = tokenizer_file(directory)
    config_class, module_class, weight_map = ARCHITECTURES[model_type]
    config = config_class.from_hf(hf_config)
    checkpoint = Checkpoint(directory)
    # Names are metadata only; placement is the caller's, whatever mesh is active around the call
    # (a trainer's, whose axes are not these logical names).
    no_mesh = jax.sharding.AbstractMesh((), ())
    with nnx.use_eager_sharding(False), jax.sharding.use_abstract_mesh(no_mesh):
        abstract = nnx.eval_shape(lambda: module_class(config, nnx.Rngs(0), dtype=dtype))
        model = load_params(abstract, weight_map(config), checkpoint)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    padding = tokenizer.padding or {}
    pad_token_id = padding.get("pad_id", config.pad_token_id)
    return FrozenTextEncoder(model, tokenizer, model_type, pad_token_id)


def mean_pool(hidden_bld: jax.Array, mask_bl: jax.Array) -> jax.Array:
    """``[B, D]`` float32 mean of each caption's real-token states (sentence-transformers pooling)."""
    weights_bl = mask_bl.astype(jnp.float32)
    total_bd = jnp.einsum("bld,bl->bd", hidden_bld.astype(jnp.float32), weights_bl)
    return total_bd / jnp.maximum(weights_bl.sum(-1, keepdims=True), 1e-9)
