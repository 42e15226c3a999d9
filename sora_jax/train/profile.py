"""A profiler trace of a few train steps, written into the run directory (``train.profile_steps``).

The trace covers ``train.profile_steps`` consecutive steps, starting after the first two steps of
the session (the first compiles, the second may still warm caches), and lands in ``DIR/profile``
in the format TensorBoard's profile plugin and Perfetto read. Each traced step is waited for before
the trace stops, so the trace holds its device work, not only its dispatch.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
from etils import epath

log = logging.getLogger("sora_jax")
SKIPPED_STEPS = 2  # Compile, then one warm step.


class StepProfiler:
    """Starts and stops ``jax.profiler`` around steps ``first .. first + count - 1`` of a session that
    starts at ``start_step``; does nothing when ``count`` is 0."""

    def __init__(self, workdir: epath.Path, count: int, start_step: int) -> None:
        self.directory = workdir / "profile"
        self.first = start_step + SKIPPED_STEPS
        self.last = self.first + count - 1
        self.count = count
        self.active = False

    def before(self, step: int) -> None:
        """Called before step ``step`` (0-based) is dispatched."""
        if self.count and step == self.first:
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int, state: Any) -> None:
        """Called after step ``step`` was dispatched, with the state it returned."""
        if self.active and step == self.last:
            jax.block_until_ready(state)
            self.close()
            log.info("profiled steps %d to %d into %s", self.first + 1, self.last + 1, self.directory)

    def close(self) -> None:
        """Stop a trace still running (a run that ended or stopped inside the traced steps)."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
