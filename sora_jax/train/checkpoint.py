"""Saving and restoring the train state with orbax.

A checkpoint of step N is a directory ``DIR/checkpoints/N`` with one item per part of the state
(``params``, ``ema_params``, ``opt_state``; the step is the directory's name), so sampling and
evaluation can restore the EMA parameters alone. Orbax writes into a temporary directory and
renames it when complete, so a crash mid-save never leaves a checkpoint that looks finished. A
workdir may also be a URL (``gs://bucket/run``, what every host of a TPU pod shares): paths are
``etils.epath`` paths, which keep URLs intact, and orbax writes objects there with its commit
marker (object stores have no rename).
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from sora_jax.train.state import TrainState

ITEMS = ("params", "ema_params", "opt_state")
DATA = "data"  # The input iterator's state, so a resumed run reads exactly the batches that come next.


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
    path = epath.Path(workdir)
    # Orbax wants local paths absolute; a URL already is (and absolute() would mangle it).
    return (path if "://" in os.fspath(path) else path.absolute()) / "checkpoints"


def manager(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """The run's checkpoint manager; ``config.checkpoint`` sets saving (default: read and save
    at the end only, synchronously)."""
    ck = config.checkpoint if config is not None else None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ck.keep if ck else None,
        keep_period=(ck.keep_period or None) if ck else None,
        enable_async_checkpointing=bool(ck and ck.async_save),
        create=not read_only,
        read_only=read_only,
    )
    handlers = {name: ocp.StandardCheckpointHandler() for name in ITEMS}
    # Each process writes its own input iterator's position: process_<i>-of-<n>.json.
    handlers[DATA] = grain.checkpoint.CheckpointHandler()
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


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


def save(
    mgr: ocp.CheckpointManager, state: TrainState, data: grain.DatasetIterator, *, force: bool = True
) -> None:
    step = int(state.step)
    args = {name: ocp.args.StandardSave(_pure(getattr(state, name))) for name in ITEMS}
    # The iterator's position is taken now: an asynchronous save writes it later, by which time
    # the iterator has moved on.
    args[DATA] = grain.checkpoint.CheckpointSave(_PositionSnapshot(data))
    mgr.save(step, args=ocp.args.Composite(**args), force=force)


def restore(
    mgr: ocp.CheckpointManager,
    abstract: TrainState,
    data: grain.DatasetIterator,
    step: int | None = None,
) -> TrainState:
    """Restore a full train state onto the shardings ``abstract`` carries (any mesh), and move
    ``data`` (this process's input iterator) to where it stood at that step."""
    step = mgr.latest_step() if step is None else step
    args = {name: ocp.args.StandardRestore(_pure(getattr(abstract, name))) for name in ITEMS}
    args[DATA] = grain.checkpoint.CheckpointRestore(data)
    restored = mgr.restore(step, args=ocp.args.Composite(**args))
    parts = {name: _fill(getattr(abstract, name), restored[name]) for name in ITEMS}
    scalar = lambda value: jax.device_put(jnp.asarray(value, jnp.int32), abstract.step.sharding)  # noqa: E731
    return TrainState(step=scalar(step), nonfinite_in_a_row=scalar(0), **parts)


def restore_params(
    mgr: ocp.CheckpointManager,
    abstract_params: nnx.State,
    step: int | None = None,
    item: str = "ema_params",
) -> nnx.State:
    """Restore only one parameter item (the EMA by default) for sampling or evaluation."""
    step = mgr.latest_step() if step is None else step
    restored = mgr.restore(
        step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(_pure(abstract_params))})
    )
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
