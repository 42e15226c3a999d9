"""The Wan VAE of a diffusers Wan directory, behind the interface of sora_jax's trained autoencoders.

    vae = WanAutoencoder.load("Wan2.1-T2V-1.3B-Diffusers")    # its vae/ folder (or a vae folder)
    latents = vae.encode(frames_uint8)                        # [T, H, W, 3] -> [T', H', W', 16]
    video = vae.decode(latents)                               # -> uint8 [1 + 4 (T' - 1), 8 H', 8 W', 3]

``sora-jax encode --autoencoder WAN_DIR`` caches Wan latents with it, and a Wan run's samples are
decoded by it (:mod:`sora_jax.autoencoder.latent_space`), exactly as a run's own autoencoder
(:class:`~sora_jax.autoencoder.trained.TrainedAutoencoder`) is used. One difference: the latent
statistics. A pretrained Wan transformer expects latents normalised by the per-channel mean and
standard deviation in the VAE's config (Wan's own), not by statistics of a new store, so the
store records those (:meth:`WanAutoencoder.latent_stats`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from sora_jax.autoencoder.config import latent_shape
from sora_jax.data.pipeline import model_to_pixels, pixels_to_model
from sora_jax.wan.vae import WanVAE


def is_wan_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a diffusers Wan directory (``vae/`` with an ``AutoencoderKLWan``) or a
    Wan VAE folder itself, rather than the workdir of a sora_jax autoencoder run."""
    directory = Path(os.fspath(path)).expanduser()
    for config in (directory / "vae" / "config.json", directory / "config.json"):
        if config.is_file() and '"AutoencoderKLWan"' in config.read_text(encoding="utf-8"):
            return True
    return False


@dataclasses.dataclass(frozen=True)
class LatentGeometry:
    """How the VAE's latents sit in pixels: the part of an autoencoder config a latent DiT reads."""

    temporal_factor: int
    spatial_factor: int
    latent_channels: int

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(T', H', W', z)`` of a ``frames x height x width`` clip (ValueError if it has none)."""
        return latent_shape(
            frames, height, width, self.temporal_factor, self.spatial_factor, self.latent_channels
        )


@dataclasses.dataclass
class WanAutoencoder:
    """A pretrained Wan VAE in ``directory``, with TrainedAutoencoder's encode/decode interface."""

    vae: WanVAE
    directory: str
    chunk_frames: int | None = None  # Frames per encoder call after the first (a multiple of 4).
    tile: int | None = None  # Spatial tiling is not offered for the Wan VAE (see tiling()).

    @classmethod
    def load(cls, directory: str | os.PathLike, step: int | None = None) -> WanAutoencoder:
        """The VAE of a Wan directory; ``step`` must be None (pretrained weights have no steps).

        Raises:
            ConfigError: a missing or unreadable ``vae/``, or a step asked of it.
        """
        from sora_jax.errors import ConfigError
        from sora_jax.wan.vae_weights import load_vae

        if step is not None:
            raise ConfigError(f"--step {step}: {directory} is a pretrained Wan VAE, which has no steps")
        return cls(load_vae(directory), os.fspath(directory))

    @property
    def config(self) -> LatentGeometry:
        c = self.vae.config
        return LatentGeometry(c.temporal_factor, c.spatial_factor, c.z_dim)

    # The workdir attribute of a run's autoencoder: where it came from.
    @property
    def workdir(self) -> str:
        return self.directory

    def describe(self) -> dict[str, Any]:
        """What a latent store records about the VAE that made it (a Wan run checks the name)."""
        c = self.config
        return {
            "name": Path(self.directory.rstrip("/")).name,
            "kind": "wan",
            "temporal_factor": c.temporal_factor,
            "spatial_factor": c.spatial_factor,
            "latent_channels": c.latent_channels,
        }

    def latent_stats(self) -> dict[str, Any]:
        """Wan's own per-channel latent mean and std (what the pretrained transformer was trained on)."""
        c = self.vae.config
        return {"mean": list(c.latents_mean), "std": list(c.latents_std), "clips": 0, "source": "vae config"}

    def usable_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The largest ``(1 + 4 k, 8 h, 8 w)`` within a clip's shape; ValueError below one latent."""
        ft, fs = self.config.temporal_factor, self.config.spatial_factor
        if height < fs or width < fs or frames < 1:
            raise ValueError(
                f"a {frames}x{height}x{width} clip is smaller than one latent ({fs}x{fs} pixels)"
            )
        return 1 + (frames - 1) // ft * ft, height // fs * fs, width // fs * fs

    def tiling(self) -> tuple[int, int]:
        raise ValueError("the Wan VAE encodes whole frames (its attention block sees the whole frame)")

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` -> posterior mean ``[T', H', W', z]`` float32 (frames beyond
        ``1 + 4 k`` dropped, H and W centre-cropped to multiples of 8)."""
        t, h, w = self.usable_shape(*frames.shape[:3])
        top, left = (frames.shape[1] - h) // 2, (frames.shape[2] - w) // 2
        video = jnp.asarray(pixels_to_model(frames[:t, top : top + h, left : left + w])[None])
        mean, _ = self.vae.encode(video, self.chunk_frames or 4)
        return np.asarray(mean[0])

    def decode(self, latents: np.ndarray, chunk_latents: int | None = None) -> np.ndarray:
        """``[T', H', W', z]`` latents -> uint8 video ``[1 + 4 (T' - 1), 8 H', 8 W', 3]``."""
        video = self.vae.decode(jnp.asarray(latents, jnp.float32)[None], chunk_latents or 1)
        return model_to_pixels(np.asarray(video[0]))
