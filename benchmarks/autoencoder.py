"""Video autoencoder throughput: encode and decode frames/s, whole clips and in time chunks.

    python -m benchmarks.autoencoder [--config experiments/vae_world.py] [--frames 33 --size 64]

The architecture is the config's, freshly initialised (weights do not change the speed; a trained
run's PSNR and SSIM come from ``sora-jax evaluate``). Each figure is the best of ``--repeats``
timed calls after one compiling call, all in this one process.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import nnx

from benchmarks.report import machine_description, replace_section
from sora_jax.autoencoder.model import build_autoencoder
from sora_jax.autoencoder.streaming import decode_chunked, encode_chunked
from sora_jax.autoencoder.training import autoencoder_config
from sora_jax.config import load_config


def best_seconds(fn, repeats: int) -> float:
    fn()  # Compiles.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/vae_world.py")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=8, help="frames per encode chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config)
    ae = autoencoder_config(config)
    vae = build_autoencoder(ae, 0)
    shape = (1, args.frames, args.size, args.size, 3)
    video = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    latents = np.asarray(encode_chunked(vae, video).mean)
    chunk_latents = args.chunk // ae.temporal_factor
    timings = {
        "encode, whole clip": best_seconds(lambda: encode_chunked(vae, video).mean, args.repeats),
        f"encode, {args.chunk}-frame chunks": best_seconds(
            lambda: encode_chunked(vae, video, args.chunk).mean, args.repeats
        ),
        "decode, whole clip": best_seconds(lambda: decode_chunked(vae, latents), args.repeats),
        f"decode, {chunk_latents}-latent-frame chunks": best_seconds(
            lambda: decode_chunked(vae, latents, chunk_latents), args.repeats
        ),
    }
    rows = "\n".join(
        f"| {what} | {seconds * 1000:.0f} ms | {args.frames / seconds:.1f} |"
        for what, seconds in timings.items()
    )
    params = sum(x.size for x in jax.tree.leaves(nnx.state(vae, nnx.Param)))
    body = (
        f"Machine: {machine_description()}. `{args.config}` architecture ({params:,} parameters, "
        f"{ae.temporal_factor}x{ae.spatial_factor}x{ae.spatial_factor} compression to "
        f"{ae.latent_channels} channels), one {args.frames}-frame {args.size}x{args.size} clip, "
        f"best of {args.repeats}.\n\n"
        "| | time | frames/s |\n|---|---|---|\n" + rows + "\n"
    )
    body += (
        f"\nCommand: `python -m benchmarks.autoencoder --frames {args.frames} --size {args.size} "
        f"--chunk {args.chunk}`"
    )
    print(body)
    if not args.no_write:
        replace_section("autoencoder", "Video autoencoder throughput", body)


if __name__ == "__main__":
    main()
