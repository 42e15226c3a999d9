"""Saving and restoring the train state with orbax.

A checkpoint of step N is a directory ``DIR/checkpoints/N`` holding two items: ``state``, one
pytree of ``params``, ``ema_params`` and ``opt_state`` (the step is the directory's name), and
``data``, every process's input position. Sampling and evaluation restore the EMA parameters alone
from ``state`` (a partial restore). Checkpoints written by earlier versions, with each part of the
state as its own item, still restore. Orbax writes into a temporary directory and
renames it when complete, so a crash mid-save never leaves a checkpoint that looks finished. A
workdir may also be a URL (``gs://bucket/run``, what every host of a TPU pod shares): paths are
``etils.epath`` paths, which keep URLs intact, and orbax writes objects there with its commit
marker (object stores have no rename).

Training saves through :class:`BackgroundSaver`: the train loop pays only for an on-device copy of
the state, and orbax's own blocking work (copying to host, per-array metadata, directory set-up,
waiting for the previous save) runs on a saver thread while the next steps compute.

A checkpoint damaged after it was finished (a truncated or emptied file) is not fatal: resuming
(:func:`restore_newest`) falls back to the newest checkpoint that reads, and sets the damaged ones
aside as ``checkpoints/N.damaged``, which orbax does not take for steps.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from sora_jax.errors import ConfigError
from sora_jax.train.state import TrainState

log = logging.getLogger("sora_jax")
T = TypeVar("T")

PARTS = ("params", "ema_params", "opt_state")  # The train state's checkpointed arrays.
# One item for all parts: orbax's set-up and metadata work is per item, and a save every few steps
# pays it each time.
STATE = "state"
DATA = "data"  # The input iterator's state, so a resumed run reads exactly the batches that come next.


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
    path = epath.Path(workdir)
    # Orbax wants local paths absolute; a URL already is (and absolute() would mangle it).
    return (path if "://" in os.fspath(path) else path.absolute()) / "checkpoints"


def manager(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """The run's checkpoint manager; ``config.checkpoint`` sets saving (default: read and save
    at the end only, synchronously). ``read_only``: for sampling and evaluation, which never save
    (and need not see orbax's notices that they will not)."""
    ck = config.checkpoint if config is not None else None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ck.keep if ck and not read_only else None,
        keep_period=(ck.keep_period or None) if ck and not read_only else None,
        save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=bool(ck and ck.async_save),
        create=not read_only,
        read_only=read_only,
    )
    if read_only:
        _quiet_read_only_notice()
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=item_handlers())


def _quiet_read_only_notice() -> None:
    """Drop orbax's warning that a read-only manager is read-only, which would end the output of
    every ``sample`` and ``evaluate``; orbax's other records pass."""
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _ReadOnlyNotice) for f in absl.filters):
        absl.addFilter(_ReadOnlyNotice())


class _ReadOnlyNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Given directory is read only=%s"


def saved_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps with a finished checkpoint in ``workdir``, oldest first (creates nothing)."""
    if not checkpoint_dir(workdir).exists():
        return []
    mgr = manager(workdir, read_only=True)
    try:
        return sorted(mgr.all_steps())
    finally:
        mgr.close()


def item_handlers() -> dict[str, ocp.CheckpointHandler]:
    """How each item of a checkpoint is written."""
    handlers: dict[str, ocp.CheckpointHandler] = {STATE: ocp.PyTreeCheckpointHandler()}
    handlers |= {name: ocp.StandardCheckpointHandler() for name in PARTS}  # Earlier versions' items.
    # Each process writes its own input iterator's position: process_<i>-of-<n>.json.
    handlers[DATA] = grain.checkpoint.CheckpointHandler()
    return handlers


def _pure(tree: Any) -> Any:
    """nnx States to plain nested dicts of arrays (what orbax stores)."""
    return jax.tree.map(
        lambda x: x.to_pure_dict() if isinstance(x, nnx.State) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nnx.State),
    )


class _PositionSnapshot:
    """An input iterator's state as it is at construction, in the form grain's handler writes."""

    def __init__(self, iterator: grain.DatasetIterator) -> None:
        self._state = json.dumps(iterator.get_state(), indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


def save(mgr: ocp.CheckpointManager, state: TrainState, data: grain.DatasetIterator) -> None:
    """Save ``state`` and the input position from the calling thread (orbax may still write
    asynchronously). The iterator's position is taken now: an asynchronous save writes it later,
    by which time the iterator has moved on."""
    _save(mgr, int(state.step), _arrays(state), _PositionSnapshot(data))


@jax.jit
def _device_copy(tree: Any) -> Any:
    """A copy of ``tree``'s arrays in new device buffers, on the same shardings: the train step
    donates (frees) the state's buffers, so a save that outlives the step needs its own."""
    return jax.tree.map(jnp.copy, tree)


