"""Ahead-of-time compilation of the TPU presets on their slices: memory per chip and estimated MFU.

Compiles each preset's real train step for its TPU topology on this machine (libtpu describes the
slice; no TPU is used) and writes the "TPU presets" section of docs/BENCHMARKS.md.

    python -m benchmarks.aot_presets [--family sora|sound|wan] [--no-estimate] [--no-write]

Each family has its own section: ``sora`` (the framework's own DiT presets), ``sound`` (the 1B
preset with audio tokens in every row) and ``wan`` (the Wan 2.1 fine-tuning presets, which must
leave at least 10% of each chip's HBM spare).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from benchmarks.report import machine_description, replace_section  # noqa: E402
from sora_jax.config import load_config  # noqa: E402
from sora_jax.train.aot import aot_report  # noqa: E402

PRESETS = {
    "sora": [
        ("experiments/sora_1b.py", "v5p-64", 1),
        ("experiments/sora_1b.py:v6e-64", "v6e-64", 1),
        ("experiments/sora_8b.py", "v5p-256", 1),
    ],
    "sound": [("experiments/sora_1b.py:av-v5p-64", "v5p-64", 1)],
    "wan": [
        ("experiments/wan2_1_t2v_1_3b.py:lora", "v5p-8", 1),
        ("experiments/wan2_1_t2v_1_3b.py:full", "v5p-8", 1),
        ("experiments/wan2_1_t2v_1_3b.py:lora-v6e", "v6e-8", 1),
        ("experiments/wan2_1_t2v_1_3b.py:full-v6e", "v6e-8", 1),
        ("experiments/wan2_1_t2v_1_3b.py:720p", "v5p-8", 1),
        ("experiments/wan2_1_t2v_14b.py:full", "v5p-64", 1),
        ("experiments/wan2_1_t2v_14b.py:lora", "v5p-8", 1),
    ],
}
SECTIONS = {
    "sora": ("aot_presets", "TPU presets, compiled ahead of time"),
    "wan": ("aot_wan", "Wan 2.1 fine-tuning presets, compiled ahead of time"),
    "sound": ("aot_sound", "TPU presets with sound, compiled ahead of time"),
}
FLOPS_COUNT = {
    "sora": "`model_flops_per_token`, forward + backward",
    "sound": "`model_flops_per_token`, forward + backward, audio tokens counted as tokens",
    "wan": "`wan_flops_per_token`, forward + backward; under LoRA the backward pass computes no "
    "gradient of the frozen weights, so it counts 2x the forward pass, not 3x",
}
ROWS_HOLD = {
    "sora": "rows holding one 65,536-token clip",
    "sound": "rows holding one 65,536-token clip, its video and audio tokens together",
    "wan": "rows holding one clip of the row's length: 32,768 tokens (an 81-frame 480p clip), 75,776 at 720p",
}
GIB = 2**30
ESTIMATE = (
    "The estimated step time is XLA's roofline (`optimal_seconds`) of the model compiled with 1 "
    "and with 2 blocks unrolled, extrapolated linearly to the full depth (checked against a 4-block "
    "unrolled compile of the smoke preset: within 1%), plus the splash kernels' attention FLOPs at "
    "peak; MFU = model FLOPs / (chips x peak bf16 FLOP/s x estimated step). It leaves out "
    "communication XLA does not overlap, so a measured MFU will be lower. (1): libtpu gave no usable "
    "roofline (a negative `optimal_seconds`), so the step time is the longer of the extrapolated "
    "XLA FLOPs at peak and the extrapolated bytes accessed at the chip's HBM bandwidth, over the "
    "whole step: a looser bound, as it lets every operation's compute overlap its memory traffic."
)
NO_ESTIMATE = (
    "Step time and MFU were not estimated (`--no-estimate`: one compile a preset, for the fit alone)."
)


def _estimate(value: float | None, style: str) -> str:
    return "n/a" if value is None else style.format(value)


METHOD_NOTES = {"xla-roofline": "", "flops-bytes-bound": " (1)", None: ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", choices=sorted(PRESETS), default="sora", help="which presets")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument(
        "--no-estimate",
        action="store_true",
        help="fit only: skip the two extra compiles behind the MFU estimate",
    )
    args = parser.parse_args()
    rows, commands = [], []
    for spec, topology, slices in PRESETS[args.family]:
        report = aot_report(load_config(spec), topology, slices, estimate=not args.no_estimate)
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
        "are analytic (" + FLOPS_COUNT[args.family] + ", " + ROWS_HOLD[args.family] + "). "
        "XLA FLOPs are `cost_analysis()` per chip, which counts the scanned block stack once and the "
        "splash kernels not at all, so they are far below the model FLOPs and must not be divided by "
        "time. " + (NO_ESTIMATE if args.no_estimate else ESTIMATE) + "\n\n"
        "Commands: "
        + "; ".join(commands)
        + f". All: `python -m benchmarks.aot_presets --family {args.family}"
        + (" --no-estimate`" if args.no_estimate else "`")
    )
    print(section)
    if not args.no_write:
        replace_section(*SECTIONS[args.family], section)


if __name__ == "__main__":
    main()
