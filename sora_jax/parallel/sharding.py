"""Logical axis names and the rules, from the config, that map them to mesh axes.

Modules name the axes of their parameters (``("embed", "mlp")``) and the input batch names its
arrays' axes (``("batch", "length")``); activations inside the model have names of their own
(``("activation_batch", "activation_length", "activation_embed")``, see
:data:`ACTIVATION_NAMES`), so the layout of inputs and parameters and that of activations are
set independently. Only the rules table (``config.mesh.rules``) knows the mesh. Changing the
parallelism is a change of rules or mesh shape, never of model code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "sequence", "tensor")

# Hashable (it is part of the model's static structure): ((logical name, (mesh axis, ...)), ...).
Rules = tuple[tuple[str, tuple[str, ...]], ...]

# The logical names model code gives activation axes, each to its own rule in ``mesh.rules``:
# rows, tokens and model width of the residual stream [B, L, D], and the heads of attention's
# per-device queries, keys and values [B, L, N, H]. A name missing from the rules is replicated.
ACTIVATION_NAMES = ("activation_batch", "activation_length", "activation_embed", "activation_heads")


def axis_rules(config: ml_collections.ConfigDict) -> Rules:
    """The config's ``mesh.rules`` as a hashable table."""
    return tuple((name, tuple(axes)) for name, axes in sorted(config.mesh.rules.items()))


def mesh_axes(name: str | None, rules: Rules) -> tuple[str, ...]:
    """The mesh axes that shard logical axis ``name`` (empty: replicated)."""
    return dict(rules).get(name, ()) if name is not None else ()


def axis_size(mesh: Mesh | jax.sharding.AbstractMesh, name: str, rules: Rules) -> int:
    """How many ways logical axis ``name`` is split on ``mesh``."""
    return math.prod(mesh.shape[axis] for axis in mesh_axes(name, rules))


def logical_to_spec(names: Sequence[str | None] | None, rules: Rules) -> PartitionSpec:
    """PartitionSpec for an array whose axes carry logical ``names`` (None: replicated axis)."""
    if not names:
        return PartitionSpec()
    used: set[str] = set()
    spec = []
    for name in names:
        # A mesh axis may shard only one dimension of an array: later uses stay replicated.
        axes = tuple(a for a in mesh_axes(name, rules) if a not in used)
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*spec)


def constrain(x: jax.Array, names: Sequence[str | None], rules: Rules) -> jax.Array:
    """``x`` laid out as its axes' logical ``names`` say (one per axis of ``x``, activation names
    such as ``"activation_batch"``), inside ``jax.set_mesh``; without a mesh, ``x`` unchanged."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


def named(mesh: Mesh, names: Sequence[str | None] | None, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules))


def _device_bytes(array: jax.Array) -> int:
    shard = array.sharding.shard_shape(array.shape)
    return math.prod(shard) * array.dtype.itemsize


def describe_shardings(state: object, largest: int = 5) -> list[str]:
    """Lines for the log: bytes per device of ``state.params`` and the whole state, and how its
    ``largest`` parameter arrays are split (``state`` is a TrainState of sharded arrays)."""
    mib = 2**20
    params = jax.tree.leaves_with_path(state.params)  # type: ignore[attr-defined]
    everything = jax.tree.leaves(state)
    lines = [
        f"parameters: {sum(_device_bytes(a) for _, a in params) / mib:.2f} MiB per device "
        f"of {sum(a.nbytes for _, a in params) / mib:.2f} MiB; train state (parameters, EMA, optimizer): "
        f"{sum(_device_bytes(a) for a in everything) / mib:.2f} MiB per device "
        f"of {sum(a.nbytes for a in everything) / mib:.2f} MiB"
    ]
    for path, array in sorted(params, key=lambda item: -item[1].size)[:largest]:
        name = jax.tree_util.keystr(path, simple=True, separator=".").removesuffix(".value")
        spec = array.sharding.spec if isinstance(array.sharding, NamedSharding) else array.sharding
        lines.append(
            f"  {name} {tuple(array.shape)} {array.dtype}: {spec} -> "
            f"{tuple(array.sharding.shard_shape(array.shape))} per device"
        )
    return lines
