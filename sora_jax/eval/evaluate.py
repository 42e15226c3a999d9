"""``sora-jax evaluate``: score checkpoints of a run, alone or beside the training job.

For each checkpoint: the EMA parameters are restored (onto whatever devices are here). A DiT run's
flow loss is computed on held-out physics-world batches (seed ``eval.seed``, never used in training;
a run trained on latents or stored caption embeddings draws its store's clips instead) with fixed
noise at fixed timesteps, one per band of ``eval.timestep_buckets`` equal bands of t, so two
checkpoints compare without sampling noise; and videos are generated for the run's sample
prompts. An autoencoder run's score is the PSNR and SSIM of its reconstructions of
``eval.batches x data.batch_size`` held-out clips (``eval.seed``), and its videos show
``train.sample_clips`` of them beside their reconstructions. Results go to
``DIR/eval/step_N.json``, ``DIR/eval/metrics.jsonl`` and TensorBoard (``DIR/eval/tensorboard``),
videos to ``DIR/eval/step_N_I.mp4`` and ``.gif``. ``DIR`` may be a URL (``gs://bucket/run``), read
and written through ``etils.epath``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from sora_jax.autoencoder.training import (
    held_out_clips,
    reconstruction_sampler,
    reconstruction_scores,
    reconstructor,
)
from sora_jax.config import ConfigError, config_from_json
from sora_jax.data.pipeline import batch_stream
from sora_jax.data.video_io import write_video
from sora_jax.diffusion.flow import flow_loss, velocity_predictor
from sora_jax.eval.generate import make_generator, prompt_sampler
from sora_jax.eval.inputs import ClipLayout
from sora_jax.parallel.mesh import make_mesh
from sora_jax.train import checkpoint
from sora_jax.train.metrics import MetricsWriter
from sora_jax.train.state import abstract_train_state, model_graphdef

log = logging.getLogger("sora_jax")


def local_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The run's config, with its mesh replaced by data parallelism over the devices here."""
    config_file = epath.Path(workdir) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: is {workdir} a training workdir?")
    config = config_from_json(config_file.read_text())
    with config.unlocked():
        for axis in ("fsdp", "sequence", "tensor"):
            config.mesh[f"ici_{axis}"] = 1
        config.mesh.ici_data = -1
        for axis in ("data", "fsdp", "sequence", "tensor"):
            config.mesh[f"dcn_{axis}"] = 1
        if config.model.attention == "splash" and jax.default_backend() != "tpu":
            config.model.attention = "xla"  # The same function, computed without the TPU kernel.
    return config


def held_out_batches(config: ml_collections.ConfigDict) -> list[dict[str, np.ndarray]]:
    """``eval.batches`` physics-world batches from ``eval.seed``, captions always kept.

    A latent run, or one reading stored caption embeddings, can only be fed from its store: its
    batches are then the store's clips in the order ``eval.seed`` draws (not held out).
    """
    held_out = config.copy_and_resolve_references()
    from_store = bool(config.model.autoencoder) or config.model.text_encoder != "learned"
    with held_out.unlocked():
        held_out.seed = config.eval.seed
        held_out.data.store = config.data.store if from_store else ""
        held_out.data.caption_dropout = 0.0
        held_out.data.workers = 0
    return list(itertools.islice(batch_stream(held_out, config.data.batch_size), config.eval.batches))


class Evaluator:
    """Evaluates checkpoints of one workdir; compiled functions are reused across checkpoints."""

    def __init__(self, workdir: str | os.PathLike, world: bool = False) -> None:
        self.workdir = epath.Path(workdir)
        self.config = config = local_config(self.workdir)
        self.manager = checkpoint.manager(self.workdir, read_only=True)
        self.abstract = abstract_train_state(config, make_mesh(config)).ema_params
        self.graphdef = model_graphdef(config)
        self.autoencoder = config.task == "autoencoder"
        if self.autoencoder:  # PSNR and SSIM of reconstructions of held-out clips.
            self.clips = held_out_clips(config, config.eval.batches * config.data.batch_size)
            self.reconstruct = reconstructor(self.graphdef["autoencoder"])
            self.sample: Callable = reconstruction_sampler(self.graphdef, config)
        else:  # Flow loss per timestep band, and generated samples.
            self.batches = held_out_batches(config)
            buckets = config.eval.timestep_buckets
            self.bucket_t = [(b + 0.5) / buckets for b in range(buckets)]
            self.loss = jax.jit(self._loss)
            self.sample = prompt_sampler(self.graphdef, config)
        if world and self.autoencoder:
            raise ConfigError(f"--world scores generated videos; {workdir} trained an autoencoder")
        self.world = WorldEvaluation(self.graphdef, config) if world else None
        self.out = self.workdir / "eval"
        self.out.mkdir(parents=True, exist_ok=True)
        # One line per checkpoint: a URL's metrics.jsonl is rewritten at each, not every 30 s.
        self.writer = MetricsWriter(self.out, upload_seconds=0.0)

    def _loss(self, params: nnx.State, batch: dict, key: jax.Array, t: jax.Array) -> jax.Array:
        model = nnx.merge(self.graphdef, params)
        velocity = velocity_predictor(model, batch, self.config.diffusion)
        return flow_loss(velocity, batch, key, self.config, timesteps=t)[0]

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def evaluated(self, step: int) -> bool:
        return (self.out / f"step_{step}.json").exists()

    def _val_losses(self, params: nnx.State) -> dict[str, float]:
        base = jax.random.key(self.config.eval.seed)
        by_bucket = {}
        for t in self.bucket_t:
            losses = [
                float(self.loss(params, batch, jax.random.fold_in(base, i), jnp.float32(t)))
                for i, batch in enumerate(self.batches)
            ]
            by_bucket[f"val_loss_t{t:.3f}"] = float(np.mean(losses))
        return {"val_loss": float(np.mean(list(by_bucket.values()))), **by_bucket}

    def evaluate(self, step: int) -> dict[str, float]:
        params = checkpoint.restore_params(self.manager, self.abstract, step)
        if self.autoencoder:
            scores = reconstruction_scores(self.reconstruct, params["autoencoder"], self.clips)
        else:
            scores = self._val_losses(params)
            if self.world is not None:
                scores |= self.world.scores(params)
        result = {"step": step, **scores}
        for index, frames in enumerate(self.sample(params)):
            for suffix in ("mp4", "gif"):
                write_video(
                    self.out / f"step_{step:06d}_{index}.{suffix}", frames, self.config.train.sample_fps
                )
            self.writer.write_frames(step, f"eval_samples/{index}", frames)
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


