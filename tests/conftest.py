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
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# A size limit makes JAX take a file lock around every read and write of the cache (filelock), so
# a process never reads an entry another one is still writing.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
