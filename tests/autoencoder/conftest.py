"""Shared tiny autoencoders: built once per session so that compiled encode/decode programs are reused."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.autoencoder.config import tiny_config
from sora_jax.autoencoder.model import build_autoencoder
from tests.autoencoder.vae_run import vae_world_run


def _trained_looking(vae):
    """``vae`` with every parameter nudged: a fresh VAE's kernels ignore past frames (they are
    inflated from 2D), and the causality and chunking tests need every time tap to matter.

    The noise is drawn on the host: a JAX draw and add per parameter compiles a program for each
    parameter shape, tens of seconds for a fixture that only needs some fixed noise.
    """
    graphdef, params = nnx.split(vae)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(7)
    leaves = [
        jnp.asarray(np.asarray(p) + 0.05 * rng.standard_normal(p.shape).astype(p.dtype)) for p in leaves
    ]
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


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained autoencoder run (``vae_world:test`` at a constant learning rate, steps 2 and
    4), read-only: see :mod:`tests.autoencoder.vae_run`."""
    return vae_world_run(tmp_path_factory)
