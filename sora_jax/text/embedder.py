"""Captions to the caption embeddings a store keeps and a DiT with a frozen text encoder reads.

The encoder (and JAX) loads only when an embedder is built.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class CaptionEmbedder:
    """Captions to the stored caption embeddings: a frozen text encoder's hidden states of the
    caption's real tokens, ``[L, dim]`` float32 with ``L <= max_tokens``."""

    def __init__(self, directory: str | os.PathLike, max_tokens: int) -> None:
        from sora_jax.text.encoder import load_text_encoder

        self.encoder = load_text_encoder(directory)
        self.max_tokens = max_tokens
        self.dim = self.encoder.dim
        # What a resumed run must match (the directory's name, not its path, which may move).
        self.description = {
            "model_type": self.encoder.model_type,
            "name": Path(directory).resolve().name,
            "max_tokens": max_tokens,
        }

    def __call__(self, caption: str) -> np.ndarray:
        hidden, mask = self.encoder.encode([caption], self.max_tokens)
        return np.asarray(hidden[0], np.float32)[np.asarray(mask[0])]
