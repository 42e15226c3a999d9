"""Logical axis names and the rules that map them to mesh axes.

Modules name the axes of their parameters (``("embed", "mlp")``) and of activations at block
boundaries (``("batch", "length", "embed")``); only this table knows the mesh. Changing the
parallelism is a change of rules or mesh shape, never of model code.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "sequence", "tensor")

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "length": "sequence",
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": None,
    "patch": None,
    "text_length": None,
    "clips": None,
}


def logical_to_spec(names: Sequence[str | None] | None, rules: dict = DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec for an array whose axes carry logical ``names`` (None: replicated axis)."""
    if not names:
        return PartitionSpec()
    used: set[str] = set()
    spec = []
    for name in names:
        axes = rules.get(name) if name is not None else None
        axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes or ())
        # A mesh axis may shard only one dimension of an array: later uses stay replicated.
        axes_tuple = tuple(a for a in axes_tuple if a not in used)
        used.update(axes_tuple)
        spec.append(axes_tuple[0] if len(axes_tuple) == 1 else (axes_tuple or None))
    return PartitionSpec(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical names, inside ``jax.set_mesh`` (else a no-op)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def named(mesh: Mesh, names: Sequence[str | None] | None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names))
