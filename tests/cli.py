"""Running the ``sora-jax`` command in a separate process, as a user does (shared by CLI tests)."""

import os
import subprocess
import sys


def sora_jax(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sora_jax.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=timeout,
    )
