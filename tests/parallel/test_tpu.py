"""The TPU catalogue names slices correctly, and libtpu gives compile-only devices for them."""

import numpy as np
import pytest
from jax.experimental import mesh_utils

from sora_jax.parallel.tpu import GiB, parse_accelerator, topology_devices


def test_v5p_suffix_counts_tensorcores():
    v5p_64 = parse_accelerator("v5p-64")
    assert (v5p_64.generation, v5p_64.chips, v5p_64.topology_name) == ("v5p", 32, "v5p:2x4x4")
    assert v5p_64.hbm_bytes == 95 * GiB and v5p_64.peak_flops == 459e12
    assert v5p_64.hosts == 8

    v5p_256 = parse_accelerator("v5p-256")
    assert (v5p_256.chips, v5p_256.topology_name, v5p_256.hosts) == (128, "v5p:4x4x8", 32)


def test_v6e_suffix_counts_chips():
    v6e_64 = parse_accelerator("v6e-64")
    assert (v6e_64.generation, v6e_64.chips, v6e_64.topology_name) == ("v6e", 64, "v6e:8x8")
    assert v6e_64.hbm_bytes == 32 * GiB and v6e_64.peak_flops == 918e12


@pytest.mark.parametrize(
    ("name", "generation", "chips", "topology"),
    [
        ("v5litepod-16", "v5e", 16, "v5e:4x4"),
        ("v5e-4", "v5e", 4, "v5e:2x2"),
        ("v4-8", "v4", 4, "v4:2x2x1"),
        ("V5P-8", "v5p", 4, "v5p:2x2x1"),
        ("v5p-768", "v5p", 384, "v5p:4x8x12"),  # 6 cubes, most balanced whole-cube shape
        ("v5p-12288", "v5p", 6144, "v5p:16x16x24"),
    ],
)
def test_other_slices(name, generation, chips, topology):
    tpu = parse_accelerator(name)
    assert (tpu.generation, tpu.chips, tpu.topology_name) == (generation, chips, topology)


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        ("v9z-8", "unknown generation"),
        ("v5p", "is not of the form"),
        ("tpu-v5p-8", "is not of the form"),
        ("v5p-7", "multiple of 2"),
        ("v5p-96", "not a slice shape"),  # 48 chips: neither a small slice nor whole cubes
        ("v6e-2", "not 2"),
        ("v6e-12", "not 12"),
        ("v6e-512", "exceeds the largest v6e slice"),
        ("v5p-16384", "exceeds the largest v5p slice"),
    ],
)
def test_bad_names_say_what_is_wrong(name, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_accelerator(name)


@pytest.mark.parametrize(
    ("name", "chips", "kind"),
    [
        ("v5p-8", 4, "TPU v5"),
        ("v5p-64", 32, "TPU v5"),
        ("v5p-256", 128, "TPU v5"),
        ("v6e-4", 4, "TPU v6 lite"),
        ("v6e-64", 64, "TPU v6 lite"),
        ("v5litepod-4", 4, "TPU v5 lite"),
        ("v4-8", 4, "TPU v4"),  # megacore: one device per chip, not per TensorCore
    ],
)
def test_topology_devices_one_per_chip(name, chips, kind):
    devices = topology_devices(name)
    assert len(devices) == chips
    assert {d.platform for d in devices} == {"tpu"}
    assert {d.device_kind for d in devices} == {kind}
    assert len({d.id for d in devices}) == chips
    assert len({d.process_index for d in devices}) == parse_accelerator(name).hosts


def test_multislice_devices_form_hybrid_mesh():
    devices = topology_devices("v5p-16", num_slices=2)
    assert len(devices) == 16
    assert sorted({d.slice_index for d in devices}) == [0, 1]

    # ('data' over slices, via DCN) x ('fsdp' within a slice, via ICI).
    mesh = mesh_utils.create_hybrid_device_mesh((1, 8), (2, 1), devices)
    assert mesh.shape == (2, 8)
    for row, slice_index in zip(mesh, (0, 1), strict=True):
        assert {d.slice_index for d in row} == {slice_index}
    assert len({d.id for d in np.ravel(mesh)}) == 16


def test_num_slices_must_be_positive():
    with pytest.raises(ValueError, match="num_slices"):
        topology_devices("v5p-8", num_slices=0)
