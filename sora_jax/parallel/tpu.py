"""A catalogue of Cloud TPU generations, and compile-only TPU devices for ahead-of-time compilation.

``parse_accelerator("v5p-64")`` turns a Cloud accelerator type into a :class:`TpuSlice` (chips, per-chip
HBM and peak bf16 FLOP/s, the topology string that ``libtpu`` understands); ``topology_devices`` asks
``libtpu`` for that slice's devices, which ``jax.jit(...).lower(...).compile()`` can target from a
machine without any TPU (install ``libtpu`` and keep ``JAX_PLATFORMS=cpu``).

Per-chip figures are the public Cloud TPU system-architecture pages (HBM bandwidth in GB/s):
  v4:  https://cloud.google.com/tpu/docs/v4          (2 TensorCores/chip, 32 GiB HBM2, 1200 GB/s,
                                                      275 TFLOP/s bf16, 4096-chip pod, 3D slices
                                                      2x2x1 ... in 4x4x4 cubes)
  v5e: https://docs.cloud.google.com/tpu/docs/v5e    (1 TensorCore/chip, 16 GB HBM2, 819 GB/s,
                                                      197 TFLOP/s bf16, 8 chips/host, 2D slices
                                                      1x1 ... 16x16)
  v5p: https://cloud.google.com/tpu/docs/v5p-training (2 TensorCores/chip, 95 GB HBM2e, 2765 GB/s,
                                                      459 TFLOP/s bf16, 4 chips/host, 3D slices
                                                      2x2x1 ... 16x16x24 = 6144 chips; accelerator
                                                      types count TensorCores)
  v6e: https://docs.cloud.google.com/tpu/docs/v6e    (1 TensorCore/chip, 32 GB HBM, 1640 GB/s,
                                                      918 TFLOP/s bf16, 8 chips/host, 2D slices
                                                      like v5e)
HBM is listed there in GB or GiB inconsistently; we take GiB (HBM stacks are binary-sized). The compiler
keeps part of it for itself: ``usable_hbm_bytes`` is what libtpu 0.0.42 reports as "available HBM" when a
program does not fit (v4 30.75, v5e 15.75, v5p 95.74, v6e 31.25 GiB); plans compare against that.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax

from sora_jax.errors import ConfigError

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
    """What one TPU generation's chips and accelerator-type names mean."""

    name: str  # as written in accelerator types: "v5p", "v6e", ...
    topology_prefix: str  # the generation as libtpu's topology names write it: "v5p:2x4x4"
    hbm_bytes: int  # per chip
    usable_hbm_bytes: int  # per chip, what a compiled program may use
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bandwidth: float  # bytes/s per chip
    cores_per_chip: int  # what the accelerator-type suffix counts, per chip (TensorCores)
    chips_per_host: int
    dims: int  # 3 for a 3D torus (v4, v5p), 2 for a 2D torus (v5e, v6e)
    chip_config: str  # libtpu's chip config: "megacore" fuses a v4/v5p chip's 2 cores into 1 device
    max_chips: int  # the largest single slice


GENERATIONS: dict[str, TpuGeneration] = {
    "v4": TpuGeneration("v4", "v4", 32 * GiB, int(30.75 * GiB), 275e12, 1200e9, 2, 4, 3, "megacore", 4096),
    "v5e": TpuGeneration("v5e", "v5e", 16 * GiB, int(15.75 * GiB), 197e12, 819e9, 1, 8, 2, "default", 256),
    "v5p": TpuGeneration("v5p", "v5p", 95 * GiB, int(95.74 * GiB), 459e12, 2765e9, 2, 4, 3, "megacore", 6144),
    "v6e": TpuGeneration("v6e", "v6e", 32 * GiB, int(31.25 * GiB), 918e12, 1640e9, 1, 8, 2, "default", 256),
}
# Cloud names v5e slices "v5litepod-N"; "v5e-N" is the common shorthand.
_ALIASES = {"v5litepod": "v5e"}

