"""Tiny random T5-family and BERT checkpoints in Hugging Face format, for tests and CPU demos.

Writes what ``transformers`` would save for a T5 / T5 v1.1 / UMT5 encoder or a BERT model
(``config.json``, safetensors under the real weight names, a ``tokenizer.json``), from a seeded legacy numpy
``RandomState`` (its stream is frozen across numpy versions), so the same files can be loaded by
``transformers`` to produce reference outputs. Imports only numpy, safetensors and tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

WORDS = (
    "a the red blue green ball cube dog cat bird runs rolls jumps falls over under on in across "
    "field floor water sky slowly quickly big small two three and"
).split()
SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5's vocabulary.
BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")

VARIANTS: dict[str, dict] = {
    "t5": {"model_type": "t5", "feed_forward_proj": "relu"},
    "t5_v1_1": {"model_type": "t5", "feed_forward_proj": "gated-gelu"},
    "umt5": {"model_type": "umt5", "feed_forward_proj": "gated-gelu"},
}


def tiny_t5_config(variant: str) -> dict:
    """``config.json`` of a 2-block encoder; ``num_heads * d_kv`` differs from ``d_model`` on purpose,
    and ``relative_attention_max_distance`` is small so the logarithmic buckets are exercised."""
    return {
        "architectures": ["UMT5EncoderModel" if variant == "umt5" else "T5EncoderModel"],
        **VARIANTS[variant],
        "vocab_size": 48,
        "d_model": 32,
        "d_kv": 12,
        "d_ff": 40,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 16,
        "relative_attention_max_distance": 20,
        "layer_norm_epsilon": 1e-6,
        "dropout_rate": 0.0,
        "is_encoder_decoder": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "tie_word_embeddings": variant == "t5",
    }


def tiny_t5_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 encoder weights under ``transformers``' names, scaled like T5's initialisation."""
    rng = np.random.RandomState(seed)
    d, inner, ff = config["d_model"], config["num_heads"] * config["d_kv"], config["d_ff"]
    gated = config["feed_forward_proj"].startswith("gated")

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + rng.standard_normal(d) * 0.1).astype(np.float32)

    weights = {"shared.weight": normal((config["vocab_size"], d), 1.0)}
    for i in range(config["num_layers"]):
        block = f"encoder.block.{i}.layer"
        weights[f"{block}.0.SelfAttention.q.weight"] = normal((inner, d), (d * config["d_kv"]) ** -0.5)
        weights[f"{block}.0.SelfAttention.k.weight"] = normal((inner, d), d**-0.5)
        weights[f"{block}.0.SelfAttention.v.weight"] = normal((inner, d), d**-0.5)
        weights[f"{block}.0.SelfAttention.o.weight"] = normal((d, inner), inner**-0.5)
        if i == 0 or config["model_type"] == "umt5":
            shape = (config["relative_attention_num_buckets"], config["num_heads"])
            weights[f"{block}.0.SelfAttention.relative_attention_bias.weight"] = normal(shape, 0.5)
        weights[f"{block}.0.layer_norm.weight"] = norm()
        for name in ("wi_0", "wi_1") if gated else ("wi",):
            weights[f"{block}.1.DenseReluDense.{name}.weight"] = normal((ff, d), d**-0.5)
        weights[f"{block}.1.DenseReluDense.wo.weight"] = normal((d, ff), ff**-0.5)
        weights[f"{block}.1.layer_norm.weight"] = norm()
    weights["encoder.final_layer_norm.weight"] = norm()
    return weights


def word_level_tokenizer(special: tuple[str, ...] = SPECIAL, template: str = "$A </s>") -> Tokenizer:
    """Lower-cased whitespace words of :data:`WORDS` after the ``special`` tokens (ids from 0), unknown
    words as the special token containing ``unk``; ``template`` adds the special tokens around a caption."""
    vocab = {token: i for i, token in enumerate((*special, *WORDS))}
    unknown = next(t for t in special if "unk" in t.lower())
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unknown))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    used = [t for t in special if t in template.split()]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in used]
    )
    tokenizer.add_special_tokens(list(special))
    return tokenizer


def write_tiny_t5(directory: str | Path, variant: str = "t5_v1_1", *, seed: int = 0, shards: int = 1) -> Path:
    """Write a tiny random encoder checkpoint of ``variant`` (t5, t5_v1_1, umt5) to ``directory``.

    ``shards > 1`` splits the weights into ``model-0000i-of-0000n.safetensors`` files listed by
    ``model.safetensors.index.json``, as ``save_pretrained`` does for large models.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_t5_config(variant)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    word_level_tokenizer().save(str(directory / "tokenizer.json"))
    weights = tiny_t5_weights(config, seed)
    if shards == 1:
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    names = list(weights)
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: weights[name] for name in names[shard::shards]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    index = {"metadata": {"total_size": sum(w.nbytes for w in weights.values())}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory


def tiny_bert_config() -> dict:
    """``config.json`` of a 2-layer BERT with 4 heads of 8 features."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": 48,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 40,
        "hidden_act": "gelu",
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }


def tiny_bert_weights(config: dict, seed: int = 0, prefix: str = "", legacy_norm_names: bool = False) -> dict:
    """Float32 ``BertModel`` weights under ``transformers``' names, each name led by ``prefix``
    (``"bert."`` for task-head checkpoints); ``legacy_norm_names``: LayerNorm ``gamma``/``beta``."""
    rng = np.random.RandomState(seed)
    d, ff = config["hidden_size"], config["intermediate_size"]
    weights: dict[str, np.ndarray] = {}

    def add(name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> None:
        weights[prefix + name] = (mean + rng.standard_normal(shape) * std).astype(np.float32)

    def dense(name: str, out_dim: int, in_dim: int) -> None:
        add(f"{name}.weight", (out_dim, in_dim), in_dim**-0.5)
        add(f"{name}.bias", (out_dim,), 0.1)

    def norm(name: str) -> None:
        scale, shift = ("gamma", "beta") if legacy_norm_names else ("weight", "bias")
        add(f"{name}.{scale}", (d,), 0.1, mean=1.0)
        add(f"{name}.{shift}", (d,), 0.1)

    add("embeddings.word_embeddings.weight", (config["vocab_size"], d), 1.0)
    add("embeddings.position_embeddings.weight", (config["max_position_embeddings"], d), 0.3)
    add("embeddings.token_type_embeddings.weight", (config["type_vocab_size"], d), 0.3)
    norm("embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            dense(f"{layer}.attention.self.{name}", d, d)
        dense(f"{layer}.attention.output.dense", d, d)
        norm(f"{layer}.attention.output.LayerNorm")
        dense(f"{layer}.intermediate.dense", ff, d)
        dense(f"{layer}.output.dense", d, ff)
        norm(f"{layer}.output.LayerNorm")
    dense("pooler.dense", d, d)
    return weights


def write_tiny_bert(
    directory: str | Path, *, seed: int = 0, prefix: str = "", legacy_norm_names: bool = False
) -> Path:
    """Write a tiny random BERT checkpoint (see :func:`tiny_bert_weights`) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_bert_config()
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    word_level_tokenizer(BERT_SPECIAL, "[CLS] $A [SEP]").save(str(directory / "tokenizer.json"))
    weights = tiny_bert_weights(config, seed, prefix, legacy_norm_names)
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
