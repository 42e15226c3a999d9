"""Input pipeline: packing efficiency and speed against the train step, into docs/BENCHMARKS.md.

Measures in one run, on this machine: the packing efficiency, clips per row and distinct clip
shapes of the physics-world mix and of a clip store prepared from real videos; the pipeline's
tokens/s with the experiment's default workers; and the tokens/s the train step consumes.

    python -m benchmarks.data_pipeline --store STORE [--config experiments/world_tiny.py]

STORE is made from real videos of mixed codecs and sizes, e.g. the sample videos of Debian's
opencv-doc package:

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocv
    mkdir -p /tmp/real && cp /tmp/ocv/usr/share/doc/opencv-doc/examples/data/*.avi /tmp/real
    ls /tmp/ocv/usr/share/doc/opencv-doc/examples/data/*.jpg | head -12 | xargs -I{} cp {} /tmp/real
    gunzip -c /tmp/ocv/usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz > /tmp/real/cup.mp4
    gunzip -c /tmp/ocv/usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz > /tmp/real/box.mp4
    sora-jax prepare --input /tmp/real --output /tmp/real_store --caption-default "a real video"
"""

from __future__ import annotations

import argparse
import time

import jax

from benchmarks.report import machine_description, replace_section
from sora_jax.config import load_config
from sora_jax.data.pipeline import batch_stream
from sora_jax.data.stats import pipeline_stats
from sora_jax.kinds.registry import run_kind
from sora_jax.parallel.global_batch import BatchLayout, packed_axes
from sora_jax.parallel.mesh import make_mesh
from sora_jax.train.state import create_train_state
from sora_jax.train.trainer import jit_train_step


def train_tokens_per_s(config, steps: int) -> float:
    """Non-padding tokens a second the compiled train step consumes (batches built beforehand)."""
    mesh = make_mesh(config)
    graphdef, state, shardings = create_train_state(config, mesh)
    step_fn = jit_train_step(graphdef, run_kind(config), mesh, shardings)
    stream = batch_stream(config, config.data.batch_size)
    host = [next(stream) for _ in range(steps + 1)]
    batches = [BatchLayout.of(config, mesh, packed_axes(config)).to_global(b) for b in host]
    state, metrics = step_fn(state, batches[0])
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in batches[1:]:
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    return sum(int((b["segment_ids"] > 0).sum()) for b in host[1:]) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/world_tiny.py")
    parser.add_argument("--store", required=True, help="a clip store prepared from real videos")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    world = load_config(args.config)
    real = load_config(args.config, [f"data.store={args.store}", "data.side=(24,64)"])
    stats = {
        "physics world": pipeline_stats(world, args.batches),
        "real-video store": pipeline_stats(real, args.batches),
    }
    consumed = train_tokens_per_s(world, args.steps)
    produced = stats["physics world"]["tokens_per_s"]

    rows = [
        "| input | packing efficiency | clips per row | distinct clip shapes | images | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        rows.append(
            f"| {name} | {s['packing_efficiency']:.2%} | {s['clips_per_row']:.2f} | "
            f"{s['distinct_shapes']} | {s['images']:.0%} | {s['tokens_per_s']:,.0f} |"
        )
    machine = machine_description()
    body = (
        f"Machine: {machine}. `{args.config}`: rows of {world.data.seq_len} tokens, at most "
        f"{world.data.max_clips_per_row} clips a row, data.workers={world.data.workers} "
        f"(batches built in a background thread), {args.batches} batches of {world.data.batch_size} rows "
        "each. The store is the sample videos of Debian's opencv-doc (mpeg4, msmpeg4, cinepak AVI "
        "and H.264 MP4) and 12 of its JPEG images, prepared with `sora-jax prepare` and sampled at areas "
        "from 24² to 64² pixels. One-frame clips (images) also fill the ends of rows, so their share "
        "exceeds `data.image_fraction`.\n\n"
        + "\n".join(rows)
        + f"\n\nTrain step on the same machine, same run: consumes {consumed:,.0f} tokens/s; the "
        f"physics-world pipeline delivers {produced / consumed:.1f}x that.\n\n"
        f"Command: `python -m benchmarks.data_pipeline --store STORE --batches {args.batches}`"
    )
    print(body)
    if not args.no_write:
        replace_section("data_pipeline", "Input pipeline: packing and speed", body)


if __name__ == "__main__":
    main()
