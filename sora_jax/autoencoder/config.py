"""The video autoencoder's settings: one frozen dataclass, built from the config's ``autoencoder`` section.

:func:`autoencoder_section` is the section with every key, its default and its meaning (the base config
mounts it as ``config.autoencoder``); :meth:`AutoencoderConfig.from_section` turns it into the hashable
dataclass the modules keep as static structure, after :meth:`AutoencoderConfig.validate`.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from sora_jax.errors import ConfigError

NORMS = ("rms", "group")
RECONSTRUCTION_LOSSES = ("l1", "mse")


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and losses of the causal 3D convolutional VAE (defaults: 4x8x8 compression, 16 latents).

    Levels: ``len(channel_multipliers)`` resolutions; between consecutive levels the encoder halves
    height and width, and also time where ``temporal_downsample`` says so. Hence
    ``spatial_factor = 2 ** (levels - 1)`` and ``temporal_factor = 2 ** sum(temporal_downsample)``.
    """

    # --- architecture ---------------------------------------------------------------------------
    image_channels: int = 3
    channels: int = 96  # Width of the first level; level i has channels * channel_multipliers[i].
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 4)
    blocks_per_level: int = 2  # Residual blocks per encoder level (the decoder has one more per level).
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # Per level transition, shallow first.
    latent_channels: int = 16
    # Normalisation inside residual blocks, always within one frame so that time chunks are exact:
    # rms: RMS over the channels of each pixel (as Wan 2.1's VAE); purely local, so spatial tiles are
    #      exact too once their overlap covers the receptive field.
    # group: GroupNorm over each frame's pixels and channel groups; statistics span the whole frame,
    #      so spatial tiles are only approximately equal to the whole frame.
    norm: str = "rms"
    groups: int = 32  # Channel groups of the group norm (every level's width must divide by it).
    dtype: str = "float32"  # Compute dtype: float32 | bfloat16. Norms run in float32.
    param_dtype: str = "float32"

    # --- losses ---------------------------------------------------------------------------------
    reconstruction_loss: str = "l1"  # l1 | mse, a mean over pixels and channels.
    # Weight of the KL to N(0, I), a mean over latent elements. Under the sum convention of the
    # Stable Diffusion / taming losses a weight w corresponds to w * latent elements / pixel elements
    # here (w / 48 at 4x8x8 compression with 16 latents and 3 colours).
    kl_weight: float = 1e-6
    # --- patch discriminator (hinge GAN), off until disc_start -----------------------------------
    disc_weight: float = 0.0  # Weight of the generator's adversarial loss; 0 disables the GAN.
    disc_start: int = 0  # Step from which the adversarial loss counts.
    disc_channels: int = 64  # Width of the first discriminator layer (doubles per layer, up to 8x).
    disc_layers: int = 3  # Stride-2 layers; each logit sees a patch of 70 pixels at 3 layers.
    disc_time_kernel: int = 1  # 1: per-frame 2D PatchGAN; odd k > 1: 3D, k frames per kernel.
    # The discriminator's own optimizer settings (the autoencoder's are the optim section's):
    disc_lr: float = 0.0  # Peak learning rate; 0: optim.lr.
    disc_grad_clip: float = 1.0  # Global-norm clipping of its gradient alone; 0 disables.
    disc_weight_decay: float = 0.0  # Decoupled weight decay of its matrices.

    @property
    def levels(self) -> int:
        return len(self.channel_multipliers)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (self.levels - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.channels * m for m in self.channel_multipliers)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(T', H', W', z)`` of the latents of a ``frames x height x width`` clip (checked to fit)."""
        return latent_shape(
            frames, height, width, self.temporal_factor, self.spatial_factor, self.latent_channels
        )

    @classmethod
    def from_section(cls, section: ml_collections.ConfigDict) -> AutoencoderConfig:
        """The dataclass of a config's ``autoencoder`` section (validated)."""
        values = {
            key: tuple(value) if isinstance(value, list | tuple) else value
            for key, value in section.to_dict().items()
        }
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raises ConfigError naming the first ``autoencoder.*`` key that cannot work."""

        def fail(key: str, problem: str) -> None:
            raise ConfigError(f"config key 'autoencoder.{key}': {problem}")

        if self.levels < 1 or min(self.channel_multipliers) < 1 or self.channels < 1:
            fail("channel_multipliers", "needs at least one level and positive widths")
        if len(self.temporal_downsample) != self.levels - 1:
            fail("temporal_downsample", f"needs one flag per level transition ({self.levels - 1})")
        for key in ("blocks_per_level", "latent_channels", "image_channels", "disc_channels", "disc_layers"):
            if getattr(self, key) < 1:
                fail(key, f"must be at least 1, got {getattr(self, key)}")
        if self.norm not in NORMS:
            fail("norm", f"{self.norm!r} is not one of {', '.join(NORMS)}")
        if self.norm == "group" and any(c % self.groups for c in self.level_channels):
            fail("groups", f"every level width {self.level_channels} must divide by {self.groups}")
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            fail("reconstruction_loss", f"{self.reconstruction_loss!r} is not one of l1, mse")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in ("float32", "bfloat16"):
                fail(key, f"{getattr(self, key)!r} is not one of float32, bfloat16")
        if self.disc_time_kernel < 1 or self.disc_time_kernel % 2 == 0:
            fail("disc_time_kernel", f"must be odd and positive, got {self.disc_time_kernel}")
        if self.kl_weight < 0 or self.disc_weight < 0:
            fail("kl_weight", "loss weights must not be negative")
        for key in ("disc_lr", "disc_grad_clip", "disc_weight_decay"):
            if getattr(self, key) < 0:
                fail(key, f"must be >= 0, got {getattr(self, key)}")


def autoencoder_section() -> ml_collections.ConfigDict:
    """Every ``autoencoder`` key with its default; comments are on :class:`AutoencoderConfig`'s fields."""
    return ml_collections.ConfigDict(dataclasses.asdict(AutoencoderConfig()))


def tiny_config(**changes: object) -> AutoencoderConfig:
    """A CPU-sized VAE: 2x4x4 compression, 4 latents, 8 to 16 channels (tests and local experiments).

    Per-frame GroupNorm: at 8 channels it learns several times faster than the per-pixel RMS norm
    (one image, 125 Adam steps: 31 dB against 20 dB); tiny frames need no exact tiling.
    """
    tiny = AutoencoderConfig(
        channels=8,
        channel_multipliers=(1, 2, 2),
        blocks_per_level=1,
        temporal_downsample=(False, True),
        latent_channels=4,
        norm="group",
        groups=4,
        disc_channels=8,
        disc_layers=2,
    )
    tiny = dataclasses.replace(tiny, **changes)
    tiny.validate()
    return tiny


def latent_shape(
    frames: int, height: int, width: int, temporal_factor: int, spatial_factor: int, channels: int
) -> tuple[int, int, int, int]:
    """``(T', H', W', z)`` of the latents of a causal video autoencoder that keeps the first frame and
    compresses ``temporal_factor`` frames after it into each latent frame, ``spatial_factor`` pixels
    a side into each latent pixel. ValueError for a clip that is not ``1 + ft k`` frames of
    multiples of ``fs``."""
    ft, fs = temporal_factor, spatial_factor
    if frames < 1 or (frames - 1) % ft:
        raise ValueError(f"{frames} frames: a clip needs 1 + {ft} * k frames")
    if height % fs or width % fs:
        raise ValueError(f"{height}x{width}: height and width must be multiples of {fs}")
    return 1 + (frames - 1) // ft, height // fs, width // fs, channels
