"""Test-session setup: eight fake CPU devices, set before JAX is imported anywhere.

Compiled programs go to a persistent XLA cache shared by the test workers and by every ``sora-jax``
subprocess a test starts (they inherit the environment): the suite compiles the same tiny train
and sampling steps in many processes, and a cache hit skips the compile, not the program. Jit
cache sizes (the one-compile-per-run checks) count traces in a process and are unaffected.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "sora_jax_test_xla_cache")
)
# The tiny test programs compile in well under JAX's default one-second floor for caching.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# A size limit makes JAX take a file lock around every read and write of the cache (filelock), so
# a process never reads an entry another one is still writing.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))


import pytest  # noqa: E402  (after the environment above, which JAX reads when first imported)

from tests.autoencoder.vae_run import train_vae_world  # noqa: E402


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory: pytest.TempPathFactory):
    """A tiny trained autoencoder run (``vae_world:test`` at a constant learning rate, checkpoints
    2 and 4), trained once per test process for the autoencoder, encode and latent tests. Read-only:
    a test that writes into a run copies it first."""
    return train_vae_world(tmp_path_factory.mktemp("vae_world") / "vae")
