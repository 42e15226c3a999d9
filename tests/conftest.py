"""Test-session setup: eight fake CPU devices, set before JAX is imported anywhere.

The suite keeps no persistent XLA cache; each process compiles its own programs. With jaxlib
0.10.2 a CPU executable loaded from that cache stalls ring attention's train step (4 tries of 4
loading it afresh for every run): the device threads wait at two different rendezvous, one in the
loop that passes keys and values around the ring and one outside it, and XLA aborts the process
after 40 seconds. The same step compiled fresh, or with its ring loop unrolled, runs.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Off even where the shell names a cache directory (JAX_COMPILATION_CACHE_DIR); the test processes
# and the sora-jax commands they start inherit it.
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"


import pytest  # noqa: E402  (after the environment above, which JAX reads when first imported)

from tests.autoencoder.vae_run import train_vae_world  # noqa: E402


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory: pytest.TempPathFactory):
    """A tiny trained autoencoder run (``vae_world:test`` at a constant learning rate, checkpoints
    2 and 4), trained once per test process for the autoencoder, encode and latent tests. Read-only:
    a test that writes into a run copies it first."""
    return train_vae_world(tmp_path_factory.mktemp("vae_world") / "vae")
