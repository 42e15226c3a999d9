"""What keeps a long ``sora-jax prepare`` run well-behaved: its progress line on stderr, its
scratch folder, and stopping cleanly on SIGINT or SIGTERM.

The run itself (what is decoded, when the store is committed) is :mod:`sora_jax.data.prepare`;
these are the parts of it that deal with the terminal, the temp folder and signals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)

_SCRATCH_PREFIX = "sora_prepare_"
_SCRATCH_NAME = re.compile(rf"^{_SCRATCH_PREFIX}(\d+)_")


def progress_bar(total: int, enabled: bool) -> tqdm:
    """``prepare: 40/96 sources, 120 clips, 2 skipped [00:41<00:57]`` on stderr.

    On a terminal, one line redrawn every 0.5 s; into a file (a log), a new line every 30 s,
    since a file keeps every redraw.
    """
    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc="prepare",
        unit="source",
        file=sys.stderr if tty else _Lines(sys.stderr),
        disable=not enabled or not total,
        mininterval=0.5 if tty else 30.0,
        bar_format=None if tty else "{desc}: {n_fmt}/{total_fmt} sources{postfix} [{elapsed}<{remaining}]",
    )


def logs_above_progress(enabled: bool) -> contextlib.AbstractContextManager:
    """Within it, on a terminal, log lines are printed above the progress line instead of through
    it (``enabled``: the progress line is shown)."""
    return logging_redirect_tqdm() if enabled and sys.stderr.isatty() else contextlib.nullcontext()


class _Lines:
    """A stream that gets each of tqdm's redraws as a line of its own (tqdm returns to the start
    of its line with a carriage return, which a log file keeps as one ever-growing line)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def new_scratch() -> str:
    """A scratch folder for decoded clips in transit, named by this process's id.

    In the system's temp folder, which is local even when the store is a bucket, so decoded
    frames never cross a network twice. A killed run cannot remove its own (up to a few hundred
    MB), so every run first removes those of processes that no longer exist.
    """
    parent = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            match = _SCRATCH_NAME.match(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and not _alive(int(match[1])):
                shutil.rmtree(entry.path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}_", dir=parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Another user's process.
        return True
    return True


class StopOnSignal:
    """SIGINT and SIGTERM ask the run to commit what is stored and stop; a second one stops it now.

    Only a flag is set: an exception raised in the middle of a commit could leave the store's
    writer unsure whether its segment was written.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Only the main thread may set handlers.
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s: committing the sources already stored and stopping (again to stop at once)",
            signal.Signals(signum).name,
        )
