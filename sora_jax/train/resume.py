"""What ``sora-jax train`` checks before it writes anything into a workdir.

A workdir with checkpoints holds one run: the state of one model trained by one objective on one
stream of data, which its ``config.json`` describes. Resuming it with a config that changes any of
those would fail deep inside the restore (a model of another width) or, worse, silently train
something else on the restored state (another data store, another seed). So the config asked for is
compared with the stored one first, and the keys that may differ are listed here, from the schema in
:mod:`sora_jax.config`:

- ``train.*``: how long the run goes (``train.steps``), how often it logs and samples, what it
  samples, when it gives up on non-finite steps, what it profiles;
- ``checkpoint.*``: when checkpoints are written and how many are kept;
- ``eval.*``: what ``sora-jax evaluate`` measures; training never reads it;
- ``mesh.*``: the parallel layout; a restore reshards the state onto any mesh;
- ``model.attention``, ``model.sequence_parallel``, ``model.splash_interpret``, ``model.remat``:
  which kernel computes attention and what is recomputed, the same function and parameters;
- ``diffusion.sampler``, ``diffusion.sample_steps``, ``diffusion.guidance``,
  ``diffusion.cond_guidance``, ``diffusion.guidance_interval``: how samples are generated, not how
  the model is trained;
- ``data.prefetch``: how many batches are made ahead, not which;
- ``optim.*``: the learning-rate schedule and AdamW's and the EMA's rates, except a change of
  ``optim.grad_clip`` that turns clipping on or off, which changes the optimizer state's structure.

Every other key fixes what the checkpoints hold or which batches come next (``seed``, ``task``,
``model.*``, ``autoencoder.*``, ``data.*``, ``diffusion.*``'s training objective,
``conditioning.*``) and is refused with the way on: pass the stored value, or use a new workdir.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

import ml_collections
from etils import epath

from sora_jax.config import config_from_json, config_to_json
from sora_jax.data.pipeline import open_store
from sora_jax.errors import ConfigError
from sora_jax.paths import cannot_write_in
from sora_jax.train import checkpoint

# Keys (a trailing dot: a whole section) that may differ from the stored config when a run resumes.
RESUMABLE = (
    "train.",
    "checkpoint.",
    "eval.",
    "mesh.",
    "optim.",
    "model.attention",
    "model.sequence_parallel",
    "model.splash_interpret",
    "model.remat",
    "diffusion.sampler",
    "diffusion.sample_steps",
    "diffusion.guidance",
    "diffusion.cond_guidance",
    "diffusion.guidance_interval",
    "data.prefetch",
)


def check_workdir(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    """Refuse, before anything is written, a start of ``config`` in ``workdir`` that cannot work.

    In order: a workdir holding checkpoints of a run that ``config`` would change
    (:func:`check_resumable`), a ``data.store`` that is missing or holds no clips, and a workdir
    that cannot be written (a write and removal of a probe file, which also finds a read-only
    bucket). Only the last creates anything: ``workdir`` itself.

    Raises:
        ConfigError: naming what is wrong and what to do.
    """
    check_resumable(config, workdir)
    if config.data.store:
        open_store(config.data.store)
    check_writable(workdir, "--workdir")


def check_resumable(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    """Refuse ``config`` when ``workdir`` has checkpoints whose ``config.json`` differs from it in
    a key outside :data:`RESUMABLE`. A workdir without checkpoints, or without ``config.json``,
    passes (there is nothing to compare; a restore that then fails says why).

    Raises:
        ConfigError: one line naming each refused key ``old -> new``, and the flags that resume.
    """
    config_file = workdir / "config.json"
    if not checkpoint.saved_steps(workdir) or not config_file.exists():
        return
    try:
        stored = config_from_json(config_file.read_text())
    except (ValueError, ConfigError) as error:  # Not JSON, or not a config of this version.
        raise ConfigError(
            f"{config_file} cannot be read ({error}); resume needs it to check the config"
        ) from None
    changed = [
        (key, old, new) for key, old, new in _differences(stored, config) if not _resumable(key, old, new)
    ]
    if changed:
        differences = ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changed)
        flags = " ".join(_flag(key, old) for key, old, _ in changed)
        raise ConfigError(
            f"{workdir} holds checkpoints of a run with another config: {differences}; to resume it, "
            f"pass {flags}; to train the new config, use a new --workdir"
        )


def check_writable(directory: epath.Path, what: str) -> None:
    """Create ``directory`` if needed, and check that it takes new entries: a local folder with
    :func:`~sora_jax.paths.cannot_write_in`, a bucket (``gs://``) by writing and removing a probe
    object.

    Raises:
        ConfigError: ``directory`` cannot be written; ``what`` says what it is (``--workdir``).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if "://" in os.fspath(directory):
            probe = directory / f".write_check_{os.getpid()}"
            probe.write_text("")
            probe.unlink()
            refused = None
        else:
            refused = cannot_write_in(os.fspath(directory))
    except OSError as error:
        refused = error.strerror or str(error)
    if refused:
        raise ConfigError(f"{what} {directory} is not writable ({refused})")


def _resumable(key: str, old: Any, new: Any) -> bool:
    if key == "optim.grad_clip":  # Clipping adds a part to the optimizer state.
        return (old > 0) == (new > 0)
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in RESUMABLE)


def _differences(
    stored: ml_collections.ConfigDict, asked: ml_collections.ConfigDict
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, stored value, asked value)`` for each key whose values differ, compared as
    ``config.json`` holds them."""
    old, new = _flat(json.loads(config_to_json(stored))), _flat(json.loads(config_to_json(asked)))
    return [(key, old.get(key), new.get(key)) for key in sorted(old | new) if old.get(key) != new.get(key)]


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = tuple(value) if isinstance(value, list) else value  # JSON's tuples.
    return flat


def _flag(key: str, value: Any) -> str:
    """The ``--config.KEY=VALUE`` argument that sets ``value``, quoted for a shell."""
    if isinstance(value, tuple):
        text = "(" + ",".join(repr(item) for item in value) + ("," if len(value) == 1 else "") + ")"
    else:
        text = value if isinstance(value, str) else repr(value)
    return f"--config.{key}={shlex.quote(text)}"
