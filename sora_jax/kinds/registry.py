"""The registry of kinds of run: ``config.task`` -> :class:`~sora_jax.kinds.base.RunKind`.

The trainer, ``sora-jax aot``, ``evaluate``, ``sample`` and ``data-stats`` know no model by name:
they look up ``config.task`` here and call the kind it names (model and parameters, optimizer,
train step, batches, sampler, evaluator, throughput).

Built-in kinds are listed by module path and imported only when asked for, so the registry
depends on none of them (and they may import the trainer's building blocks freely). A kind defined
elsewhere joins with :func:`register`, or is named in the config by its import path
(``config.task = "my_package.my_module:MyKind"``), which also works in a later process that
restores the run.
"""

from __future__ import annotations

import importlib

import ml_collections

from sora_jax.errors import ConfigError
from sora_jax.kinds.base import RunKind

# name -> "module:class" of the built-in kinds.
BUILT_IN = {
    "dit": "sora_jax.kinds.video_dit:VideoDiTKind",
    "autoencoder": "sora_jax.kinds.autoencoder:AutoencoderKind",
    "wan": "sora_jax.kinds.wan:WanKind",
}
_registered: dict[str, type[RunKind]] = {}


def register(name: str, kind: type[RunKind]) -> type[RunKind]:
    """Make ``kind`` available as ``config.task = name`` in this process; returns ``kind``."""
    _registered[name] = kind
    return kind


def names() -> list[str]:
    """Every kind known by name in this process."""
    return sorted({*BUILT_IN, *_registered})


def kind_class(name: str) -> type[RunKind]:
    """The class registered as ``name``, a built-in kind, or the one at import path ``module:Class``.

    Raises:
        ConfigError: no such kind.
    """
    if name in _registered:
        return _registered[name]
    path = BUILT_IN.get(name, name)
    module_name, _, attribute = path.partition(":")
    if not attribute:
        known = ", ".join(names())
        raise ConfigError(f"config key 'task': {name!r} is not one of {known}, nor a module:Class path")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"config key 'task': cannot import {path!r}: {error}") from None


def run_kind(config: ml_collections.ConfigDict) -> RunKind:
    """The kind of run ``config.task`` names, bound to ``config``."""
    return kind_class(config.task)(config)
