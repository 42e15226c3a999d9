"""Mesh shapes from the config: ICI within a slice, DCN across slices, and what cannot divide."""

import numpy as np
import pytest

from experiments.world_tiny import get_config
from sora_jax.config import ConfigError
from sora_jax.parallel.mesh import make_mesh, mesh_shape
from sora_jax.parallel.tpu import topology_devices


def config_with(**mesh):
    config = get_config("test")
    for key, value in mesh.items():
        config.mesh[key] = value
    return config


def test_minus_one_fills_each_slice():
    assert mesh_shape(config_with(ici_data=-1, ici_tensor=2), 8) == ((4, 1, 1, 2), (1, 1, 1, 1))
    assert mesh_shape(config_with(ici_data=1, ici_fsdp=-1, dcn_data=2), 8) == ((1, 4, 1, 1), (2, 1, 1, 1))


def test_sizes_that_do_not_fill_the_devices_are_refused():
    with pytest.raises(ConfigError, match="needs 4 devices per slice, found 8"):
        mesh_shape(config_with(ici_data=2, ici_fsdp=2), 8)
    with pytest.raises(ConfigError, match="cannot fill"):
        mesh_shape(config_with(ici_data=-1, ici_fsdp=3), 8)


def test_a_mesh_that_does_not_divide_the_model_names_the_key():
    with pytest.raises(ConfigError, match="model.heads"):
        make_mesh(config_with(ici_data=2, ici_tensor=4))  # 2 heads over 4 devices
    with pytest.raises(ConfigError, match="data.seq_len"):
        config = config_with(ici_data=1, ici_sequence=8)
        config.data.seq_len = 100
        config.model.attention = "ring"
        make_mesh(config)


def test_slices_are_joined_over_the_data_axis_of_a_hybrid_mesh():
    devices = topology_devices("v5p-8", num_slices=2)
    mesh = make_mesh(config_with(ici_data=1, ici_fsdp=-1, dcn_data=2), devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "sequence": 1, "tensor": 1}
    slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    # Each data index is one whole slice; the fsdp axis stays inside a slice (fast links).
    assert all(len(set(slice_of[i].ravel())) == 1 for i in range(2))
    assert slice_of[0].ravel()[0] != slice_of[1].ravel()[0]


def test_dcn_sizes_must_match_the_slices():
    devices = topology_devices("v5p-8", num_slices=2)
    with pytest.raises(ConfigError, match="asks for 4 slices"):
        make_mesh(config_with(ici_data=-1, dcn_data=4), devices)
