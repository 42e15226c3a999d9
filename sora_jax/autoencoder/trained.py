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
from sora_jax.autoencoder.streaming import decode_chunked, encode_chunked, encode_tiled, safe_margin
from sora_jax.data.pipeline import model_to_pixels, pixels_to_model
from sora_jax.train.trained_run import TrainedRun


@dataclasses.dataclass
class TrainedAutoencoder:
    """The EMA autoencoder of checkpoint ``step`` of the autoencoder run in ``workdir``."""

    vae: VideoAutoencoder
    config: AutoencoderConfig
    workdir: str
    step: int
    chunk_frames: int | None = None  # Frames per encoder call (a multiple of ft); None: whole clips.
    # Pixels a side of the spatial tiles frames wider or taller than it are encoded in (a multiple
    # of fs, blended over an overlap; exact with rms norms, see streaming.safe_margin); None: whole.
    tile: int | None = None

    @classmethod
    def load(cls, workdir: str | os.PathLike, step: int | None = None) -> TrainedAutoencoder:
        """Restores the EMA parameters onto the devices here, whatever mesh the run trained on.

        Raises:
            ConfigError: ``workdir`` is not an autoencoder run, or has no such checkpoint.
        """
        with TrainedRun(workdir, task="autoencoder") as run:
            step = run.step(step)
            params = run.params(step)["autoencoder"]
            vae = nnx.merge(run.graphdef["autoencoder"], params)
            config = AutoencoderConfig.from_section(run.config.autoencoder)
        return cls(vae, config, os.fspath(workdir), step)

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
        video = jnp.asarray(pixels_to_model(frames[:t, top : top + h, left : left + w])[None])
        if self.tile is not None and max(h, w) > self.tile:
            overlap, margin = self.tiling()
            posterior = encode_tiled(self.vae, video, self.tile, overlap, margin, self.chunk_frames)
        else:
            posterior = encode_chunked(self.vae, video, self.chunk_frames)
        return np.asarray(posterior.mean[0])

    def tiling(self) -> tuple[int, int]:
        """``(overlap, margin)`` in pixels of ``tile``-pixel tiles: the margin that makes tiles exact
        (:func:`~sora_jax.autoencoder.streaming.safe_margin`) and the least overlap beyond it.

        Raises:
            ValueError: ``tile`` is not a multiple of ``fs`` or too small for that margin.
        """
        fs, margin = self.config.spatial_factor, safe_margin(self.vae)
        overlap = 2 * margin + fs
        if self.tile is None or self.tile % fs or 2 * overlap > self.tile:
            raise ValueError(
                f"tile {self.tile}: needs a multiple of {fs} pixels of at least {2 * overlap} "
                f"(an overlap of {overlap} around this autoencoder's {margin}-pixel reach)"
            )
        return overlap, margin

    def decode(self, latents: np.ndarray, chunk_latents: int | None = None) -> np.ndarray:
        """``[T', H', W', z]`` latents -> uint8 video ``[1 + ft (T' - 1), H' fs, W' fs, 3]``."""
        return model_to_pixels(
            decode_chunked(self.vae, jnp.asarray(latents, jnp.float32)[None], chunk_latents)[0]
        )
