"""A trained autoencoder, loaded from its run directory: the encoder that caches latents and the decoder
that turns a latent DiT's samples into video.

    vae = TrainedAutoencoder.load("runs/vae_world")         # EMA weights of the latest checkpoint
    latents = vae.encode(frames_uint8)                      # [T, H, W, 3] -> [T', H', W', z] float32
    video = vae.decode(latents)                             # -> uint8 [1 + ft (T' - 1), H, W, 3]

Encoding uses the posterior mean (no sampling noise), so a clip always has the same latents. Both
directions run in time chunks through the causal cache (:mod:`sora_jax.autoencoder.streaming`),
so memory stays bounded on long clips, and the result equals the whole-clip computation.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from sora_jax.autoencoder.config import AutoencoderConfig
from sora_jax.autoencoder.model import VideoAutoencoder
from sora_jax.autoencoder.streaming import decode_chunked, encode_chunked
from sora_jax.config import ConfigError
from sora_jax.data.pipeline import model_to_pixels, pixels_to_model


@dataclasses.dataclass
class TrainedAutoencoder:
    """The EMA autoencoder of checkpoint ``step`` of the autoencoder run in ``workdir``."""

    vae: VideoAutoencoder
    config: AutoencoderConfig
    workdir: str
    step: int
    chunk_frames: int | None = None  # Frames per encoder call (a multiple of ft); None: whole clips.

    @classmethod
    def load(cls, workdir: str | os.PathLike, step: int | None = None) -> TrainedAutoencoder:
        """Restores the EMA parameters onto the devices here, whatever mesh the run trained on.

        Raises:
            ConfigError: ``workdir`` is not an autoencoder run, or has no such checkpoint.
        """
        # Imported here: evaluation imports this package's training module.
        from sora_jax.eval.evaluate import local_config
        from sora_jax.parallel.mesh import make_mesh
        from sora_jax.train import checkpoint
        from sora_jax.train.state import abstract_train_state, model_graphdef

        try:
            config = local_config(workdir)
        except FileNotFoundError as error:
            raise ConfigError(str(error)) from None
        if config.task != "autoencoder":
            raise ConfigError(f"{workdir} trained task {config.task!r}, not an autoencoder")
        manager = checkpoint.manager(epath.Path(workdir), read_only=True)
        steps = sorted(manager.all_steps())
        if not steps:
            raise ConfigError(f"no checkpoint in {checkpoint.checkpoint_dir(workdir)}")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ConfigError(f"{workdir} has no checkpoint of step {step}; it has {steps}")
        abstract = abstract_train_state(config, make_mesh(config)).ema_params
        params = checkpoint.restore_params(manager, abstract, step)["autoencoder"]
        manager.close()
        vae = nnx.merge(model_graphdef(config)["autoencoder"], params)
        return cls(vae, AutoencoderConfig.from_section(config.autoencoder), os.fspath(workdir), step)

    def describe(self) -> dict[str, Any]:
        """What a latent store records about the autoencoder that made it (and a DiT run checks)."""
        c = self.config
        return {
            "name": epath.Path(self.workdir).name,
            "step": self.step,
            "temporal_factor": c.temporal_factor,
            "spatial_factor": c.spatial_factor,
            "latent_channels": c.latent_channels,
        }

    def usable_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The largest ``(T, H, W)`` within a clip's that the encoder takes: ``T = 1 + ft k``, and H
        and W multiples of ``fs``. Raises ValueError when the clip is smaller than one latent pixel."""
        ft, fs = self.config.temporal_factor, self.config.spatial_factor
        if height < fs or width < fs or frames < 1:
            raise ValueError(
                f"a {frames}x{height}x{width} clip is smaller than one latent ({fs}x{fs} pixels)"
            )
        return 1 + (frames - 1) // ft * ft, height // fs * fs, width // fs * fs

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` -> posterior mean ``[T', H', W', z]`` float32.

        Trailing frames beyond ``1 + ft k`` are dropped, and H and W are center-cropped to multiples of
        the spatial factor (see :meth:`usable_shape`).
        """
        t, h, w = self.usable_shape(*frames.shape[:3])
        top, left = (frames.shape[1] - h) // 2, (frames.shape[2] - w) // 2
        video = pixels_to_model(frames[:t, top : top + h, left : left + w])
        posterior = encode_chunked(self.vae, jnp.asarray(video[None]), self.chunk_frames)
        return np.asarray(posterior.mean[0])

    def decode(self, latents: np.ndarray, chunk_latents: int | None = None) -> np.ndarray:
        """``[T', H', W', z]`` latents -> uint8 video ``[1 + ft (T' - 1), H' fs, W' fs, 3]``."""
        return model_to_pixels(
            decode_chunked(self.vae, jnp.asarray(latents, jnp.float32)[None], chunk_latents)[0]
        )
