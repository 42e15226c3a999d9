"""``sora-jax evaluate``: score checkpoints of a run, alone or beside the training job.

For each checkpoint the EMA parameters are restored (onto whatever devices are here) and handed to
the run kind's evaluator and sampler (:mod:`sora_jax.kinds`): for a DiT, the flow loss of held-out
batches per timestep band (:mod:`sora_jax.eval.validation`), optionally physics-world scores of
generated videos (:mod:`sora_jax.eval.world_eval`), and videos for its sample prompts; for an
autoencoder, PSNR and SSIM of reconstructions of held-out clips, and clips beside their
reconstructions. Results go to ``DIR/eval/step_N.json``, ``DIR/eval/metrics.jsonl`` and
TensorBoard (``DIR/eval/tensorboard``), videos to ``DIR/eval/step_N_I.mp4`` and ``.gif``. ``DIR``
may be a URL (``gs://bucket/run``), read and written through ``etils.epath``.
"""

from __future__ import annotations

import json
import logging
import os
import time

from sora_jax.train.metrics import MetricsWriter
from sora_jax.train.resume import check_writable
from sora_jax.train.trained_run import TrainedRun
from sora_jax.train.trainer import write_samples

log = logging.getLogger("sora_jax")


class Evaluator:
    """Evaluates checkpoints of one workdir; compiled functions are reused across checkpoints.

    A checkpoint's results are complete once its ``step_N.json`` exists, which is written last.

    Raises (at construction):
        ConfigError: ``workdir`` is not a training workdir, or ``DIR/eval`` cannot be written.
    """

    def __init__(self, workdir: str | os.PathLike, world: bool = False) -> None:
        self.run = TrainedRun(workdir)
        self.workdir, self.config = self.run.workdir, self.run.config
        self.out = self.workdir / "eval"
        check_writable(self.out, "the results folder")  # Before anything is computed.
        self.score = self.run.kind.evaluator(self.run.graphdef, world=world)
        self.sample = self.run.kind.sampler(self.run.graphdef)
        # One line per checkpoint: a URL's metrics.jsonl is rewritten at each, not every 30 s.
        self.writer = MetricsWriter(self.out, upload_seconds=0.0)

    def steps(self) -> list[int]:
        return self.run.steps()

    def evaluated(self, step: int) -> bool:
        return (self.out / f"step_{step}.json").exists()

    def evaluate(self, step: int | None = None) -> dict[str, float]:
        """Score checkpoint ``step`` (default: the newest readable) and write its results."""
        step, params = self.run.load(step)
        scores = self.score(params)
        result = {"step": step, **scores}
        # A run with sound samples its videos with their sound: an mp4 with an AAC track, a wav.
        samples, fps = self.sample(params), self.config.train.sample_fps
        write_samples(samples, fps, self.out, step, self.writer, tag="eval_samples")
        self.writer.write(step, {k: v for k, v in result.items() if k != "step"})
        (self.out / f"step_{step}.json").write_text(json.dumps(result, indent=1))
        headline = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if "_t" not in k and "/" not in k)
        log.info("evaluated step %d: %s", step, headline)
        return result

    def follow(self, poll_seconds: float = 10.0, timeout: float | None = None) -> list[dict]:
        """Evaluate each new checkpoint as it lands; stop once the run's final step is evaluated."""
        results, started = [], time.monotonic()
        final = self.config.train.steps
        while True:
            for step in self.steps():
                if not self.evaluated(step):
                    results.append(self.evaluate(step))
            if self.evaluated(final):
                return results
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(f"no checkpoint of step {final} in {self.workdir} after {timeout} s")
            time.sleep(poll_seconds)

    def close(self) -> None:
        self.writer.close()
        self.run.close()
