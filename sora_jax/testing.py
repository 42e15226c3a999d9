"""Scales for the experiments' ``test`` variants: runs of seconds that the test suite trains.

Kept out of the production config (:mod:`sora_jax.config`), which holds only what a run means.
"""

from __future__ import annotations

import ml_collections


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
