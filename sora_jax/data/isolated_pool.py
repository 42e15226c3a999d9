"""Worker processes that each run one task at a time, so a crash or hang is pinned on its task.

Used by ingest, where one corrupt file can crash or hang the FFmpeg decoder: that file fails with
a reason, its process is replaced, and every other file goes on.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import math
import multiprocessing
import multiprocessing.connection
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class TaskFailure(Exception):
    """Raised by a task to fail with a ``reason`` (a short key) and a human ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


Task = tuple[Any, Callable[..., Any], tuple]


def call_task(fn: Callable[..., Any], args: tuple) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, (reason, detail))``; never raises an Exception."""
    try:
        return True, fn(*args)
    except TaskFailure as e:
        return False, (e.reason, e.detail)
    except Exception as e:
        return False, ("internal_error", f"{type(e).__name__}: {e}")


_READY = "ready"  # A worker's first message: it started and can run tasks.
_STARTUP_GRACE_S = 120.0  # How long a worker may take to start before its task's clock runs.


_PR_SET_PDEATHSIG = 1  # From <sys/prctl.h>.


def _die_with_parent() -> None:
    """Has the kernel kill this process when its parent dies (Linux), so a killed run leaves no
    decoder working on for up to its timeout; elsewhere the closed pipe ends it after its task."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    # Ctrl-C reaches the whole process group, and a container stop may send SIGTERM to every
    # process: the parent decides what to do (commit, then stop us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    conn.send(_READY)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # Parent gone.
            return
        if task is None:
            return
        key, fn, args = task
        conn.send((key, *call_task(fn, args)))


@dataclasses.dataclass
class _Worker:
    process: Any  # multiprocessing.Process of the spawn context.
    conn: multiprocessing.connection.Connection
    key: Any = None  # The task it is running; None when idle.
    deadline: float = math.inf
    ready: bool = False  # Said it started; a worker that dies before that fails the run.


class IsolatedPool:
    """Processes that run one task each at a time, so a crash or hang is pinned on its task.

    ``concurrent.futures.ProcessPoolExecutor`` fails every in-flight task when one worker dies
    and cannot kill a hung one; here a dead worker fails only its own task ("worker_crash"), a
    task over ``timeout`` seconds has its worker killed ("timeout"), and either is replaced.
    Workers are spawned, not forked: the parent may hold threads (tensorstore, JAX) that a fork
    would copy in a broken state. They ignore SIGINT and SIGTERM (the parent stops them) and, on
    Linux, die with the thread that started them, so a killed parent leaves no decoder behind.
    """

    def __init__(self, size: int, timeout: float | None) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._timeout = timeout
        self._workers = [self._start() for _ in range(size)]

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child,), daemon=True, name="sora-worker")
        process.start()
        child.close()  # Only the worker holds its end: its death then reads as EOF here.
        return _Worker(process, parent)

    def run(self, tasks: Iterable[Task], tick: float | None = None) -> Iterator[tuple[Any, bool, Any] | None]:
        """Runs ``(key, fn, args)`` tasks; yields ``(key, ok, result or (reason, detail))``.

        Results come in completion order. Tasks are pulled from ``tasks`` only as workers
        free up, and the next is not started until the caller has taken the last result. With
        ``tick`` (seconds), ``None`` is also yielded whenever that long passes without a result,
        so the caller can do timed work (commit, notice a signal) while a long task runs.
        """
        pending = collections.deque[Task]()
        todo = iter(tasks)
        last_yield = time.monotonic()
        while True:
            for i, worker in enumerate(self._workers):
                if worker.key is not None:
                    continue
                task = pending.popleft() if pending else next(todo, None)
                if task is None:
                    break
                try:
                    worker.conn.send(task)
                except OSError:  # Died while idle: replace it and retry the task.
                    self._crashed(i)
                    pending.append(task)
                    continue
                worker.key = task[0]
                worker.deadline = self._deadline(worker)
            busy = [(i, w) for i, w in enumerate(self._workers) if w.key is not None]
            if not busy:
                if pending:
                    continue
                return
            now = time.monotonic()
            wait = min(w.deadline for _, w in busy) - now
            if tick is not None:
                wait = min(wait, last_yield + tick - now)
            waitables = [w.conn for _, w in busy] + [w.process.sentinel for _, w in busy]
            ready = set(
                multiprocessing.connection.wait(waitables, None if math.isinf(wait) else max(wait, 0))
            )
            if ready:
                last_yield = time.monotonic()
            elif tick is not None and time.monotonic() - last_yield >= tick:
                last_yield = time.monotonic()
                yield None
            for i, worker in busy:
                key = worker.key
                if worker.conn in ready:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        yield key, False, self._crashed(i)
                        continue
                    if message == _READY:
                        worker.ready = True
                        worker.deadline = self._deadline(worker)
                    else:
                        worker.key = None
                        yield key, message[1], message[2]
                elif worker.process.sentinel in ready:
                    yield key, False, self._crashed(i)
                elif time.monotonic() >= worker.deadline:
                    worker.process.kill()
                    self._replace(i)
                    yield key, False, ("timeout", f"no result after {self._timeout:g} s; worker killed")

    def _deadline(self, worker: _Worker) -> float:
        if not self._timeout:
            return math.inf
        # The clock starts once the worker has started: a slow start (a busy machine importing
        # numpy and FFmpeg) is not the file's fault.
        return time.monotonic() + self._timeout + (0.0 if worker.ready else _STARTUP_GRACE_S)

    def _crashed(self, i: int) -> tuple[str, str]:
        worker = self._workers[i]
        worker.process.join(5.0)
        code = worker.process.exitcode
        if code is not None and code < 0:
            try:
                detail = f"decoding process killed by {signal.Signals(-code).name}"
            except ValueError:
                detail = f"decoding process killed by signal {-code}"
        else:
            detail = f"decoding process exited with code {code}"
        if not worker.ready:
            # Not the file's fault: no worker can start (an unguarded __main__ under spawn, a
            # broken install), and blaming each file in turn would fail the whole dataset.
            raise RuntimeError(
                f"a decoding worker process died while starting ({detail}); its stderr says why. "
                "Scripts that start worker processes need an `if __name__ == '__main__':` guard."
            )
        self._replace(i)
        return "worker_crash", detail

    def _replace(self, i: int) -> None:
        old = self._workers[i]
        if old.process.is_alive():
            old.process.kill()
        old.process.join()
        old.conn.close()
        self._workers[i] = self._start()

    def close(self) -> None:
        """Stops idle workers politely and kills busy ones (their results are abandoned)."""
        for worker in self._workers:
            try:
                if worker.key is None:
                    worker.conn.send(None)
                else:
                    worker.process.kill()
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(5.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = []
