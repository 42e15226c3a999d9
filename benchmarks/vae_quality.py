"""Video autoencoder quality: vae_world trained for its default steps, PSNR and SSIM of held-out clips.

    python -m benchmarks.vae_quality [--workdir runs/vae_world] [--config experiments/vae_world.py]

Trains the experiment with ``sora-jax train`` unless the workdir already holds its final checkpoint
(an interrupted run resumes), then scores every checkpoint with ``sora-jax evaluate --all`` (EMA
weights, posterior means, ``eval.batches x data.batch_size`` clips of ``eval.seed``, never trained
on) and writes the curve to docs/BENCHMARKS.md. Training time is the sum of the logged step times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.report import machine_description, replace_section
from sora_jax.config import load_config

TARGET_DB = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/vae_world.py")
    parser.add_argument("--workdir", default="runs/vae_world")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config)
    workdir = Path(args.workdir)
    final = config.train.steps
    command = [sys.executable, "-m", "sora_jax.cli"]
    if not (workdir / "checkpoints" / str(final)).is_dir():
        subprocess.run([*command, "train", "--config", args.config, "--workdir", str(workdir)], check=True)
    subprocess.run([*command, "evaluate", "--workdir", str(workdir), "--all"], check=True)

    results = sorted(
        (json.loads(p.read_text()) for p in (workdir / "eval").glob("step_*.json")), key=lambda r: r["step"]
    )
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "step_seconds" in line]
    every = config.train.log_every
    train_seconds = sum(line["step_seconds"] * every for line in logged)
    last = results[-1]
    rows = "\n".join(f"| {r['step']} | {r['psnr']:.2f} | {r['ssim']:.3f} |" for r in results)
    a = config.autoencoder
    verdict = "meets" if last["step"] == final and last["psnr"] >= TARGET_DB else "does not meet"
    body = f"""{machine_description()}

`python -m benchmarks.vae_quality` trains `{args.config}` for its default {final} steps
(`{"x".join(map(str, config.data.dense_clip))}` clips, batch {config.data.batch_size}, {a.channels}
channels, multipliers {tuple(a.channel_multipliers)}, {a.latent_channels} latent channels) and scores
each checkpoint on {config.eval.batches * config.data.batch_size} held-out physics-world clips: EMA
weights, the posterior mean decoded, PSNR and SSIM per frame, averaged.

| step | PSNR (dB) | SSIM |
|---:|---:|---:|
{rows}

Training took {train_seconds / 60:.0f} min of logged step time (it grows with whatever else shares
the CPU). The final checkpoint {verdict} the {TARGET_DB:.0f} dB target ({last["psnr"]:.2f} dB at step
{last["step"]}). Earlier checkpoints than the run kept (`checkpoint.keep`) are not listed."""
    print(body)
    if not args.no_write:
        replace_section("vae_quality", "Video autoencoder quality (vae_world)", body)


if __name__ == "__main__":
    main()
