"""A third kind of run, defined here and registered by name, goes through every command's machinery
(train, checkpoint, resume, evaluate, data-stats, ahead-of-time compile) with no change to them.

The toy kind fits a linear map ``y = x W`` to synthetic rows drawn from the step number, so a
resumed run must continue bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.config import base_config, validate
from sora_jax.data.stats import pipeline_stats
from sora_jax.eval.evaluate import Evaluator
from sora_jax.kinds.base import Batch, RunKind, Sampler, Scorer, TrainStep
from sora_jax.kinds.registry import register
from sora_jax.train.step import make_update, step_key
from sora_jax.train.trained_run import TrainedRun
from sora_jax.train.trainer import train

FEATURES = 6
TRUE_MAP = np.linspace(-1.0, 1.0, FEATURES, dtype=np.float32)[:, None]


class Rows:
    """Step -> rows ``first .. first + count - 1`` of that step's batch (a grain map function)."""

    def __init__(self, seed: int, batch: int, first: int, count: int) -> None:
        self.seed, self.batch, self.first, self.count = seed, batch, first, count

    def __call__(self, step: int) -> Batch:
        first = int(step) * self.batch + self.first  # Global row index: the same on any mesh.
        rngs = [np.random.default_rng((self.seed, first + r)) for r in range(self.count)]
        x = np.stack([rng.standard_normal(FEATURES).astype(np.float32) for rng in rngs])
        return {"x": x, "y": x @ TRUE_MAP}


class ToyKind(RunKind):
    """Linear regression: the smallest thing the interface can train."""

    def init(self, seed: int) -> tuple[nnx.GraphDef, nnx.State]:
        return nnx.split(nnx.Linear(FEATURES, 1, rngs=nnx.Rngs(seed)), nnx.Param)

    def train_step(self, graphdef: nnx.GraphDef) -> TrainStep:
        update = make_update(self.config, self.optimizer())

        def loss_fn(params: nnx.State, batch: Batch, key: jax.Array) -> jax.Array:
            noise = 0.01 * jax.random.normal(key, batch["y"].shape)  # The step's own randomness.
            return jnp.mean((nnx.merge(graphdef, params)(batch["x"]) - batch["y"] - noise) ** 2)

        def step(state, batch):
            key = step_key(self.config.seed, state.step)
            loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, key)
            new_state, metrics = update(state, loss, grads)
            return new_state, metrics | {"clips": jnp.asarray(batch["x"].shape[0], jnp.int32)}

        return step

    def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
        return {"x": ("batch", None), "y": ("batch", None)}

    def batch_row(self) -> dict[str, jax.ShapeDtypeStruct]:
        return {name: jax.ShapeDtypeStruct((1, 1 if name == "y" else FEATURES), np.float32) for name in "xy"}

    def batches(self, first_row: int, num_rows: int) -> Iterator[Batch]:
        rows = Rows(self.config.seed, self.config.data.batch_size, first_row, num_rows)
        return iter(grain.MapDataset.range(2**31 - 1).map(rows).to_iter_dataset())

    def sampler(self, graphdef: nnx.GraphDef) -> Sampler:
        return lambda params: []  # It makes no videos.

    def evaluator(self, graphdef: nnx.GraphDef, world: bool = False) -> Scorer:
        def score(params: nnx.State) -> dict[str, float]:
            weights = np.asarray(nnx.merge(graphdef, params).kernel[...])
            return {"map_error": float(np.abs(weights - TRUE_MAP).max())}

        return score


register("toy", ToyKind)


def toy_config(steps: int, profile_steps: int = 0):
    config = base_config()
    config.train.profile_steps = profile_steps
    config.task = "toy"
    config.data.batch_size = 8
    config.train.steps = steps
    config.train.log_every = 1
    config.optim.lr = 0.1
    config.optim.warmup_steps = 2
    config.optim.min_lr_ratio = 1.0  # A constant rate after warmup: a shorter run is a prefix.
    config.optim.weight_decay = 0.0
    config.optim.ema_decay = 0.0
    config.checkpoint.every = 8
    config.lock()
    validate(config)
    return config


def test_a_kind_registered_here_trains_resumes_evaluates_and_compiles(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(toy_config(24, profile_steps=2), straight)
    assert list((straight / "profile").rglob("*.xplane.pb"))  # A trace of steps 3 and 4.
    train(toy_config(16), resumed)  # Stops at step 16 with a checkpoint ...
    train(toy_config(24), resumed)  # ... and a second run resumes from it.

    lines = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 25))
    assert lines[-1]["loss"] < 0.3 * lines[0]["loss"]  # It learns.
    assert lines[-1]["clips_per_s"] > 0  # The interface's default throughput meter.
    with TrainedRun(straight) as one, TrainedRun(resumed) as other:
        assert one.steps() == other.steps() == [8, 16, 24]
        for a, b in zip(jax.tree.leaves(one.params()), jax.tree.leaves(other.params()), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # Resumed bit for bit.

    evaluator = Evaluator(resumed)
    result = evaluator.evaluate(24)
    evaluator.close()
    assert result["map_error"] < 0.3
    assert json.loads((resumed / "eval" / "step_24.json").read_text())["map_error"] == result["map_error"]

    stats = pipeline_stats(toy_config(24), batches=3)
    assert stats["batches"] == 3 and stats["rows_per_s"] > 0


def test_a_steps_metrics_are_read_once_the_next_step_is_queued(tmp_path, monkeypatch):
    """The host lays out step N + 1's batch before it waits for step N's metrics, so on an
    accelerator the next batch is built while the device runs; every step's metrics still land,
    a checkpoint's with it, and in order."""
    from sora_jax.parallel.global_batch import BatchLayout
    from sora_jax.train.metrics import MetricsWriter

    written: list[int] = []  # Steps whose metrics were written, in order.
    seen: list[int] = []  # For each batch laid out: how many steps' metrics were written by then.
    write, to_global = MetricsWriter.write, BatchLayout.to_global

    def recording_write(self, step, metrics):
        written.append(step)
        write(self, step, metrics)

    def recording_to_global(self, host_batch):
        seen.append(len(written))
        return to_global(self, host_batch)

    monkeypatch.setattr(MetricsWriter, "write", recording_write)
    monkeypatch.setattr(BatchLayout, "to_global", recording_to_global)
    train(toy_config(12), tmp_path / "run")  # A checkpoint at step 8, the last at 12.

    assert written == list(range(1, 13))
    # Step n's batch is laid out with the metrics of steps up to n - 2 written, since step n - 1's
    # are read only after step n is queued; but the checkpoint at step 8 reads step 8's before it
    # saves, so steps 9 and 10 find those of step 8.
    assert seen == [0, 0, 1, 2, 3, 4, 5, 6, 8, 8, 9, 10]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 13))
    assert all(line["step_seconds"] > 0 for line in lines)


@pytest.mark.slow
def test_a_registered_kind_compiles_ahead_of_time_for_a_tpu_slice():
    from sora_jax.parallel.tpu import topology_devices
    from sora_jax.train.aot import compile_train_step

    compiled = compile_train_step(toy_config(24), topology_devices("v5p-8"))
    memory = compiled.memory_analysis()
    assert memory.argument_size_in_bytes > 0
    assert compiled.cost_analysis()["flops"] > 0
