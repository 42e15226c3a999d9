"""Caption tokenizer for the trainable text encoder: lower-cased words hashed into a fixed vocabulary.

Hashing needs no vocabulary file, so any caption (built-in physics world or a user's videos) maps to
ids with no download and no fitting step. Two words can share a bucket; with a few thousand buckets
and captions of a few hundred distinct words that is rare, and the encoder sees context around it.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

PAD_ID = 0  # Padding in packed text rows; never attended to by real tokens.
START_ID = 1  # Every caption starts with it, so an empty (dropped) caption is one token long.
_FIRST_WORD_ID = 2
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class WordTokenizer:
    """Maps a caption to ``[START, word ids...]``, ids in ``[2, vocab_size)`` for words."""

    def __init__(self, vocab_size: int):
        if vocab_size <= _FIRST_WORD_ID:
            raise ValueError(f"vocab_size must exceed {_FIRST_WORD_ID}, got {vocab_size}")
        self.vocab_size = vocab_size

    def encode(self, caption: str, max_tokens: int) -> np.ndarray:
        """int32 ``[n]`` with ``1 <= n <= max_tokens``; words past the limit are dropped."""
        words = _WORD.findall(caption.lower())[: max_tokens - 1]
        buckets = self.vocab_size - _FIRST_WORD_ID
        ids = [START_ID] + [_FIRST_WORD_ID + zlib.crc32(w.encode()) % buckets for w in words]
        return np.asarray(ids, dtype=np.int32)
