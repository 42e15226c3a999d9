"""Fixtures shared by the data tests."""

from pathlib import Path

import pytest

from tests.autoencoder.vae_run import vae_world_run


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained autoencoder run (``vae_world:test``, steps 2 and 4), read-only: see
    :mod:`tests.autoencoder.vae_run`."""
    return vae_world_run(tmp_path_factory)
