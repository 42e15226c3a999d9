"""Shared tiny autoencoders: built once per session so that compiled encode/decode programs are reused."""

import pytest
from flax import nnx

from sora_jax.autoencoder.config import tiny_config
from sora_jax.autoencoder.model import build_autoencoder
from tests.perturb import perturbed


def _trained_looking(vae):
    """``vae`` with every parameter nudged: a fresh VAE's kernels ignore past frames (they are
    inflated from 2D), and the causality and chunking tests need every time tap to matter."""
    graphdef, params = nnx.split(vae)
    return nnx.merge(graphdef, perturbed(params, seed=7))


@pytest.fixture(scope="session")
def micro_vae():
    """2x2x2 compression (ft = fs = 2), 4 latents, rms norms: fast to compile, exact to tile."""
    config = tiny_config(channel_multipliers=(1, 2), temporal_downsample=(True,), norm="rms")
    return _trained_looking(build_autoencoder(config, seed=0))


@pytest.fixture(scope="session")
def micro_group_vae():
    """The same with per-frame GroupNorm."""
    config = tiny_config(channel_multipliers=(1, 2), temporal_downsample=(True,), norm="group")
    return _trained_looking(build_autoencoder(config, seed=1))
