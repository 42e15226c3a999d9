"""Loading a trained run: its config, its kind and model definition, and EMA parameters at a step.

    run = TrainedRun("runs/world_tiny")          # its config.json, for the devices here
    params = run.params()                        # EMA parameters of the newest readable checkpoint
    params = run.params(500)                     # ... or of step 500
    step, params = run.load()                    # ... and which step that was
    run.close()

Every command that uses a trained run (``evaluate``, ``sample``, ``encode``, a latent run's
decoder, the benchmarks) goes through here. Only the EMA parameters are restored: their shapes
come from the kind's ``init`` traced abstractly, without the optimizer state. The run's mesh is
replaced by data parallelism over the devices here, so a run trained on a pod samples on a laptop.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
from etils import epath

from sora_jax.config import config_from_json
from sora_jax.errors import ConfigError
from sora_jax.kinds.registry import run_kind
from sora_jax.parallel.mesh import make_mesh
from sora_jax.train import checkpoint
from sora_jax.train.state import abstract_params, model_graphdef

log = logging.getLogger("sora_jax")


def local_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The run's config, with its mesh replaced by data parallelism over the devices here.

    Raises:
        FileNotFoundError: ``workdir`` holds no ``config.json``.
    """
    config_file = epath.Path(workdir) / "config.json"
    if not config_file.is_file():
        if not epath.Path(workdir).exists():
            raise FileNotFoundError(f"{config_file} not found: {workdir} does not exist")
        raise FileNotFoundError(f"{config_file} not found: is {workdir} a training workdir?")
    config = config_from_json(config_file.read_text())
    with config.unlocked():
        for axis in ("fsdp", "sequence", "tensor"):
            config.mesh[f"ici_{axis}"] = 1
        config.mesh.ici_data = -1
        for axis in ("data", "fsdp", "sequence", "tensor"):
            config.mesh[f"dcn_{axis}"] = 1
        if config.model.attention == "splash" and jax.default_backend() != "tpu":
            config.model.attention = "xla"  # The same function, computed without the TPU kernel.
    return config


class TrainedRun:
    """A training workdir opened read-only: ``config``, ``kind``, ``graphdef`` and its checkpoints.

    Raises (at construction):
        ConfigError: ``workdir`` is not a training workdir, or trained another kind than ``task``.
    """

    def __init__(self, workdir: str | os.PathLike, task: str | None = None) -> None:
        self.workdir = epath.Path(workdir)  # A local directory or a URL such as gs://bucket/run.
        try:
            self.config = local_config(self.workdir)
        except FileNotFoundError as error:
            raise ConfigError(str(error)) from None
        if task is not None and self.config.task != task:
            raise ConfigError(f"{workdir} trained task {self.config.task!r}, not {task!r}")
        self.kind = run_kind(self.config)
        self.graphdef = model_graphdef(self.config)
        self.manager = checkpoint.manager(self.workdir, read_only=True)
        self._abstract = abstract_params(self.config, make_mesh(self.config))

    def steps(self) -> list[int]:
        """The steps with a checkpoint, oldest first (looked up afresh: a run may still be writing)."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def step(self, step: int | None = None) -> int:
        """``step``, or the latest one when None, checked to have a checkpoint.

        Raises:
            ConfigError: there is no checkpoint, or none of ``step``.
        """
        steps = self.steps()
        if not steps:
            raise ConfigError(f"no checkpoint in {checkpoint.checkpoint_dir(self.workdir)}")
        chosen = steps[-1] if step is None else step
        if chosen not in steps:
            raise ConfigError(f"{self.workdir} has no checkpoint of step {chosen}; it has {steps}")
        return chosen

    def params(self, step: int | None = None) -> Any:
        """The EMA parameters of checkpoint ``step`` (default: the newest readable), on the devices
        here; see :meth:`load`."""
        return self.load(step)[1]

    def load(self, step: int | None = None) -> tuple[int, Any]:
        """``(step, EMA parameters)`` of checkpoint ``step``, or by default of the newest one that
        can be read: a newer, damaged one is skipped with a warning (and left where it is).

        Raises:
            ConfigError: there is no checkpoint (of ``step``), or it (none) can be read.
        """
        steps = [self.step(step)] if step is not None else self.steps()[::-1]
        chosen, params, damaged = checkpoint.newest_readable(
            steps,
            lambda s: checkpoint.restore_params(self.manager, self._abstract, s),
            checkpoint.checkpoint_dir(self.workdir),
        )
        for bad, cause in damaged:
            log.warning("checkpoint of step %d cannot be read (%s); using step %d", bad, cause, chosen)
        return chosen, params

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> TrainedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
