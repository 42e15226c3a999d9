"""The video autoencoder (``task = "autoencoder"``): a causal 3D VAE, optionally with a patch GAN.

- model: :class:`~sora_jax.autoencoder.model.VideoAutoencoder` and, with
  ``autoencoder.disc_weight > 0``, :class:`~sora_jax.autoencoder.discriminator.PatchDiscriminator`,
  as ``{"autoencoder": ..., "discriminator": ...}``, each with its own optimizer settings;
- batches: dense ``videos [B, T, H, W, 3]`` of ``data.dense_clip``, physics-world clips or a clip
  store's real videos (:func:`~sora_jax.autoencoder.training.clip_batches`);
- evaluation: PSNR and SSIM of reconstructions of held-out clips; samples: clips beside their
  reconstructions. It does not generate from prompts, nor score physics-world generations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import optax

from sora_jax.autoencoder.config import AutoencoderConfig
from sora_jax.autoencoder.training import (
    autoencoder_optimizer,
    clip_batches,
    held_out_clips,
    make_autoencoder_step,
    reconstruction_sampler,
    reconstruction_scores,
    reconstructor,
    split_autoencoder,
)
from sora_jax.errors import ConfigError
from sora_jax.kinds.base import Batch, RunKind, Sampler, Scorer, TrainStep


class AutoencoderKind(RunKind):
    """The video autoencoder of ``config.autoencoder``; see the module docstring."""

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        d, t = config.data, config.train
        autoencoder = AutoencoderConfig.from_section(config.autoencoder)  # Raises ConfigError.
        try:
            autoencoder.latent_shape(*d.dense_clip)
        except (TypeError, ValueError) as error:
            clip = tuple(d.dense_clip)
            raise ConfigError(f"config key 'data.dense_clip': {clip} cannot be encoded: {error}") from None
        if t.sample_clips < 0:
            raise ConfigError(f"config key 'train.sample_clips': must be >= 0, got {t.sample_clips}")

    def init(self, seed: int) -> tuple[dict, dict]:
        return split_autoencoder(self.config, seed)

    def optimizer(self) -> optax.GradientTransformation:
        return autoencoder_optimizer(self.config)

    def train_step(self, graphdef: dict) -> TrainStep:
        return make_autoencoder_step(graphdef, self.config, self.optimizer())

    def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
        return {"videos": ("batch", None, None, None, None)}

    def batch_row(self) -> dict[str, jax.ShapeDtypeStruct]:
        return {"videos": jax.ShapeDtypeStruct((1, *self.config.data.dense_clip, 3), np.float32)}

    def batches(self, first_row: int, num_rows: int) -> Iterator[Batch]:
        return clip_batches(self.config, first_row, num_rows)

    def describe_batches(self, batches: list[Batch], seconds: float) -> dict[str, float]:
        """``clips_per_s`` drawn (of ``batches[1:]``, in ``seconds``), the clip's pixels, and the
        pixels' mean and standard deviation."""
        videos = np.concatenate([b["videos"] for b in batches])
        return {
            "clips_per_s": sum(len(b["videos"]) for b in batches[1:]) / seconds,
            "clip_pixels": math.prod(videos.shape[1:4]),
            "pixel_mean": float(videos.mean()),
            "pixel_std": float(videos.std()),
        }

    def sampler(self, graphdef: dict) -> Sampler:
        return reconstruction_sampler(graphdef, self.config)

    def evaluator(self, graphdef: dict, world: bool = False) -> Scorer:
        if world:
            raise ConfigError("--world scores generated videos; this run trained an autoencoder")
        config = self.config
        clips = held_out_clips(config, config.eval.batches * config.data.batch_size)
        reconstruct = reconstructor(graphdef["autoencoder"])
        return lambda params: reconstruction_scores(reconstruct, params["autoencoder"], clips)

    def work_per_step(self) -> tuple[int, str]:
        return self.config.data.batch_size, "clips"
