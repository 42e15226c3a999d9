"""Checks of the local folders a user names, made before any work is done.

Whether a folder takes new entries is tried, not asked of ``os.access``: root passes every
permission bit, yet cannot write into a read-only mount or a kernel file system such as /sys.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cannot_write_in(folder: str | os.PathLike) -> str | None:
    """Why this process cannot create entries in ``folder`` (an existing local folder), or None if
    it can. Tried with an empty hidden folder, made and removed at once."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sora_jax_write_probe_", dir=folder))
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else its nearest existing parent folder (where the missing
    folders would be made)."""
    found = Path(path)
    while not found.exists() and found != found.parent:
        found = found.parent
    return found
