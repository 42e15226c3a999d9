"""Produce the reference outputs the text-encoder tests compare against, with PyTorch ``transformers``.

Run once, in a throwaway environment that has torch, transformers and sentence-transformers (the
project itself never imports them); see docs/text_encoders.md for the exact commands and versions:

    /tmp/refvenv/bin/python tests/text/make_reference.py MINILM_DIR

Writes ``tests/text/reference_minilm.npz`` (all-MiniLM-L6-v2: captions, token ids, mask, last hidden
state, sentence embedding) and ``tests/text/reference_tiny.npz`` (the tiny random T5 / T5 v1.1 / UMT5
and BERT checkpoints of ``sora_jax/text/tiny.py``: token ids, mask, last hidden state; and T5's
relative position buckets for offsets -2048..2048 with 32 buckets up to distance 128).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers

HERE = Path(__file__).resolve().parent
TINY_PY = HERE.parents[1] / "sora_jax" / "text" / "tiny.py"

MINILM_CAPTIONS = [
    "A red ball bounces on the floor.",
    "Two dogs run across a snowy field",
    "sunset over the ocean",
]
T5_CAPTIONS = [
    # Truncated to 24 tokens; offsets beyond relative_attention_max_distance (20) share the last buckets.
    "a red ball rolls slowly across the field and falls in the water then the small dog runs quickly "
    "under the big blue sky and jumps over two green cubes",
    "two small birds",
    "the zebra jumps over a big blue cube",  # "zebra" is out of vocabulary.
]
T5_MAX_TOKENS = 24


def load_tiny():
    spec = importlib.util.spec_from_file_location("tiny", TINY_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def minilm_reference(model_dir: Path) -> dict[str, np.ndarray]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.BertModel.from_pretrained(model_dir).eval()
    batch = tokenizer(MINILM_CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    sentence = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu").encode(
        MINILM_CAPTIONS, convert_to_numpy=True
    )
    return {
        "captions": np.asarray(MINILM_CAPTIONS),
        "token_ids": batch["input_ids"].numpy().astype(np.int32),
        "mask": batch["attention_mask"].numpy().astype(bool),
        "hidden": hidden.numpy().astype(np.float32),
        "sentence_embedding": sentence.astype(np.float32),
    }


def tiny_reference(tiny) -> dict[str, np.ndarray]:
    out = {"captions": np.asarray(T5_CAPTIONS)}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in tiny.VARIANTS:
            directory = tiny.write_tiny_t5(Path(tmp) / variant, variant)
            tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
            tokenizer.enable_truncation(max_length=T5_MAX_TOKENS)
            tokenizer.enable_padding(length=T5_MAX_TOKENS, pad_id=0, pad_token="<pad>")
            encodings = tokenizer.encode_batch(T5_CAPTIONS)
            token_ids = np.asarray([e.ids for e in encodings], np.int64)
            mask = np.asarray([e.attention_mask for e in encodings], np.int64)
            model_class = transformers.UMT5EncoderModel if variant == "umt5" else transformers.T5EncoderModel
            model = model_class.from_pretrained(directory, attn_implementation="eager").eval()
            with torch.no_grad():
                hidden = model(input_ids=torch.from_numpy(token_ids), attention_mask=torch.from_numpy(mask))
            out[f"{variant}/token_ids"] = token_ids.astype(np.int32)
            out[f"{variant}/mask"] = mask.astype(bool)
            out[f"{variant}/hidden"] = hidden.last_hidden_state.numpy().astype(np.float32)
            out[f"{variant}/shared_weight_sum"] = np.float64(
                tiny.tiny_t5_weights(tiny.tiny_t5_config(variant))["shared.weight"].sum()
            )
    with tempfile.TemporaryDirectory() as tmp:
        directory = tiny.write_tiny_bert(Path(tmp) / "bert")
        tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=T5_MAX_TOKENS)
        tokenizer.enable_padding(length=T5_MAX_TOKENS, pad_id=0, pad_token="[PAD]")
        encodings = tokenizer.encode_batch(T5_CAPTIONS)
        token_ids = np.asarray([e.ids for e in encodings], np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], np.int64)
        model = transformers.BertModel.from_pretrained(directory).eval()
        with torch.no_grad():
            hidden = model(input_ids=torch.from_numpy(token_ids), attention_mask=torch.from_numpy(mask))
        out["tiny_bert/token_ids"] = token_ids.astype(np.int32)
        out["tiny_bert/mask"] = mask.astype(bool)
        out["tiny_bert/hidden"] = hidden.last_hidden_state.numpy().astype(np.float32)
    offsets = torch.arange(-2048, 2049)
    buckets = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        offsets, bidirectional=True, num_buckets=32, max_distance=128
    )
    out["buckets_32_128/offsets"] = offsets.numpy().astype(np.int32)
    out["buckets_32_128/buckets"] = buckets.numpy().astype(np.int8)
    return out


def main(model_dir: str) -> None:
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"sentence-transformers {sentence_transformers.__version__}, tokenizers {tokenizers.__version__}"
    )
    np.savez_compressed(HERE / "reference_minilm.npz", **minilm_reference(Path(model_dir)))
    np.savez_compressed(HERE / "reference_tiny.npz", **tiny_reference(load_tiny()))
    for name in ("reference_minilm.npz", "reference_tiny.npz"):
        print(name, (HERE / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1])
