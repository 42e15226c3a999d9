"""Checkpoint cost: step time with an async save every step against none, and save/restore seconds.

    python -m benchmarks.checkpointing [--config experiments/world_tiny.py] [--steps 20]

Both loops run in one process on the same batches, alternating, so machine noise hits both.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import jax

from benchmarks.report import machine_description, replace_section
from sora_jax.config import load_config
from sora_jax.data.pipeline import batch_stream
from sora_jax.parallel.global_batch import BatchLayout
from sora_jax.parallel.mesh import make_mesh
from sora_jax.train import checkpoint
from sora_jax.train.state import abstract_train_state, count_params, create_train_state
from sora_jax.train.trainer import jit_train_step


def run_steps(config, state, step_fn, batches, stream, directory: str | None) -> tuple[float, object]:
    """Seconds for ``len(batches)`` steps, saving after each when ``directory`` is given; the wait
    for the last save to finish is included."""
    mgr = checkpoint.manager(directory, config) if directory else None
    start = time.perf_counter()
    for batch in batches:
        state, metrics = step_fn(state, batch)
        if mgr is not None:
            checkpoint.save(mgr, state, stream)
    jax.block_until_ready(metrics)
    if mgr is not None:
        mgr.wait_until_finished()
        mgr.close()
    return time.perf_counter() - start, state


def save_restore_seconds(config) -> tuple[int, float, float]:
    """(parameters, seconds to save the full state synchronously, seconds to restore it)."""
    mesh = make_mesh(config)
    _, state, _ = create_train_state(config, mesh)
    stream = batch_stream(config, config.data.batch_size)
    directory = tempfile.mkdtemp(prefix="sora_ckpt_bench_")
    try:
        with config.unlocked():
            config.checkpoint.async_save = False
        mgr = checkpoint.manager(directory, config)
        start = time.perf_counter()
        checkpoint.save(mgr, state, stream)
        mgr.wait_until_finished()
        saved = time.perf_counter() - start
        start = time.perf_counter()
        restored = checkpoint.restore(mgr, abstract_train_state(config, mesh), stream)
        jax.block_until_ready(restored.params)
        return count_params(state.params), saved, time.perf_counter() - start
    finally:
        shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/world_tiny.py")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config, ["checkpoint.async_save=True", "checkpoint.keep=2"])
    mesh = make_mesh(config)
    graphdef, state, shardings = create_train_state(config, mesh)
    step_fn = jit_train_step(graphdef, config, mesh, shardings)
    stream = batch_stream(config, config.data.batch_size)
    batches = [BatchLayout.of(config, mesh).to_global(next(stream)) for _ in range(args.steps)]
    state, _ = step_fn(state, batches[0])  # Compile outside the timing.
    plain, saving = [], []
    for _ in range(args.rounds):
        seconds, state = run_steps(config, state, step_fn, batches, stream, None)
        plain.append(seconds / args.steps)
        directory = tempfile.mkdtemp(prefix="sora_ckpt_bench_")
        seconds, state = run_steps(config, state, step_fn, batches, stream, directory)
        saving.append(seconds / args.steps)
        shutil.rmtree(directory)
    base, with_saves = statistics.median(plain), statistics.median(saving)

    big = load_config(args.config, ["model.dim=512", "model.depth=8", "model.heads=8"])
    sizes = [save_restore_seconds(load_config(args.config)), save_restore_seconds(big)]
    size_rows = "\n".join(
        f"| {params:,} parameters (+ EMA + Adam moments) | {saved:.2f} s | {restored:.2f} s |"
        for params, saved, restored in sizes
    )
    machine = machine_description()
    body = (
        f"Machine: {machine}; local disk. `{args.config}`, {args.steps} steps a loop, median of "
        f"{args.rounds} alternating rounds.\n\n"
        "| | step time |\n|---|---|\n"
        f"| no checkpoints | {base * 1000:.0f} ms |\n"
        f"| async checkpoint every step | {with_saves * 1000:.0f} ms ({with_saves / base - 1:+.1%}) |\n\n"
        "| state | save (synchronous) | restore |\n|---|---|---|\n" + size_rows + "\n\n"
        "Saving every step is the worst case: runs save every `checkpoint.every` steps. Here the "
        "save's blocking part (host copies, orbax's set-up of four items) and "
        "its background write both take the same 2 cores as the step; an accelerator host, where "
        "the step runs on the device, has not been measured.\n\n"
        f"Command: `python -m benchmarks.checkpointing --steps {args.steps} --rounds {args.rounds}`"
    )
    print(body)
    if not args.no_write:
        replace_section("checkpointing", "Checkpointing cost", body)


if __name__ == "__main__":
    main()
