"""Checkpoint cost: step time with a background save every step against none, and save/restore seconds.

    python -m benchmarks.checkpointing [--config experiments/world_tiny.py] [--steps 20]

The step-time comparison runs twice, each in its own process, because where the work runs decides
what a background save costs:

- ``shared``: the step, the Python loop and the checkpoint writer share every core (a CPU-only run);
- ``split`` (needs 2 cores or more): XLA's compute threads on core 0, standing in for an
  accelerator, and the Python loop with the checkpoint writer on the other cores, as on an
  accelerator host, whose CPUs write checkpoints while the chips compute.

In each, plain and saving loops run on the same batches, alternating, so machine noise hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def _pin_for_split() -> None:
    """Before JAX starts: its compute threads, created at start-up, inherit core 0."""
    os.sched_setaffinity(0, {0})


def _move_host_work_off_core_0() -> None:
    """After JAX has started: this (Python) thread and the threads it starts leave core 0 to XLA."""
    os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))


def run_steps(config, state, step_fn, batches, stream, directory: str | None) -> tuple[float, float, object]:
    """(seconds for ``len(batches)`` steps, seconds the loop spent inside ``save``, final state);
    with ``directory``, a background save follows every step, and the wait for the last save
    to finish is included."""
    import jax

    from sora_jax.train import checkpoint

    saver = checkpoint.BackgroundSaver(checkpoint.manager(directory, config)) if directory else None
    in_save = 0.0
    first = int(state.step)
    start = time.perf_counter()
    for done, batch in enumerate(batches, start=first + 1):
        state, metrics = step_fn(state, batch)
        if saver is not None:
            before = time.perf_counter()
            saver.save(done, state, stream)
            in_save += time.perf_counter() - before
    jax.block_until_ready(metrics)
    if saver is not None:
        saver.close()
    return time.perf_counter() - start, in_save, state


def step_times(config_path: str, steps: int, rounds: int, placement: str) -> dict:
    """Median per-step seconds without and with a save every step, measured in this process."""
    if placement == "split":
        _pin_for_split()
    import jax

    from sora_jax.config import load_config
    from sora_jax.data.pipeline import batch_stream
    from sora_jax.kinds.registry import run_kind
    from sora_jax.parallel.global_batch import BatchLayout, packed_axes
    from sora_jax.parallel.mesh import make_mesh
    from sora_jax.train.state import create_train_state
    from sora_jax.train.trainer import jit_train_step

    config = load_config(config_path, ["checkpoint.async_save=True", "checkpoint.keep=2"])
    mesh = make_mesh(config)
    jax.devices()  # Starts XLA's threads (on core 0 when split).
    if placement == "split":
        _move_host_work_off_core_0()
    graphdef, state, shardings = create_train_state(config, mesh)
    step_fn = jit_train_step(graphdef, run_kind(config), mesh, shardings)
    stream = batch_stream(config, config.data.batch_size)
    layout = BatchLayout.of(config, mesh, packed_axes(config))
    batches = [layout.to_global(next(stream)) for _ in range(steps)]
    state, _ = step_fn(state, batches[0])  # Compile outside the timing.
    plain, saving, blocked = [], [], []
    for _ in range(rounds):
        seconds, _, state = run_steps(config, state, step_fn, batches, stream, None)
        plain.append(seconds / steps)
        directory = tempfile.mkdtemp(prefix="sora_ckpt_bench_")
        seconds, in_save, state = run_steps(config, state, step_fn, batches, stream, directory)
        saving.append(seconds / steps)
        blocked.append(in_save / steps)
        shutil.rmtree(directory)
    return {
        "plain": statistics.median(plain),
        "saving": statistics.median(saving),
        "in_save": statistics.median(blocked),
    }


def save_restore_seconds(config) -> tuple[int, float, float]:
    """(parameters, seconds to save the full state synchronously, seconds to restore it)."""
    import jax

    from sora_jax.data.pipeline import batch_stream
    from sora_jax.parallel.mesh import make_mesh
    from sora_jax.train import checkpoint
    from sora_jax.train.state import abstract_train_state, count_params, create_train_state

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


def _measure_in_subprocess(args: argparse.Namespace, placement: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.checkpointing", "--config", args.config]
    command += ["--steps", str(args.steps), "--rounds", str(args.rounds), "--placement", placement]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/world_tiny.py")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--placement", choices=["shared", "split"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.placement:  # One placement's measurement, as a child process: JSON on the last line.
        print(json.dumps(step_times(args.config, args.steps, args.rounds, args.placement)))
        return

    placements = ["shared"] + (["split"] if (os.cpu_count() or 1) >= 2 else [])
    times = {placement: _measure_in_subprocess(args, placement) for placement in placements}

    from benchmarks.report import machine_description, replace_section
    from sora_jax.config import load_config

    big = load_config(args.config, ["model.dim=512", "model.depth=8", "model.heads=8"])
    sizes = [save_restore_seconds(load_config(args.config)), save_restore_seconds(big)]
    where = {
        "shared": "`shared`: step, loop and writer on all cores",
        "split": "`split`: XLA compute on core 0; loop and writer on the rest",
    }
    time_rows = "\n".join(
        f"| {where[p]} | {t['plain'] * 1000:.0f} ms | {t['saving'] * 1000:.0f} ms "
        f"({t['saving'] / t['plain'] - 1:+.1%}) | {t['in_save'] * 1000:.1f} ms |"
        for p, t in times.items()
    )
    size_rows = "\n".join(
        f"| {params:,} parameters (+ EMA + Adam moments) | {saved:.2f} s | {restored:.2f} s |"
        for params, saved, restored in sizes
    )
    body = (
        f"Machine: {machine_description()}; local disk. `{args.config}`, {args.steps} steps a loop, "
        f"median of {args.rounds} alternating rounds.\n\n"
        "| placement | step, no checkpoints | step, background save every step | loop's wait in `save` |\n"
        "|---|---|---|---|\n" + time_rows + "\n\n"
        "| state | save (synchronous) | restore |\n|---|---|---|\n" + size_rows + "\n\n"
        "The train loop hands each save to a saver thread after one on-device copy of the state "
        "(`BackgroundSaver`); orbax then copies to host and writes in the background. On a CPU-only "
        "run (`shared`) that background work takes cores from the step, so saving every step costs "
        "roughly the writer's CPU time. With the step's compute kept on its own core (`split`), as "
        "on an accelerator host, the save runs beside the step. The loop's wait in `save` is for the "
        "previous save to reach orbax; the step it has just dispatched computes meanwhile. Saving "
        "every step is the worst case; runs save every `checkpoint.every` steps.\n\n"
        f"Command: `python -m benchmarks.checkpointing --steps {args.steps} --rounds {args.rounds}`"
    )
    print(body)
    if not args.no_write:
        replace_section("checkpointing", "Checkpointing cost", body)


if __name__ == "__main__":
    main()
