"""``sora-jax aot``: compile the real train step for a TPU slice ahead of time, on this machine.

Before spending pod hours, compile the run's train step (the same code path as ``sora-jax
train``: mesh, shardings, donation, remat, attention kernel) for the slice's devices, described by
``libtpu`` without any TPU, and read what XLA planned:

- **memory per chip**: arguments (this chip's shards of the train state and batch), outputs,
  outputs that reuse donated arguments, temporaries (activations, gradients, workspace) and code,
  against the chip's HBM;
- **FLOPs per step**, two ways. *Model FLOPs* are counted analytically (see
  :func:`sora_jax.train.metrics.model_flops_per_token`): the work the model needs. *XLA FLOPs* are
  XLA's ``cost_analysis()``, which counts the body of the scanned layer stack once, whatever its
  length, and gives Pallas kernels (splash attention) no cost at all: read as-is, a deep scanned
  model looks several times cheaper than it is, and an MFU derived from it can exceed 100%;
- **estimated MFU**: model FLOPs over what the chips could do in XLA's estimated step time. The
  estimate is XLA's ``optimal_seconds`` (its roofline over compute and memory traffic) of the model
  with one and with two blocks, unrolled (their difference is one block's time, counted ``depth``
  times in all), plus the splash kernels' attention FLOPs at peak speed; where libtpu gives no usable
  roofline, the same extrapolation of its FLOPs and bytes accessed, at peak and at full HBM bandwidth.
  It ignores communication that XLA does not overlap, so it is an upper bound on real MFU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import time
from collections.abc import Iterator

import jax
import ml_collections

from sora_jax.errors import ConfigError
from sora_jax.kinds.registry import run_kind
from sora_jax.parallel.mesh import make_mesh
from sora_jax.parallel.tpu import TpuSlice, parse_accelerator, topology_devices
from sora_jax.train.state import abstract_train_state, count_params, model_graphdef
from sora_jax.train.trainer import jit_train_step

log = logging.getLogger(__name__)


@dataclasses.dataclass
class AotReport:
    """What compiling the train step for ``accelerator`` x ``num_slices`` showed (bytes per chip)."""

    accelerator: str
    num_slices: int
    chips: int
    mesh: dict[str, int]
    parameters: int
    work_per_step: int  # What one global batch holds, in work_unit (tokens, clips, ...).
    work_unit: str
    per_chip_bytes: dict[str, int]  # arguments, outputs, aliased, temporaries, code, total
    hbm_bytes_per_chip: int
    usable_hbm_bytes_per_chip: int
    fits: bool  # total <= the HBM the compiler lets a program use
    spare_fraction: float  # of HBM left free
    flops_per_step: float | None  # analytic model FLOPs, all chips (None: the kind counts none)
    xla_flops_per_chip: float  # cost_analysis(): the scanned layer stack counted once
    estimated_step_seconds: float | None
    estimated_mfu: float | None
    estimate_method: str | None  # "xla-roofline" or "flops-bytes-bound"; see estimated_step_seconds
    compile_seconds: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        gib = 2**30
        b = self.per_chip_bytes
        lines = [
            f"{self.accelerator} x {self.num_slices} slice(s): {self.chips} chips, mesh {self.mesh}",
            f"parameters {self.parameters:,}; {self.work_per_step:,} {self.work_unit} a step",
            f"per chip: arguments {b['arguments'] / gib:.2f} GiB + outputs {b['outputs'] / gib:.2f} GiB "
            f"- donated {b['aliased'] / gib:.2f} GiB + temporaries {b['temporaries'] / gib:.2f} GiB "
            f"+ code {b['code'] / gib:.2f} GiB = {b['total'] / gib:.2f} GiB "
            f"of {self.hbm_bytes_per_chip / gib:.1f} GiB HBM ({100 * self.spare_fraction:.0f}% spare)",
            f"XLA cost analysis {self.xla_flops_per_chip:.3e} FLOPs per chip (scanned layers counted "
            "once, Pallas kernels not at all)",
        ]
        if self.flops_per_step is not None:
            lines.insert(-1, f"model FLOPs per step {self.flops_per_step:.3e} (analytic)")
        if self.estimated_mfu is not None:
            lines.append(
                f"estimated step {self.estimated_step_seconds:.4g} s ({self.estimate_method}, from 1 "
                f"and 2 unrolled blocks, extrapolated): MFU <= {100 * self.estimated_mfu:.1f}%"
            )
        lines.append("fits" if self.fits else "DOES NOT FIT")
        return "\n".join(lines)


def compile_train_step(config: ml_collections.ConfigDict, devices: list) -> jax.stages.Compiled:
    """The train step of ``config``'s kind of run compiled for ``devices`` (on the mesh the config
    asks for), with the batch the kind declares."""
    mesh = make_mesh(config, devices)
    kind = run_kind(config)
    with jax.set_mesh(mesh):
        abstract = abstract_train_state(config, mesh)
        shardings = jax.tree.map(lambda a: a.sharding, abstract)
        step = jit_train_step(model_graphdef(config), kind, mesh, shardings)
        return step.lower(abstract, kind.abstract_batch(mesh)).compile()


def _slice_name(tpu: TpuSlice, devices: list) -> str:
    slices = len(devices) // tpu.chips
    return f"{tpu.accelerator} x {slices} slices" if slices > 1 else tpu.accelerator


def _compile_logged(
    config: ml_collections.ConfigDict, devices: list, tpu: TpuSlice, what: str
) -> tuple[jax.stages.Compiled, float]:
    """:func:`compile_train_step` between two log lines (a compile for a pod can take minutes); the
    compiled step and the seconds it took."""
    log.info("compiling %s for %s (%d chips) ...", what, _slice_name(tpu, devices), len(devices))
    started = time.perf_counter()
    compiled = compile_train_step(config, devices)
    seconds = time.perf_counter() - started
    log.info("compiled %s in %.1f s", what, seconds)
    return compiled, seconds


def estimated_step_seconds(
    config: ml_collections.ConfigDict, devices: list, tpu: TpuSlice
) -> tuple[float, str] | tuple[None, None]:
    """XLA's estimate of the whole step's time, from two probes with the layer stack unrolled (the
    kind's :meth:`~sora_jax.kinds.base.RunKind.with_depth`), and how it was made.

    One and two unrolled blocks differ by exactly one block (forward, backward, its optimizer
    update), so any per-step cost ``c`` extrapolates as ``c(depth) = c(1) + (depth - 1) * (c(2) -
    c(1))``; the scanned program cannot be used, as its cost counts the loop body once. The time
    is XLA's roofline (``optimal_seconds``: per operation, the longer of compute and memory
    traffic) when it gives a usable one ("xla-roofline"). libtpu sometimes does not (negative for
    the v6e preset); then it is the longer of the chip's FLOPs at peak and its bytes accessed at
    full HBM bandwidth, over the whole step ("flops-bytes-bound", looser: operations' compute and
    traffic are assumed to overlap perfectly). Splash kernels get no cost from XLA: their
    attention FLOPs are added at peak speed. ``(None, None)`` when XLA's costs do not grow with
    depth, or when the kind has no stack of blocks.
    """
    kind = run_kind(config)
    depths = (1, 2)
    probes = [kind.with_depth(depth) for depth in depths]
    if any(probe is None for probe in probes):
        return None, None
    costs = []
    for depth, probe in zip(depths, probes, strict=True):
        what = f"the step-time probe with {depth} unrolled block{'s' * (depth > 1)}"
        costs.append(_compile_logged(probe, devices, tpu, what)[0].cost_analysis())
    return step_seconds_from_costs(config, costs, len(devices), tpu)


def step_seconds_from_costs(
    config: ml_collections.ConfigDict, costs: list[dict], chips: int, tpu: TpuSlice
) -> tuple[float, str] | tuple[None, None]:
    """:func:`estimated_step_seconds` from the per-chip ``cost_analysis()`` of 1 and 2 unrolled blocks."""

    def extrapolated(key: str) -> float | None:
        one, two = (float(cost.get(key, -1.0)) for cost in costs)
        if one <= 0 or two <= one:
            return None
        return one + (config.model.depth - 1) * (two - one)  # The stack the probes varied.

    total, method = extrapolated("optimal_seconds"), "xla-roofline"
    if total is None:
        flops, traffic = extrapolated("flops"), extrapolated("bytes accessed")
        if flops is None or traffic is None:
            return None, None
        total, method = max(flops / tpu.peak_flops, traffic / tpu.hbm_bandwidth), "flops-bytes-bound"
    total += run_kind(config).uncosted_flops_per_step() / chips / tpu.peak_flops
    return total, method


def _not_fitting_advice(config: ml_collections.ConfigDict) -> str:
    m = config.model
    advice = []
    if m.remat != "full":
        advice.append("model.remat=full (recompute each block in the backward pass)")
    advice += [
        "a larger mesh.ici_fsdp (shard parameters and optimizer state over more chips)",
        "a larger mesh.ici_sequence (split each row's tokens over more chips)",
        "a smaller data.batch_size or data.seq_len",
    ]
    if m.param_dtype == "float32" and m.dtype == "float32":
        advice.append("model.dtype=bfloat16")
    return "; ".join(advice)


def not_fitting_message(report: AotReport, config: ml_collections.ConfigDict) -> str:
    gib = 2**30
    return (
        f"the train step needs {report.per_chip_bytes['total'] / gib:.1f} GiB per chip; "
        f"{report.accelerator} chips have {report.usable_hbm_bytes_per_chip / gib:.1f} GiB for a program. "
        f"Try {_not_fitting_advice(config)}"
    )


@contextlib.contextmanager
def _persistent_cache_off() -> Iterator[None]:
    """JAX's persistent compilation cache off, then as it was.

    Executables compiled for a described slice cannot be loaded back (there is no TPU client to load
    them into), so a cache (``JAX_COMPILATION_CACHE_DIR``, common on TPU VMs) would only store dead
    entries and warn on every later read of one. JAX decides at a process's first compile whether it
    uses the cache, so this holds where nothing was compiled before: the ``aot`` command, the presets
    benchmark.
    """
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)


@_persistent_cache_off()
def aot_report(
    config: ml_collections.ConfigDict, accelerator: str, num_slices: int = 1, estimate: bool = True
) -> AotReport:
    """Compile ``config``'s train step for ``num_slices`` slices of ``accelerator``; see the module doc.

    With several slices and no ``mesh.dcn_*`` set, the slices split the data (``mesh.dcn_data``).

    Raises:
        ConfigError: the config cannot be laid out on the slice, or XLA cannot fit its step in HBM
            (the message says what to change).
    """
    if (
        num_slices > 1
        and math.prod(config.mesh[f"dcn_{a}"] for a in ("data", "fsdp", "sequence", "tensor")) == 1
    ):
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.mesh.dcn_data = num_slices
    tpu = parse_accelerator(accelerator)
    started = time.perf_counter()
    devices = topology_devices(accelerator, num_slices)
    log.info(
        "libtpu described %s: %d chips (%.1f s)",
        _slice_name(tpu, devices),
        len(devices),
        time.perf_counter() - started,
    )
    try:
        compiled, compile_seconds = _compile_logged(config, devices, tpu, "the train step")
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error) and "out of memory" not in str(error).lower():
            raise
        needed = re.search(r"Used ([\d.]+[KMGT]?) of ([\d.]+[KMGT]?) hbm", str(error))
        amount = f" ({needed[1]} needed of {needed[2]} HBM per chip)" if needed else ""
        raise ConfigError(
            f"the train step does not fit on {tpu.accelerator}{amount}. Try {_not_fitting_advice(config)}"
        ) from None
    memory = compiled.memory_analysis()
    per_chip = {
        "arguments": memory.argument_size_in_bytes,
        "outputs": memory.output_size_in_bytes,
        "aliased": memory.alias_size_in_bytes,
        "temporaries": memory.temp_size_in_bytes,
        "code": memory.generated_code_size_in_bytes,
    }
    per_chip["total"] = (
        per_chip["arguments"] + per_chip["outputs"] - per_chip["aliased"] + per_chip["temporaries"]
    ) + per_chip["code"]
    spare = 1.0 - per_chip["total"] / tpu.hbm_bytes
    chips = len(devices)
    kind = run_kind(config)
    work, unit = kind.work_per_step()
    flops = kind.flops_per_step()
    cost = compiled.cost_analysis()
    step_seconds = mfu = method = None
    if estimate and flops is not None:
        step_seconds, method = estimated_step_seconds(config, devices, tpu)
        mfu = None if step_seconds is None else flops / (chips * tpu.peak_flops * step_seconds)
    mesh = make_mesh(config, devices)
    return AotReport(
        accelerator=tpu.accelerator,
        num_slices=num_slices,
        chips=chips,
        mesh=dict(mesh.shape),
        parameters=count_params(abstract_train_state(config, mesh).params),
        work_per_step=work,
        work_unit=unit,
        per_chip_bytes=per_chip,
        hbm_bytes_per_chip=tpu.hbm_bytes,
        usable_hbm_bytes_per_chip=tpu.usable_hbm_bytes,
        fits=per_chip["total"] <= tpu.usable_hbm_bytes,
        spare_fraction=spare,
        flops_per_step=flops,
        xla_flops_per_chip=float(cost["flops"]),
        estimated_step_seconds=step_seconds,
        estimated_mfu=mfu,
        estimate_method=method,
        compile_seconds=compile_seconds,
    )
