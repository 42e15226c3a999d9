"""Train-step speed of an experiment on this machine, written into docs/BENCHMARKS.md.

Measures, in one process and one run: the machine's f32 matmul FLOP/s (the reference for
utilisation), the train step's compile time, its mean step time and tokens/s over real packed
batches, and its FLOP/s as a fraction of the matmul figure.

    python -m benchmarks.train_step [--config experiments/world_tiny.py] [--steps 30]
        [--before KEY=VALUE ...]

With ``--before``, the same experiment with those overrides (the recipe it replaced) is measured
in the same run, and the table holds both columns side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.report import machine_description, replace_section
from sora_jax.config import load_config
from sora_jax.data.pipeline import batch_stream
from sora_jax.kinds.registry import run_kind
from sora_jax.parallel.global_batch import BatchLayout, packed_axes
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


def measure_step(config, steps: int) -> dict:
    """Compile time, step times, tokens and analytic FLOPs of ``config``'s train step over ``steps``
    real packed batches (after one warm-up step)."""
    mesh = make_mesh(config)
    graphdef, state, shardings = create_train_state(config, mesh)
    step_fn = jit_train_step(graphdef, run_kind(config), mesh, shardings)
    stream = batch_stream(config, config.data.batch_size)
    layout = BatchLayout.of(config, mesh, packed_axes(config))
    batches = [layout.to_global(next(stream)) for _ in range(steps + 1)]

    start = time.perf_counter()
    compiled = step_fn.lower(state, batches[0]).compile()
    compile_seconds = time.perf_counter() - start
    xla_flops = compiled.cost_analysis().get("flops", float("nan"))

    # The compiled program takes the trained state and the frozen parameters apart, as
    # JittedTrainStep calls it: only the trained part is donated.
    frozen, state = state.frozen, state.replace(frozen=None)
    state, metrics = compiled(state, frozen, batches[0])  # Warm-up step.
    jax.block_until_ready(metrics)
    times, tokens, flops = [], [], []
    for batch in batches[1:]:
        start = time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
        m = jax.device_get(metrics)
        tokens.append(float(m["tokens"]))
        flops.append(model_flops_per_token(config, m["tokens"] / max(m["clips"], 1)) * m["tokens"])
    step_seconds = statistics.mean(times)
    return {
        "params": count_params(state.params),
        "compile_seconds": compile_seconds,
        "step_seconds": step_seconds,
        "min_seconds": min(times),
        "max_seconds": max(times),
        "tokens_per_s": statistics.mean(tokens) / step_seconds,
        "flops": statistics.mean(flops),
        "xla_flops": xla_flops,
        "flops_per_s": statistics.mean(flops) / step_seconds,
    }


def section_name(spec: str) -> tuple[str, str]:
    """Report section (name, title) of an experiment: world_tiny keeps the historical ``train_step``."""
    stem = Path(spec.split(":")[0]).stem
    if stem == "world_tiny":
        return "train_step", "Train step (world_tiny, CPU)"
    return f"train_step_{stem}", f"Train step ({stem}, CPU)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/world_tiny.py")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--before", nargs="*", default=[], metavar="KEY=VALUE", help="overrides: the recipe to compare"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    configs = {"": load_config(args.config)}
    if args.before:
        configs = {"before": load_config(args.config, args.before), "now": configs[""]}
    results = {name: measure_step(config, args.steps) for name, config in configs.items()}
    peak = matmul_flops_per_s()

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(name, r) for name, r in results.items()) + " |"

    def batch(name: str, _) -> str:
        d = configs[name].data
        return f"{d.batch_size} rows x {d.seq_len} tokens"

    rows = [
        row("parameters", lambda _, r: f"{r['params']:,}"),
        row("batch", batch),
        row("compile time", lambda _, r: f"{r['compile_seconds']:.1f} s"),
        row(
            f"step time (mean of {args.steps})",
            lambda _, r: (
                f"{r['step_seconds'] * 1000:.0f} ms (min {r['min_seconds'] * 1000:.0f}, "
                f"max {r['max_seconds'] * 1000:.0f})"
            ),
        ),
        row("tokens/s (non-padding)", lambda _, r: f"{r['tokens_per_s']:,.0f}"),
        row("model FLOPs per step (analytic)", lambda _, r: f"{r['flops'] / 1e9:.2f} GFLOP"),
        row("XLA cost-analysis FLOPs per step", lambda _, r: f"{r['xla_flops'] / 1e9:.2f} GFLOP"),
        row("step FLOP/s (analytic)", lambda _, r: f"{r['flops_per_s'] / 1e9:.2f} GFLOP/s"),
        row("machine f32 matmul FLOP/s (1024^3, same run)", lambda _, r: f"{peak / 1e9:.2f} GFLOP/s"),
        row("step FLOP/s / matmul FLOP/s", lambda _, r: f"**{r['flops_per_s'] / peak:.1%}**"),
    ]
    columns = ["value"] if not args.before else ["before", "now"]
    header = ["| measure | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    command = f"python -m benchmarks.train_step --config {args.config} --steps {args.steps}"
    if args.before:
        command += " --before " + " ".join(f"'{item}'" for item in args.before)
    before = (
        f"`before` is the experiment with `{' '.join(args.before)}`, measured in the same run as `now` "
        "(the experiment as it is).\n\n"
        if args.before
        else ""
    )
    section = (
        f"Machine: {machine_description()}.\n\n{before}" + "\n".join(header + rows) + "\n\n"
        "Model FLOPs are counted analytically (`sora_jax.train.metrics.model_flops_per_token`: "
        "matmuls of blocks, patch embedding and final layer, attention within each clip; "
        "forward + backward = 3x forward). XLA's cost analysis counts what the compiled program "
        "does: a scanned block stack's body once, and attention over the masked-out keys of each "
        "packed row; the two figures therefore differ in both directions and only the analytic one "
        "enters the ratio.\n\n"
        f"Command: `{command}`"
    )
    print(section)
    if not args.no_write:
        replace_section(*section_name(args.config), section)


if __name__ == "__main__":
    main()
