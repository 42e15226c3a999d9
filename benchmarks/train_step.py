"""Train-step speed of an experiment on this machine, written into docs/BENCHMARKS.md.

Measures, in one process and one run: the machine's f32 matmul FLOP/s (the reference for
utilisation), the train step's compile time, its mean step time and tokens/s over real packed
batches, and its FLOP/s as a fraction of the matmul figure.

    python -m benchmarks.train_step [--config experiments/world_tiny.py] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.report import machine_description, replace_section
from sora_jax.config import load_config
from sora_jax.data.pipeline import batch_stream
from sora_jax.parallel.global_batch import BatchLayout
from sora_jax.parallel.mesh import make_mesh
from sora_jax.train.metrics import model_flops_per_token
from sora_jax.train.state import count_params, create_train_state
from sora_jax.train.trainer import jit_train_step


def matmul_flops_per_s(size: int = 1024, repeats: int = 20) -> float:
    """Best-of-5 f32 FLOP/s of a square matmul chain on the default device."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32)

    @jax.jit
    def chain(x):
        for _ in range(repeats):
            x = (x @ a) * (1.0 / size)
        return x

    chain(a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        chain(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/world_tiny.py")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    config = load_config(args.config)
    mesh = make_mesh(config)
    graphdef, state, shardings = create_train_state(config, mesh)
    step_fn = jit_train_step(graphdef, config, mesh, shardings)
    stream = batch_stream(config, config.data.batch_size)
    batches = [BatchLayout.of(config, mesh).to_global(next(stream)) for _ in range(args.steps + 1)]

    start = time.perf_counter()
    compiled = step_fn.lower(state, batches[0]).compile()
    compile_seconds = time.perf_counter() - start
    xla_flops = compiled.cost_analysis().get("flops", float("nan"))

    state, metrics = compiled(state, batches[0])  # Warm-up step.
    jax.block_until_ready(metrics)
    times, tokens, flops = [], [], []
    for batch in batches[1:]:
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
        m = jax.device_get(metrics)
        tokens.append(float(m["tokens"]))
        flops.append(model_flops_per_token(config, m["tokens"] / max(m["clips"], 1)) * m["tokens"])

    peak = matmul_flops_per_s()
    step_seconds = statistics.mean(times)
    achieved = statistics.mean(flops) / step_seconds
    rows = [
        ("experiment", f"`{args.config}` ({count_params(state.params):,} parameters)"),
        ("batch", f"{config.data.batch_size} rows x {config.data.seq_len} tokens"),
        ("compile time", f"{compile_seconds:.1f} s"),
        (
            f"step time (mean of {len(times)})",
            f"{step_seconds * 1000:.0f} ms (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})",
        ),
        ("tokens/s (non-padding)", f"{statistics.mean(tokens) / step_seconds:,.0f}"),
        ("model FLOPs per step (analytic)", f"{statistics.mean(flops) / 1e9:.2f} GFLOP"),
        ("XLA cost-analysis FLOPs per step", f"{xla_flops / 1e9:.2f} GFLOP"),
        ("step FLOP/s (analytic)", f"{achieved / 1e9:.2f} GFLOP/s"),
        ("machine f32 matmul FLOP/s (1024^3, same run)", f"{peak / 1e9:.2f} GFLOP/s"),
        ("step FLOP/s / matmul FLOP/s", f"{achieved / peak:.1%}"),
    ]
    machine = machine_description()
    table = "\n".join(["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    section = (
        f"Machine: {machine}.\n\n{table}\n\n"
        "Model FLOPs are counted analytically (`sora_jax.train.metrics.model_flops_per_token`: "
        "matmuls of blocks, patch embedding and final layer, attention within each clip; "
        "forward + backward = 3x forward). XLA's cost analysis counts what the compiled program "
        f"does, but counts the body of the scanned block stack once ({config.model.depth} blocks "
        "run), and it includes attention over the masked-out keys of each packed row; the two "
        "figures therefore differ in both directions and only the analytic one enters the ratio.\n\n"
        f"Command: `python -m benchmarks.train_step --config {args.config} --steps {args.steps}`"
    )
    print(section)
    if not args.no_write:
        replace_section("train_step", "Train step (world_tiny, CPU)", section)


if __name__ == "__main__":
    main()
