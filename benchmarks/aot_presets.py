"""Ahead-of-time compilation of the TPU presets on their slices: memory per chip and estimated MFU.

Compiles each preset's real train step for its TPU topology on this machine (libtpu describes the
slice; no TPU is used) and writes the "TPU presets" section of docs/BENCHMARKS.md.

    python -m benchmarks.aot_presets [--no-write]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from benchmarks.report import machine_description, replace_section  # noqa: E402
from sora_jax.config import load_config  # noqa: E402
from sora_jax.train.aot import aot_report  # noqa: E402

PRESETS = [
    ("experiments/sora_1b.py", "v5p-64", 1),
    ("experiments/sora_1b.py:v6e-64", "v6e-64", 1),
    ("experiments/sora_8b.py", "v5p-256", 1),
]
GIB = 2**30


def _estimate(value: float | None, style: str) -> str:
    return "n/a" if value is None else style.format(value)


METHOD_NOTES = {"xla-roofline": "", "flops-bytes-bound": " (1)", None: ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args()
    rows, commands = [], []
    for spec, topology, slices in PRESETS:
        report = aot_report(load_config(spec), topology, slices)
        print(report.summary(), flush=True)
        b = report.per_chip_bytes
        rows.append(
            f"| `{spec}` | {topology} x {slices} | {report.chips} | "
            f"{', '.join(f'{k} {v}' for k, v in report.mesh.items() if v > 1)} | "
            f"{report.parameters / 1e9:.2f}B | {report.work_per_step:,} | "
            f"{b['arguments'] / GIB:.1f} / {b['temporaries'] / GIB:.1f} / {b['total'] / GIB:.1f} | "
            f"{report.hbm_bytes_per_chip / GIB:.0f} | {100 * report.spare_fraction:.0f}% | "
            f"{report.flops_per_step:.2e} | {report.xla_flops_per_chip:.2e} | "
            f"{_estimate(report.estimated_step_seconds, '{:.2f}')} | "
            f"{_estimate(report.estimated_mfu and 100 * report.estimated_mfu, '{:.0f}%')}"
            f"{METHOD_NOTES[report.estimate_method]} | "
            f"{report.compile_seconds:.0f} s |"
        )
        commands.append(f"`sora-jax aot --config {spec} --topology {topology}`")
    table = "\n".join(
        [
            "| preset | slice | chips | mesh | params | tokens/step | GiB per chip: args / temp / total "
            "| HBM GiB | spare | model FLOPs/step | XLA FLOPs/chip | est. step s | est. MFU | compile |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    section = (
        f"Compiled on: {machine_description()}, libtpu describing each slice (no TPU used).\n\n"
        f"{table}\n\n"
        "Memory is XLA's plan for one chip (`compiled.memory_analysis()`): arguments (this chip's "
        "shards of parameters, EMA, optimizer state and batch) + outputs - outputs written into donated "
        "arguments + temporaries + code; `spare` is the share of the chip's HBM left free. Model FLOPs "
        "are analytic (`model_flops_per_token`, rows holding one 65,536-token clip, forward + backward). "
        "XLA FLOPs are `cost_analysis()` per chip, which counts the scanned block stack once and the "
        "splash kernels not at all, so they are far below the model FLOPs and must not be divided by "
        "time. The estimated step time is XLA's roofline (`optimal_seconds`) of the model compiled with 1 "
        "and with 2 blocks unrolled, extrapolated linearly to the full depth (checked against a 4-block "
        "unrolled compile of the smoke preset: within 1%), plus the splash kernels' attention FLOPs at "
        "peak; MFU = model FLOPs / (chips x peak bf16 FLOP/s x estimated step). It leaves out "
        "communication XLA does not overlap, so a measured MFU will be lower. (1): libtpu gave no usable "
        "roofline (a negative `optimal_seconds`), so the step time is the longer of the extrapolated "
        "XLA FLOPs at peak and the extrapolated bytes accessed at the chip's HBM bandwidth, over the "
        "whole step: a looser bound, as it lets every operation's compute overlap its memory traffic.\n\n"
        "Commands: " + "; ".join(commands) + ". All: `python -m benchmarks.aot_presets`"
    )
    print(section)
    if not args.no_write:
        replace_section("aot_presets", "TPU presets, compiled ahead of time", section)


if __name__ == "__main__":
    main()