class WorldEvaluation:
    """Videos for ``eval.world_clips`` held-out physics-world captions (clips of ``eval.seed``, at the
    run's sample shape and rate, generation seed = clip index), per task, scored against the scenes
    the captions describe (:mod:`sora_jax.eval.world_score`).

    Tasks: ``text_to_video`` (the caption alone), ``image_to_video`` (and its first frame) and
    ``extend_forward`` (and the first half of its temporal groups), or those of ``tasks``. Keys:
    ``world/<task>/<score>`` for every score and ``overall``, and ``world/overall``, the mean over
    tasks.
    """

    TASKS = ("text_to_video", "image_to_video", "extend_forward")

    def __init__(
        self, graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, tasks: tuple[str, ...] = TASKS
    ) -> None:
        from sora_jax.data import world
        from sora_jax.eval.world_score import scene_facts

        t, d = config.train, config.diffusion
        self.config, self.tasks = config, tasks
        self.generate = make_generator(
            graphdef, config, frames=t.sample_frames, height=t.sample_height, width=t.sample_width,
            steps=d.sample_steps, guidance=d.guidance, method=d.sampler, cond_guidance=d.cond_guidance,
        )  # fmt: skip
        decoder = self.generate.decoder
        shape = (t.sample_frames, t.sample_height, t.sample_width)
        self.layout = ClipLayout(*shape, config.model.channels, config.model.patch_size[0], decoder)
        frames, height, width = decoder.pixel_shape(*shape) if decoder is not None else shape
        self.clips = [
            world.make_clip(config.eval.seed, i, frames=frames, height=height, width=width, fps=t.sample_fps)
            for i in range(config.eval.world_clips)
        ]
        self.facts = [scene_facts(clip) for clip in self.clips]

    def given_frames(self, task: str) -> int:
        """How many of a clip's first frames ``task`` gives the generator (0 for text_to_video)."""
        if task == "image_to_video":
            return 1
        if task == "extend_forward":  # The first half of the temporal groups, at least one.
            model_frames = max(1, self.layout.groups // 2) * self.layout.time_patch
            decoder = self.layout.decoder
            ft = decoder.autoencoder.config.temporal_factor if decoder is not None else 0
            return 1 + ft * (model_frames - 1) if decoder is not None else model_frames
        return 0

    def _condition(self, task: str, frames: np.ndarray):
        given = self.given_frames(task)
        return self.layout.condition([("start", frames[:given])]) if given else None

    def scores(self, params: nnx.State) -> dict[str, float]:
        from sora_jax.eval.world_score import mean_scores, world_scores

        result: dict[str, float] = {}
        for task in self.tasks:
            rows = []
            for index, (clip, facts) in enumerate(zip(self.clips, self.facts, strict=True)):
                condition = self._condition(task, clip.frames)
                video = self.generate(params, clip.caption, index, condition=condition)
                rows.append(world_scores(video, facts))
            result |= {f"world/{task}/{name}": value for name, value in mean_scores(rows).items()}
        result["world/overall"] = float(np.mean([result[f"world/{task}/overall"] for task in self.tasks]))
        return result

    def references(self) -> dict[str, dict[str, float]]:
        """The same clips' reference scores (the world's own videos, another scene, noise, ...):
        :func:`sora_jax.eval.world_score.reference_scores`."""
        from sora_jax.eval.world_score import reference_scores

        return reference_scores(self.clips)

    def copy_baseline(self, task: str) -> dict[str, float]:
        """Mean scores of a generator that only copies what ``task`` gives it: the given frames,
        then the last of them held to the end (``task`` must give frames)."""
        from sora_jax.eval.world_score import mean_scores, world_scores

        given = self.given_frames(task)
        if not given:
            raise ValueError(f"{task} gives no frames to copy")
        rows = []
        for clip, facts in zip(self.clips, self.facts, strict=True):
            held = np.repeat(clip.frames[given - 1 : given], len(clip.frames) - given, axis=0)
            rows.append(world_scores(np.concatenate([clip.frames[:given], held]), facts))
        return mean_scores(rows)
