"""The device mesh: (data, fsdp, sequence, tensor) axes sized by ``mesh.ici_*`` and ``mesh.dcn_*``.

Within a slice devices talk over fast inter-chip links (ICI); slices talk over the data-centre
network (DCN). Each mesh axis is ``ici x dcn`` devices long, laid out so that only the ``dcn``
factor crosses slices: put data parallelism there, since it communicates least (one gradient
all-reduce per step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from sora_jax.errors import ConfigError
from sora_jax.parallel.sharding import MESH_AXES, axis_rules, axis_size


def mesh_shape(
    config: ml_collections.ConfigDict, num_devices: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ici sizes, dcn sizes) per mesh axis, with a -1 ici axis filled in to use every device.

    Raises:
        ConfigError: the sizes do not multiply to the device count.
    """
    dcn = tuple(config.mesh[f"dcn_{axis}"] for axis in MESH_AXES)
    slices = math.prod(dcn)
    if num_devices % slices:
        raise ConfigError(f"mesh.dcn_* = {dcn} asks for {slices} slices; {num_devices} devices do not split")
    per_slice = num_devices // slices
    ici = [config.mesh[f"ici_{axis}"] for axis in MESH_AXES]
    known = math.prod(s for s in ici if s != -1)
    if -1 in ici:
        if per_slice % known:
            raise ConfigError(f"mesh.ici_* = {ici} cannot fill the {per_slice} devices of a slice")
        ici[ici.index(-1)] = per_slice // known
    if math.prod(ici) != per_slice:
        raise ConfigError(
            f"mesh.ici_* = {dict(zip(MESH_AXES, ici, strict=True))} needs {math.prod(ici)} devices per "
            f"slice, found {per_slice}; set one of mesh.ici_* to -1 to fill in"
        )
    return tuple(ici), dcn


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh over ``devices`` (default: all devices of every process), checked against the model.

    Multi-slice meshes group devices by their ``slice_index`` (TPU), or by process where devices
    have none, so that several local processes can stand in for several slices.
    """
    devices = list(devices if devices is not None else jax.devices())
    ici, dcn = mesh_shape(config, len(devices))
    slices = math.prod(dcn)
    if slices == 1:
        grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
    else:
        by_slice = hasattr(devices[0], "slice_index")
        granules = {d.slice_index if by_slice else d.process_index for d in devices}
        if len(granules) != slices:
            kind = "slices" if by_slice else "processes"
            raise ConfigError(
                f"mesh.dcn_* = {dcn} asks for {slices} slices, but the devices form {len(granules)} {kind}"
            )
        grid = mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices, process_is_granule=not by_slice, allow_split_physical_axes=True
        )
    mesh = Mesh(np.asarray(grid), MESH_AXES)
    check_mesh(config, mesh)
    return mesh


def check_mesh(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Every sharded dimension divides by the number of devices that split it.

    Raises:
        ConfigError: naming the config key to change.
    """
    m, d = config.model, config.data
    rules = axis_rules(config)
    names = ("batch", "length", "embed", "heads", "mlp", "vocab")
    ways = {name: axis_size(mesh, name, rules) for name in names}
    checks = [
        ("data.batch_size", d.batch_size, "batch"),
        ("data.seq_len", d.seq_len, "length"),
        ("model.dim", m.dim, "embed"),
        ("model.text_dim", m.text_dim, "embed"),
        ("model.heads", m.heads, "heads"),
        ("model.text_heads", m.text_heads, "heads"),
        ("model.mlp_ratio", int(m.dim * m.mlp_ratio), "mlp"),
        ("model.text_vocab_size", m.text_vocab_size, "vocab"),
    ]
    for key, size, name in checks:
        if size % ways[name]:
            raise ConfigError(
                f"config key {key!r}: {size} does not split {ways[name]} ways over mesh axes "
                f"{dict(rules)[name]} of the mesh {dict(mesh.shape)} (logical axis {name!r})"
            )
    sequence = ways["length"]
    if sequence > 1 and m.attention != "ring" and m.sequence_parallel == "all_to_all":
        if m.heads % (ways["heads"] * sequence):
            raise ConfigError(
                f"config key 'model.heads': all_to_all sequence parallelism needs heads ({m.heads}) to "
                f"divide by tensor x sequence = {ways['heads'] * sequence}; use model.attention=ring"
            )


def validate_mesh_section(mesh: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first ``mesh.*`` key that cannot lay out a mesh."""
    sizes = [mesh[f"ici_{a}"] for a in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(
            f"config key 'mesh.ici_data': axis sizes must be positive, with at most one -1; got {sizes}"
        )
    for axis in MESH_AXES:
        if mesh[f"dcn_{axis}"] < 1:
            raise ConfigError(f"config key 'mesh.dcn_{axis}': must be at least 1, got {mesh[f'dcn_{axis}']}")
    for name, mesh_axes in mesh.rules.items():
        unknown = [a for a in mesh_axes if a not in MESH_AXES]
        if unknown:
            raise ConfigError(
                f"config key 'mesh.rules.{name}': {unknown} are not mesh axes ({', '.join(MESH_AXES)})"
            )
        if len(set(mesh_axes)) != len(mesh_axes):
            raise ConfigError(f"config key 'mesh.rules.{name}': repeats a mesh axis: {mesh_axes}")
