"""The device mesh: (data, fsdp, sequence, tensor) axes sized by the config's ``mesh.ici_*`` keys."""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from sora_jax.parallel.sharding import MESH_AXES


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """Axis sizes, with a -1 axis filled in so the product is ``num_devices``.

    Raises:
        ValueError: the sizes do not multiply to the device count.
    """
    sizes = [config.mesh[f"ici_{axis}"] for axis in MESH_AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh axes {sizes} cannot fill {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices, "
            f"found {num_devices}; set one of mesh.ici_* to -1 to fill in"
        )
    return tuple(sizes)


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
    devices = jax.devices()
    shape = mesh_shape(config, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)