# Slices below one 4x4x4 cube (v4, v5p), and every 2D slice (v5e, v6e), come in these shapes only.
_SMALL_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}
_SHAPES_2D = {
    1: (1, 1),
    4: (2, 2),
    8: (2, 4),
    16: (4, 4),
    32: (4, 8),
    64: (8, 8),
    128: (8, 16),
    256: (16, 16),
}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """One TPU slice: ``chips`` chips of ``generation`` wired as ``topology_name``.

    ``hbm_bytes``, ``usable_hbm_bytes``, ``peak_flops`` and ``hbm_bandwidth`` are per chip; one chip
    is one JAX device (v4 and v5p run their two TensorCores as one "megacore" device).
    """

    accelerator: str  # normalised accelerator type, e.g. "v5p-64"
    generation: str
    chips: int
    topology_name: str  # for jax.experimental.topologies.get_topology_desc, e.g. "v5p:2x4x4"
    chips_per_host_bounds: tuple[int, int, int]
    chip_config: str
    hbm_bytes: int
    usable_hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float

    @property
    def hosts(self) -> int:
        return max(1, self.chips // math.prod(self.chips_per_host_bounds))


def _cube_shape(chips: int) -> tuple[int, int, int] | None:
    """The most balanced ``a x b x c`` of whole 4x4x4 cubes holding ``chips`` chips, ascending."""
    if chips % 64:
        return None
    cubes = chips // 64
    best = None
    for a in range(1, round(cubes ** (1 / 3)) + 2):
        if cubes % a:
            continue
        for b in range(a, math.isqrt(cubes // a) + 1):
            if (cubes // a) % b == 0:
                shape = (a, b, cubes // a // b)
                if best is None or max(shape) < max(best):
                    best = shape
    return None if best is None else tuple(4 * d for d in best)


def parse_accelerator(name: str) -> TpuSlice:
    """Parse a Cloud accelerator type (``v5p-64``, ``v6e-64``, ``v5litepod-16``, ``v4-8``).

    The suffix counts TensorCores for v4 and v5p (``v5p-256`` is 128 chips) and chips for v5e and
    v6e (``v6e-64`` is 64 chips). Raises ``ValueError`` naming the problem for an unknown generation,
    a malformed name, or a size that generation does not come in.
    """
    match = re.fullmatch(r"\s*(v\d+[a-z]*)-(\d+)\s*", name.lower())
    if not match:
        raise ValueError(
            f"TPU accelerator type {name!r} is not of the form '<generation>-<size>', e.g. 'v5p-64'"
        )
    generation_name = _ALIASES.get(match[1], match[1])
    if generation_name not in GENERATIONS:
        known = ", ".join(sorted([*GENERATIONS, *_ALIASES]))
        raise ValueError(f"TPU accelerator type {name!r}: unknown generation {match[1]!r} (known: {known})")
    gen = GENERATIONS[generation_name]
    size = int(match[2])
    if size % gen.cores_per_chip:
        raise ValueError(
            f"TPU accelerator type {name!r}: {gen.name} sizes count TensorCores, {gen.cores_per_chip} per "
            f"chip, so the size must be a multiple of {gen.cores_per_chip}"
        )
    chips = size // gen.cores_per_chip
    if chips > gen.max_chips:
        raise ValueError(
            f"TPU accelerator type {name!r}: {chips} chips exceeds the largest {gen.name} slice "
            f"({gen.max_chips} chips); use several slices"
        )
    if gen.dims == 3:
        shape = _SMALL_3D.get(chips) or _cube_shape(chips)
        if shape is None:
            raise ValueError(
                f"TPU accelerator type {name!r}: {chips} {gen.name} chips is not a slice shape; slices are "
                f"{sorted(_SMALL_3D)} chips or whole 4x4x4 cubes (multiples of 64 chips)"
            )
    else:
        if chips not in _SHAPES_2D:
            raise ValueError(
                f"TPU accelerator type {name!r}: {gen.name} slices have {sorted(_SHAPES_2D)} chips, "
                f"not {chips}"
            )
        shape = _SHAPES_2D[chips]
    # A host's chips are a 2x2 (4 chips) or 2x4 (8 chips) block; a smaller slice sits on part of one.
    host = (min(2, shape[0]), min(gen.chips_per_host // 2, shape[1]), 1)
    return TpuSlice(
        accelerator=f"{gen.name}-{size}",
        generation=gen.name,
        chips=chips,
        topology_name=f"{gen.topology_prefix}:{'x'.join(map(str, shape))}",
        chips_per_host_bounds=host,
        chip_config=gen.chip_config,
        hbm_bytes=gen.hbm_bytes,
        usable_hbm_bytes=gen.usable_hbm_bytes,
        peak_flops=gen.peak_flops,
        hbm_bandwidth=gen.hbm_bandwidth,
    )


# What libtpu is told of this machine when it loads only to describe slices (JAX runs on other
# platforms): one host, alone. Without it libtpu looks for this machine's TPU system, finds neither these
# variables nor a Cloud TPU metadata server, and logs errors that mean nothing here ("E0000 ...
# unexpected worker hostname 'WARNING: could not determine TPU worker hostnames ...'"). They do not
# change the slices described, which get_topology_desc names in full. libtpu reads them once, when it
# loads; a value already in the environment is kept.
COMPILE_ONLY_HOST = {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_HOST_BOUNDS": "1,1,1"}


def topology_devices(accelerator: str, num_slices: int = 1) -> list[jax.Device]:
    """Compile-only devices of ``num_slices`` slices of ``accelerator``, one device per chip.

    Needs ``libtpu`` installed but no TPU. The devices carry ``coords``, ``process_index`` and (for
    ``num_slices > 1``) ``slice_index``, so ``jax.experimental.mesh_utils.create_device_mesh`` and
    ``create_hybrid_device_mesh`` lay them out as on the real pod. Use them only to lower and compile.
    Raises ``ConfigError`` when libtpu cannot describe the slice (most often: it is not installed).
    Where JAX may not use TPUs (``JAX_PLATFORMS`` without ``tpu``), libtpu is told that this machine
    is a single host without TPUs (:data:`COMPILE_ONLY_HOST`), which keeps its logs quiet.
    """
    from jax.experimental import topologies

    if num_slices < 1:
        raise ValueError(f"num_slices must be at least 1, got {num_slices}")
    tpu = parse_accelerator(accelerator)
    # libtpu takes a machine-wide lock file when it loads, so a second process that compiles for TPU
    # (a test run beside an aot run) would fail; compile-only use touches no chip, so share it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if "tpu" not in (jax.config.jax_platforms or "tpu").split(","):
        for name, value in COMPILE_ONLY_HOST.items():
            os.environ.setdefault(name, value)
    try:
        topology = topologies.get_topology_desc(
            platform="tpu",
            topology_name=tpu.topology_name,
            chip_config_name=tpu.chip_config,
            chips_per_host_bounds=tpu.chips_per_host_bounds,
            num_slices=num_slices,
        )
    except RuntimeError as err:  # jax's backend errors (no libtpu, unknown topology) derive from it
        # Mostly a missing libtpu: something to install, not a bug, hence one line (the cause kept).
        reason = str(err).splitlines()[0].rstrip(".") if str(err) else type(err).__name__
        raise ConfigError(
            f"cannot describe TPU topology {tpu.topology_name} for {tpu.accelerator}: {reason}. "
            'Describing TPU slices without a TPU needs libtpu: pip install -e ".[tpu]" in the checkout'
        ) from err
    devices = list(topology.devices)
    if len(devices) != tpu.chips * num_slices:
        raise RuntimeError(
            f"libtpu gave {len(devices)} devices for {num_slices} x {tpu.accelerator}, expected "
            f"{tpu.chips * num_slices}"
        )
    return devices
