"""The space a DiT generates in: pixels, or the latents of the autoencoder that made its store.

    space = model_space(config)       # PixelSpace, or LatentSpace for a latent run
    space.model_shape(17, 64, 64)     # video shape -> the shape the DiT generates, e.g. (5, 8, 8)
    space.pixel_shape(5, 8, 8)        # and back: (17, 64, 64)
    space.to_model(frames_uint8)      # uint8 [T, H, W, 3] -> model units [T', H', W', C]
    space.to_pixels(model_units)      # model units -> uint8 video

A latent space is one object: the autoencoder at the step whose weights encoded the store (the
store records it, :data:`~sora_jax.data.clip_store.AUTOENCODER_KEY`; a later checkpoint of the
same run would decode other weights' latents), the store's per-channel latent statistics (latents
are normalised by them for the DiT), and the shapes pixels and latents have in each other.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from sora_jax.autoencoder.trained import TrainedAutoencoder
from sora_jax.data.clip_store import AUTOENCODER_KEY, STATS_KEY
from sora_jax.data.pipeline import model_to_pixels, pixels_to_model
from sora_jax.data.shards import open_clips
from sora_jax.errors import ConfigError


class PixelSpace:
    """A pixel DiT's space: model units are pixels in [-1, 1], a frame for a frame."""

    temporal_factor = 1  # Video frames a model frame stands for (after the first).

    def model_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames, height, width

    def pixel_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames, height, width

    def whole_frames(self, frames: int) -> int:
        """The most video frames, up to ``frames``, that map to whole model frames."""
        return frames

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` -> float32 ``[T, H, W, 3]`` in [-1, 1]."""
        return pixels_to_model(pixels)

    def to_pixels(self, values: np.ndarray) -> np.ndarray:
        """Model units ``[T, H, W, 3]`` -> uint8 video."""
        return model_to_pixels(values)


@dataclasses.dataclass
class LatentSpace:
    """A latent DiT's space: the autoencoder's latents, normalised per channel by ``mean`` and ``std``."""

    autoencoder: TrainedAutoencoder  # Or a pretrained WanAutoencoder: the same interface.
    mean: np.ndarray  # [C] float32
    std: np.ndarray  # [C] float32

    @classmethod
    def of_run(cls, config: ml_collections.ConfigDict) -> LatentSpace:
        """The latent space of a latent run's store (``data.store``, made by ``sora-jax encode``
        with ``model.autoencoder``), its autoencoder restored at the step the store records.

        Raises:
            ConfigError: the store lacks its statistics or record, or the autoencoder run lacks
                that step.
        """
        try:
            store = open_clips(config.data.store)
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"config key 'data.store': {error}") from None
        stats, made_by = store.extra.get(STATS_KEY), store.extra.get(AUTOENCODER_KEY)
        if stats is None or made_by is None:
            raise ConfigError(
                f"config key 'data.store': {config.data.store} has no finished latent encoding "
                "(rerun sora-jax encode to complete it)"
            )
        autoencoder = load_autoencoder(config.model.autoencoder, made_by.get("step"))
        return cls(autoencoder, np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32))

    @property
    def temporal_factor(self) -> int:
        return self.autoencoder.config.temporal_factor

    def model_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The latent shape of a ``frames x height x width`` video (ValueError if it has none)."""
        return self.autoencoder.config.latent_shape(frames, height, width)[:3]

    def pixel_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The video shape of ``frames x height x width`` latents."""
        c = self.autoencoder.config
        return 1 + c.temporal_factor * (frames - 1), height * c.spatial_factor, width * c.spatial_factor

    def whole_frames(self, frames: int) -> int:
        """The most video frames, up to ``frames``, that encode to whole latent frames: ``1 + ft k``."""
        return 1 + (max(frames, 1) - 1) // self.temporal_factor * self.temporal_factor

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` -> normalised latents ``[T', H', W', C]`` (see
        :meth:`TrainedAutoencoder.encode` for frames and pixels past whole latents)."""
        return (self.autoencoder.encode(pixels) - self.mean) / self.std

    def to_pixels(self, values: np.ndarray) -> np.ndarray:
        """Normalised latents ``[T', H', W', C]`` -> uint8 video ``[1 + ft (T' - 1), H, W, 3]``."""
        return self.autoencoder.decode(values * self.std + self.mean)


VideoSpace = PixelSpace | LatentSpace


def load_autoencoder(path: str, step: int | None = None) -> TrainedAutoencoder:
    """The autoencoder at ``path``: a diffusers Wan directory's pretrained VAE, or the EMA weights of
    checkpoint ``step`` of a sora_jax autoencoder run."""
    from sora_jax.wan.autoencoder import WanAutoencoder, is_wan_directory

    if is_wan_directory(path):
        return WanAutoencoder.load(path)
    return TrainedAutoencoder.load(path, step)


def model_space(config: ml_collections.ConfigDict) -> VideoSpace:
    """The space a DiT run generates in: latents when ``model.autoencoder`` is set, else pixels."""
    return LatentSpace.of_run(config) if config.model.autoencoder else PixelSpace()
