"""Shared tiny autoencoders: built once per session so that compiled encode/decode programs are reused."""

import jax
import pytest
from flax import nnx

from sora_jax.autoencoder.config import tiny_config
from sora_jax.autoencoder.model import build_autoencoder


def _trained_looking(vae):
    """``vae`` with every parameter nudged: a fresh VAE's kernels ignore past frames (they are
    inflated from 2D), and the causality and chunking tests need every time tap to matter."""
    graphdef, params = nnx.split(vae)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    leaves = [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


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
