"""``sora-jax train``: one training run, top to bottom.

Sections: workdir and mesh -> input pipeline -> train state (fresh or restored) -> compiled step ->
sampler -> loop (step, metrics, samples) -> final checkpoint. The same code runs on one CPU, fake
CPU devices, or a TPU pod; only the mesh differs.

Nothing is written into the workdir before the config is checked against the run it may already
hold (:mod:`sora_jax.train.resume`) and the state is restored, so a start that fails leaves the
workdir as it was.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from sora_jax.config import config_to_json
from sora_jax.data.video_io import write_sample
from sora_jax.errors import ConfigError
from sora_jax.kinds.base import Meter, RunKind, Sample
from sora_jax.kinds.registry import run_kind
from sora_jax.parallel.global_batch import BatchLayout, batch_shardings
from sora_jax.parallel.mesh import make_mesh
from sora_jax.parallel.sharding import axis_rules, describe_shardings
from sora_jax.train import checkpoint
from sora_jax.train.metrics import MetricsWriter
from sora_jax.train.profile import StepProfiler
from sora_jax.train.resume import check_workdir
from sora_jax.train.state import (
    TrainState,
    abstract_train_state,
    attach_frozen,
    count_params,
    create_train_state,
    model_graphdef,
)

log = logging.getLogger("sora_jax")


def jit_train_step(graphdef: Any, kind: RunKind, mesh: Mesh, state_shardings: TrainState) -> JittedTrainStep:
    """``kind``'s train step jitted with explicit shardings: state in place (donated), batch over rows."""
    batch = batch_shardings(mesh, axis_rules(kind.config), kind.batch_axes())
    return JittedTrainStep(kind.train_step(graphdef), state_shardings, batch)