class BackgroundSaver:
    """Saves train states from one background thread, so the train loop does not wait for orbax.

    ``save`` snapshots the state with one on-device copy (asynchronous, like any dispatched
    computation) and the input position, then returns; the saver thread hands them to the
    (asynchronous) orbax manager, which copies them to host and writes them. At most one snapshot
    is pending: a save waits until the previous one has reached orbax, so the extra device memory
    is at most one copy of params, EMA and optimizer state. A save that failed raises at the next
    ``save`` or ``wait_until_finished``. Every process of a multi-host run makes the same calls in
    the same order, as orbax's cross-process barriers need.
    """

    def __init__(self, mgr: ocp.CheckpointManager) -> None:
        self.manager = mgr
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt_saver")
        self._pending: concurrent.futures.Future | None = None
        self._last_requested = mgr.latest_step()

    @property
    def latest_step(self) -> int | None:
        """The newest step saved or being saved (orbax's ``latest_step`` lags while one is queued)."""
        return self._last_requested

    def save(self, step: int, state: TrainState, data: grain.DatasetIterator) -> None:
        """Save ``state``, which is at ``step`` (given, so the loop need not wait for the device to
        report it), and ``data``'s position."""
        self._hand_off()
        # Both snapshots are taken now: the next step donates the state, and the iterator moves on.
        arrays = _device_copy(_arrays(state))
        self._pending = self._thread.submit(_save, self.manager, step, arrays, _PositionSnapshot(data))
        self._last_requested = step

    def _hand_off(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # Re-raises a failed save here, in the train loop.

    def wait_until_finished(self) -> None:
        """Block until every requested checkpoint is complete on storage."""
        self._hand_off()
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.wait_until_finished()
        self._thread.shutdown()
        self.manager.close()


def _arrays(state: TrainState) -> dict[str, Any]:
    """The checkpointed arrays of ``state``, one plain pytree per item."""
    return {name: _pure(getattr(state, name)) for name in PARTS}


def _save(mgr: ocp.CheckpointManager, step: int, arrays: dict[str, Any], position: _PositionSnapshot) -> None:
    args = {STATE: ocp.args.PyTreeSave(arrays), DATA: grain.checkpoint.CheckpointSave(position)}
    mgr.save(step, args=ocp.args.Composite(**args), force=True)


def _restore_parts(
    mgr: ocp.CheckpointManager, step: int, targets: dict[str, Any], **more: ocp.args.CheckpointArgs
) -> dict[str, Any]:
    """Restore the parts named in ``targets`` (abstract plain pytrees carrying the shardings to
    restore onto), and the ``more`` items in place (an input iterator's position)."""
    if (epath.Path(mgr.directory) / str(step) / STATE).exists():
        restore_args = ocp.checkpoint_utils.construct_restore_args(targets)
        args = {STATE: ocp.args.PyTreeRestore(targets, restore_args=restore_args, partial_restore=True)}
        restored = mgr.restore(step, args=ocp.args.Composite(**args, **more))
        return dict(restored[STATE])
    # An earlier version's checkpoint: one item per part.
    args = {name: ocp.args.StandardRestore(target) for name, target in targets.items()}
    restored = mgr.restore(step, args=ocp.args.Composite(**args, **more))
    return {name: restored[name] for name in targets}


def restore(
    mgr: ocp.CheckpointManager,
    abstract: TrainState,
    data: grain.DatasetIterator,
    step: int | None = None,
) -> TrainState:
    """Restore a full train state onto the shardings ``abstract`` carries (any mesh), and move
    ``data`` (this process's input iterator) to where it stood at that step."""
    step = mgr.latest_step() if step is None else step
    targets = {name: _pure(getattr(abstract, name)) for name in PARTS}
    restored = _restore_parts(mgr, step, targets, **{DATA: grain.checkpoint.CheckpointRestore(data)})
    parts = {name: _fill(getattr(abstract, name), restored[name]) for name in PARTS}
    scalar = lambda value: jax.device_put(jnp.asarray(value, jnp.int32), abstract.step.sharding)  # noqa: E731
    return TrainState(step=scalar(step), nonfinite_in_a_row=scalar(0), **parts)


def restore_newest(
    mgr: ocp.CheckpointManager, abstract: TrainState, data: grain.DatasetIterator
) -> TrainState:
    """:func:`restore` of the newest checkpoint that can be read.

    Newer ones that cannot (a file truncated or emptied after the save) are each moved aside to
    ``N.damaged`` with a warning, once an older one has restored: a train state that fits no
    checkpoint moves none.

    Raises:
        ConfigError: no checkpoint restores; names the newest and why it failed.
    """
    steps = sorted(mgr.all_steps(), reverse=True)
    step, state, damaged = newest_readable(steps, lambda s: restore(mgr, abstract, data, s), mgr.directory)
    for bad, cause in damaged:
        moved = set_aside(mgr, bad)
        log.warning(
            "checkpoint of step %d cannot be read (%s): moved to %s; resuming from step %d",
            bad,
            cause,
            moved,
            step,
        )
    return state


def newest_readable(
    steps: Sequence[int], load: Callable[[int], T], directory: str | os.PathLike
) -> tuple[int, T, list[tuple[int, str]]]:
    """``load`` the first of ``steps`` (newest first) that loads: ``(step, what it loaded, [(step,
    why it failed)] of the newer ones)``.

    Raises:
        ConfigError: none loads (or there are no steps); names the newest and why it failed.
    """
    failed: list[tuple[int, str]] = []
    for step in steps:
        try:
            return step, load(step), failed
        except Exception as error:  # noqa: BLE001 - damage shows as any error of orbax, tensorstore or JSON.
            failed.append((step, failure_cause(error)))
    if not failed:
        raise ConfigError(f"no checkpoint in {directory}")
    (newest, cause), others = failed[0], len(failed) - 1
    if not others:
        raise ConfigError(f"the checkpoint of step {newest} in {directory} cannot be read: {cause}")
    raise ConfigError(
        f"no checkpoint in {directory} can be read: step {newest}: {cause} (and the {others} older fail too)"
    )


def failure_cause(error: BaseException) -> str:
    """One short line saying why a checkpoint could not be read: the first line of the error it was
    raised from, innermost first (orbax wraps tensorstore's precise one in messages that run to pages)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:297] + "..."


def set_aside(mgr: ocp.CheckpointManager, step: int) -> epath.Path:
    """Move checkpoint ``step`` to ``N.damaged`` beside it (``N.damaged-2``, ... if taken): kept to
    look at, no longer a step for orbax (whose step names are digits, or end in ``_`` and digits)."""
    source = epath.Path(mgr.directory) / str(step)
    target, number = source.with_name(f"{step}.damaged"), 2
    while target.exists():
        target, number = source.with_name(f"{step}.damaged-{number}"), number + 1
    if jax.process_index() == 0:
        source.rename(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    mgr.reload()
    return target


def restore_params(
    mgr: ocp.CheckpointManager,
    abstract_params: nnx.State,
    step: int | None = None,
    item: str = "ema_params",
) -> nnx.State:
    """Restore only one parameter item (the EMA by default) for sampling or evaluation."""
    step = mgr.latest_step() if step is None else step
    restored = _restore_parts(mgr, step, {item: _pure(abstract_params)})
    return _fill(abstract_params, restored[item])


def _fill(target: Any, pure: Any) -> Any:
    """Put restored plain arrays back into the structure of ``target`` (nnx States included)."""
    if isinstance(target, nnx.State):
        state = jax.tree.map(lambda x: x, target)  # A copy whose leaves are then replaced.
        nnx.replace_by_pure_dict(state, pure)
        return state
    return jax.tree.map(
        lambda t, p: _fill(t, p) if isinstance(t, nnx.State) else p,
        target,
        pure,
        is_leaf=lambda x: isinstance(x, nnx.State),
    )
