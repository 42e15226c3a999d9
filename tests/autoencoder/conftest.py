"""Shared tiny autoencoders: built once per session so that compiled encode/decode programs are reused."""

import pytest

from sora_jax.autoencoder import build_autoencoder, tiny_config


@pytest.fixture(scope="session")
def micro_vae():
    """2x2x2 compression (ft = fs = 2), 4 latents, rms norms: fast to compile, exact to tile."""
    return build_autoencoder(
        tiny_config(channel_multipliers=(1, 2), temporal_downsample=(True,), norm="rms"), seed=0
    )


@pytest.fixture(scope="session")
def micro_group_vae():
    """The same with per-frame GroupNorm."""
    return build_autoencoder(
        tiny_config(channel_multipliers=(1, 2), temporal_downsample=(True,), norm="group"), seed=1
    )