class JittedTrainStep:
    """``step(state, batch) -> (state, metrics)``, one compiled program for the run.

    The state's trained parts are donated (updated in place); its frozen parameters
    (``TrainState.frozen``, a LoRA run's base) are not: they are the same arrays after the step,
    which the kind also holds for sampling.
    """

    def __init__(self, step: Any, state_shardings: TrainState, batch_shardings: dict) -> None:
        def run(state: TrainState, frozen: Any, batch: dict) -> tuple[TrainState, dict]:
            new, metrics = step(state.replace(frozen=frozen), batch)
            return new.replace(frozen=None), metrics

        trained = state_shardings.replace(frozen=None)
        self._jitted = jax.jit(
            run,
            in_shardings=(trained, state_shardings.frozen, batch_shardings),
            out_shardings=(trained, None),
            donate_argnums=(0,),
        )

    def __call__(self, state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        new, metrics = self._jitted(state.replace(frozen=None), state.frozen, batch)
        return new.replace(frozen=state.frozen), metrics

    def lower(self, state: TrainState, batch: dict) -> jax.stages.Lowered:
        return self._jitted.lower(state.replace(frozen=None), state.frozen, batch)

    def _cache_size(self) -> int:
        return self._jitted._cache_size()


class StepLog:
    """Writes the metrics of logged steps, each read from the device one step late.

    :meth:`hold` keeps a step's metrics as the device arrays the step returned; :meth:`read`
    (called once the next step is queued, and before anything that must see them: a checkpoint,
    the end of the run) fetches them, adds the step time and the meter's figures, writes them and
    stops the run on too many non-finite steps in a row. Reading the metrics right after their
    step would block the host until the step ends, so the next batch could not be built meanwhile.
    """

    def __init__(
        self,
        writer: MetricsWriter,
        meter: Meter,
        progress: tqdm,
        step_fn: JittedTrainStep,
        start: int,
        max_nonfinite: int,
        saver: checkpoint.BackgroundSaver,
    ) -> None:
        self.writer, self.meter, self.progress, self.step_fn = writer, meter, progress, step_fn
        self.max_nonfinite, self.saver = max_nonfinite, saver
        self.metrics: dict[str, float] = {}  # The last step's written, returned by the run.
        self._held: tuple[int, Any] | None = None
        self._last_time, self._last_step = time.perf_counter(), start

    def hold(self, step: int, device_metrics: Any) -> None:
        """Keep step ``step``'s metrics (still on the device) for the next :meth:`read`."""
        self._held = (step, device_metrics)

    def read(self) -> None:
        """Fetch, complete and write the held step's metrics, if any (blocks until that step ends).

        Raises:
            FloatingPointError: ``max_nonfinite`` steps in a row up to it had a non-finite loss.
        """
        if self._held is None:
            return
        done, device_metrics = self._held
        self._held = None
        metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        now = time.perf_counter()
        seconds = (now - self._last_time) / (done - self._last_step)
        self._last_time, self._last_step = now, done
        metrics |= {"step_seconds": seconds, "compiles": self.step_fn._cache_size()}
        metrics |= self.meter.figures(metrics, seconds)
        self.writer.write(done, metrics)
        self.progress.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
        self.metrics = metrics
        if metrics["nonfinite_in_a_row"] >= self.max_nonfinite:
            self.saver.close()
            raise FloatingPointError(
                f"{int(metrics['nonfinite_in_a_row'])} steps in a row up to step {done} had a "
                f"non-finite loss or gradient (train.max_nonfinite={self.max_nonfinite}); their updates "
                "were skipped. Lower optim.lr, raise optim.warmup_steps or check the data; "
                f"the last good checkpoint is step {self.saver.latest_step}."
            )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training once the state of ``step`` was saved."""

    def __init__(self, step: int) -> None:
        super().__init__(f"interrupted: saved step {step}; rerun the same command to resume")
        self.step = step


class PreemptionWatch:
    """Turns SIGTERM (a preemption notice) or a first Ctrl-C (SIGINT) into a request to save and
    stop at a step boundary; a second Ctrl-C ends the process at once, unsaved.

    With several processes they must agree on the step; JAX's preemption sync point does that
    (every process gets True at the same step once any process was notified). It hears SIGTERM
    through its own handler, installed by ``jax.distributed.initialize``, which a Python handler
    would replace: so the handlers are installed only for a single process.
    """

    def __init__(self) -> None:
        self.requested = False
        self.interrupted = False  # By Ctrl-C rather than a preemption notice.
        self._previous: dict[int, Any] = {}
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._notice)

    def _notice(self, signum: int, frame: object) -> None:
        self.requested = True
        if signum == signal.SIGINT:
            self.interrupted = True
            # A step can take long (the first one compiles): a second Ctrl-C must not wait for it.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            log.warning("interrupt: saving at the end of this step (Ctrl-C again stops at once, unsaved)")

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, float]:
    """Train ``config`` in ``workdir`` (resuming from its newest readable checkpoint); return the
    final metrics (none when the run was already at ``train.steps``).

    ``workdir`` is a local directory or a URL that every process reaches (``gs://bucket/run``).

    Raises:
        ConfigError: ``config`` cannot resume the run in ``workdir``, its ``data.store`` is missing
            or empty, ``workdir`` is not writable, or no checkpoint restores; nothing was written.
        TrainingInterrupted: Ctrl-C, after the state was saved.
    """
    # --- workdir and mesh ------------------------------------------------------------------------
    workdir = epath.Path(workdir)  # Unlike pathlib, keeps "gs://" whole.
    check_workdir(config, workdir)
    mesh = make_mesh(config)
    log.info("mesh %s over %d devices in %d process(es)", dict(mesh.shape), mesh.size, jax.process_count())
    with jax.set_mesh(mesh):  # Model code constrains activations and splits attention on it.
        return _train(config, workdir, mesh, is_writer=jax.process_index() == 0)


def _train(
    config: ml_collections.ConfigDict, workdir: epath.Path, mesh: Mesh, is_writer: bool
) -> dict[str, float]:
    """The rest of :func:`train`, traced and run with ``mesh`` as the current mesh."""
    # --- what the run trains, and its input: this process's share of every batch ----------------
    kind = run_kind(config)  # config.task names it: the DiT, the autoencoder, ...
    layout = BatchLayout.of(config, mesh, kind.batch_axes())
    try:
        batches = kind.batches(layout.first_row, layout.num_rows)
    except ValueError as error:  # A data source that cannot feed this model (a store of latents, ...).
        raise ConfigError(str(error)) from None

    # --- train state (and input position): restored from the newest readable checkpoint, or fresh
    ckpt = checkpoint.manager(workdir, config)
    if ckpt.latest_step() is None:
        graphdef, state, shardings = create_train_state(config, mesh, kind)
    else:
        abstract = abstract_train_state(config, mesh)
        try:
            state = checkpoint.restore_newest(ckpt, abstract, batches)
        except ConfigError:
            ckpt.close()  # Orbax's background work ends before the error does.
            raise
        graphdef, shardings = model_graphdef(config), jax.tree.map(lambda a: a.sharding, abstract)
        state, shardings = attach_frozen(kind, state, shardings, mesh)
    start, t = int(state.step), config.train
    if start >= t.steps:
        log.info(
            "%s is already at step %d (train.steps=%d): nothing to train; "
            "to train further, pass --config.train.steps=N with N > %d",
            workdir,
            start,
            t.steps,
            start,
        )
        ckpt.close()
        return {}
    if is_writer:  # Only now that the run can go on: a failed start leaves the workdir as it was.
        (workdir / "samples").mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config_to_json(config))
    saver = checkpoint.BackgroundSaver(ckpt)
    frozen = f" trained, {count_params(state.frozen):,} frozen" if state.frozen is not None else ""
    log.info("parameters: %s%s; starting at step %d", f"{count_params(state.params):,}", frozen, start)
    for line in describe_shardings(state):
        log.info("%s", line)

    # --- compiled step: one program for the whole run -------------------------------------------
    step_fn = jit_train_step(graphdef, kind, mesh, shardings)
    sampler = kind.sampler(graphdef)

    # --- loop ------------------------------------------------------------------------------------
    writer = MetricsWriter(workdir, resume_step=start)
    preemption = PreemptionWatch()
    # Redraw often on a terminal, rarely into a log file.
    redraw = 0.5 if sys.stderr.isatty() else 30.0
    progress = tqdm(total=t.steps, initial=start, disable=not is_writer, desc="train", mininterval=redraw)
    step_log = StepLog(writer, kind.meter(), progress, step_fn, start, t.max_nonfinite, saver)
    profiler = StepProfiler(workdir, t.profile_steps, start)
    for step in range(start, t.steps):
        host_batch = next(batches)
        batch = layout.to_global(host_batch)
        profiler.before(step)
        state, device_metrics = step_fn(state, batch)
        profiler.after(step, state)
        done = step + 1
        # The previous step's metrics are read only now, with this step queued behind it: the host
        # builds the next batch while the device runs this step, not between steps.
        step_log.read()
        step_log.meter.see(host_batch)  # After: the figures read just now saw the batches up to theirs.
        if done % t.log_every == 0 or done == t.steps:
            step_log.hold(done, device_metrics)
        progress.update(1)
        every = config.checkpoint.every
        if every and done % every == 0 and done != t.steps:
            step_log.read()  # Its metrics are written with it: no gap after a resume from it.
            saver.save(done, state, batches)
            writer.flush()  # A bucket's metrics keep up with its checkpoints: no gap after a resume.
        if preemption.reached(done):
            step_log.read()
            if not preemption.interrupted:
                log.info("preemption notice: saving step %d and exiting", done)
            if saver.latest_step != done:
                saver.save(done, state, batches)
            saver.close()
            writer.close()
            preemption.close()
            profiler.close()
            progress.close()
            if preemption.interrupted:
                raise TrainingInterrupted(done)
            return step_log.metrics
        if t.sample_every and done % t.sample_every == 0 and done != t.steps:
            write_samples(sampler(state.ema_params), t.sample_fps, workdir / "samples", done, writer)
    step_log.read()
    progress.close()
    preemption.close()

    # --- final checkpoint and samples -----------------------------------------------------------
    final = int(state.step)
    if saver.latest_step != final:  # A run that was already complete saves nothing new.
        saver.save(final, state, batches)
    saver.close()
    write_samples(sampler(state.ema_params), t.sample_fps, workdir / "samples", final, writer)
    writer.close()
    profiler.close()
    seen = step_log.meter.summary()
    log.info("train step compiled %d time(s)%s", step_fn._cache_size(), f" for {seen}" if seen else "")
    return step_log.metrics


def write_samples(
    videos: list[np.ndarray | Sample],
    fps: float,
    folder: epath.Path,
    step: int,
    writer: MetricsWriter,
    tag: str = "samples",
) -> None:
    """Each sample video (uint8 ``[T, H, W, 3]``, or a :class:`Sample` with its sound) as
    ``folder/step_<step>_<index>.mp4`` and a gif beside it (with sound: an AAC track in the mp4 and
    a wav beside it too), and its frames to TensorBoard under ``<tag>/<index>``."""
    if jax.process_index() != 0:
        return
    for index, video in enumerate(videos):
        frames, sound = (video.frames, video.sound) if isinstance(video, Sample) else (video, None)
        rate = video.sample_rate if isinstance(video, Sample) else 16000
        write_sample(folder / f"step_{step:06d}_{index}.mp4", frames, fps, sound, rate)
        writer.write_frames(step, f"{tag}/{index}", frames)
