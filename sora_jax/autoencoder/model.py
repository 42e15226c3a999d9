"""The causal video VAE: an encoder to a diagonal Gaussian over latents, and a decoder mirroring it.

Videos are ``[B, T, H, W, C]`` in [-1, 1] with ``T = 1 + ft * k`` frames and ``H, W`` multiples of
``fs``; latents are ``[B, 1 + k, H / fs, W / fs, z]``. The first frame is encoded on its own, so an
image (``T = 1``) is a one-frame video with one latent frame, in the same latent space.

Causality, exactly: latent frame 0 depends on frame 0 only, latent frame ``j >= 1`` on frames
``0 .. j * ft``. Decoded frame 0 depends on latent frame 0 only, frame ``f >= 1`` on latent frames
``0 .. ceil(f / ft)``.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.autoencoder.config import AutoencoderConfig
from sora_jax.autoencoder.layers import (
    CausalConv3d,
    Downsample,
    FrameCache,
    FrameNorm,
    ResBlock,
    Upsample,
    initialise,
)

MID_BLOCKS = 2  # Residual blocks at the lowest resolution, in encoder and decoder alike.


@flax.struct.dataclass
class DiagonalGaussian:
    """The posterior over latents: ``mean`` and ``logvar``, both ``[B, T', H', W', z]`` float32."""

    mean: jax.Array
    logvar: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + jnp.exp(0.5 * self.logvar) * noise

    def kl(self) -> jax.Array:
        """KL to the standard normal per latent element, ``[B, T', H', W', z]`` (nats)."""
        return 0.5 * (jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar)


class Level(nnx.Module):
    """Residual blocks at one resolution, then the resampling to the next level (if any)."""

    def __init__(self, blocks: list[ResBlock], resample: Downsample | Upsample | None) -> None:
        self.blocks = nnx.List(blocks)
        self.resample = resample

    def __call__(self, x_bthwc: jax.Array, cache: FrameCache) -> jax.Array:
        for block in self.blocks:
            x_bthwc = block(x_bthwc, cache)
        return self.resample(x_bthwc, cache) if self.resample is not None else x_bthwc


class Encoder(nnx.Module):
    def __init__(self, config: AutoencoderConfig, rngs: nnx.Rngs) -> None:
        widths = config.level_channels
        kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
        self.conv_in = CausalConv3d(config.image_channels, widths[0], (3, 3, 3), rngs, **kw)
        levels, width = [], widths[0]
        for level, level_width in enumerate(widths):
            blocks = []
            for _ in range(config.blocks_per_level):
                blocks.append(ResBlock(width, level_width, config, rngs))
                width = level_width
            last = level == config.levels - 1
            down = None if last else Downsample(width, config.temporal_downsample[level], config, rngs)
            levels.append(Level(blocks, down))
        self.levels = nnx.List(levels)
        self.mid = Level([ResBlock(width, width, config, rngs) for _ in range(MID_BLOCKS)], None)
        self.norm_out = FrameNorm(width, config, rngs)
        self.conv_out = CausalConv3d(width, 2 * config.latent_channels, (3, 3, 3), rngs, **kw)

    def __call__(self, video_bthwc: jax.Array, cache: FrameCache) -> jax.Array:
        """Video ``[B, T, H, W, C]`` -> moments ``[B, T', H', W', 2z]`` (mean, then logvar)."""
        x = self.conv_in(video_bthwc, cache)
        for level in self.levels:
            x = level(x, cache)
        x = self.mid(x, cache)
        return self.conv_out(jax.nn.silu(self.norm_out(x)), cache)


class Decoder(nnx.Module):
    def __init__(self, config: AutoencoderConfig, rngs: nnx.Rngs) -> None:
        widths = config.level_channels
        kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
        width = widths[-1]
        self.conv_in = CausalConv3d(config.latent_channels, width, (3, 3, 3), rngs, **kw)
        self.mid = Level([ResBlock(width, width, config, rngs) for _ in range(MID_BLOCKS)], None)
        levels = []
        for level in reversed(range(config.levels)):
            blocks = []
            for _ in range(config.blocks_per_level + 1):
                blocks.append(ResBlock(width, widths[level], config, rngs))
                width = widths[level]
            # Undoes the encoder's transition from level - 1 to level.
            up = Upsample(width, config.temporal_downsample[level - 1], config, rngs) if level else None
            levels.append(Level(blocks, up))
        self.levels = nnx.List(levels)
        self.norm_out = FrameNorm(width, config, rngs)
        self.conv_out = CausalConv3d(width, config.image_channels, (3, 3, 3), rngs, **kw)

    def __call__(self, latents_bthwz: jax.Array, cache: FrameCache) -> jax.Array:
        """Latents ``[B, T', H', W', z]`` -> video ``[B, T, H, W, C]`` (unbounded; ~[-1, 1])."""
        x = self.mid(self.conv_in(latents_bthwz, cache), cache)
        for level in self.levels:
            x = level(x, cache)
        return self.conv_out(jax.nn.silu(self.norm_out(x)), cache)


class VideoAutoencoder(nnx.Module):
    """Causal 3D convolutional VAE (Wan 2.1 / HunyuanVideo / CogVideoX family, without attention).

    ``encode`` and ``decode`` take an optional :class:`FrameCache` to continue a video chunk by chunk;
    ``sora_jax.autoencoder.streaming`` drives them over time chunks and spatial tiles.
    """

    def __init__(self, config: AutoencoderConfig, rngs: nnx.Rngs) -> None:
        config.validate()
        self.config = config  # Frozen dataclass: static, part of the graph definition.
        self.encoder = Encoder(config, rngs)
        self.decoder = Decoder(config, rngs)

    def encode(self, video_bthwc: jax.Array, cache: FrameCache | None = None) -> DiagonalGaussian:
        """Video ``[B, T, H, W, C]`` in [-1, 1] -> posterior over latents ``[B, T', H', W', z]``.

        Whole videos: ``T = 1 + ft * k``. With a continuing ``cache``: ``T`` a multiple of ``ft``.
        """
        cache = cache if cache is not None else FrameCache()
        moments = self.encoder(video_bthwc.astype(jnp.dtype(self.config.dtype)), cache)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        # Bounded as in Stable Diffusion's VAE: exp(logvar) neither overflows nor vanishes.
        return DiagonalGaussian(mean, jnp.clip(logvar, -30.0, 20.0))

    def decode(self, latents_bthwz: jax.Array, cache: FrameCache | None = None) -> jax.Array:
        """Latents ``[B, T', H', W', z]`` -> video ``[B, 1 + ft (T' - 1), H, W, C]`` float32.

        With a continuing ``cache`` (not the first latent frame): ``ft * T'`` frames.
        """
        cache = cache if cache is not None else FrameCache()
        video = self.decoder(latents_bthwz.astype(jnp.dtype(self.config.dtype)), cache)
        return video.astype(jnp.float32)

    def __call__(self, video_bthwc: jax.Array, key: jax.Array) -> tuple[jax.Array, DiagonalGaussian]:
        """Reconstruction of ``video`` through a latent sample drawn with ``key``, and the posterior."""
        posterior = self.encode(video_bthwc)
        return self.decode(posterior.sample(key)), posterior


def build_autoencoder(config: AutoencoderConfig, seed: int) -> VideoAutoencoder:
    """A freshly initialised VAE (parameters carry logical axis names as metadata)."""
    return initialise(lambda: VideoAutoencoder(config, nnx.Rngs(params=seed)))


def spatial_reach(config: AutoencoderConfig) -> tuple[int, int]:
    """How far, in pixels, spatial information travels through (encoder, decoder); an upper bound.

    Encoder: a latent pixel depends on input pixels at most this far beyond its own ``fs x fs``
    patch. Decoder: an output pixel depends on latents whose patches come at most this close.
    Spatial tiles whose blending ignores this many pixels next to a cut are exact (``norm="rms"``).
    """
    fs = config.spatial_factor
    scale, encoder = 1, 1  # Pixels per cell at the current level; conv_in reaches one cell.
    for level in range(config.levels):
        encoder += 2 * config.blocks_per_level * scale
        if level < config.levels - 1:
            encoder += scale  # The stride-2 conv sees one input cell past its own two.
            scale *= 2
    encoder += 2 * MID_BLOCKS * scale + scale  # Mid blocks and conv_out at the latent scale.

    scale, decoder = fs, fs + 2 * MID_BLOCKS * fs  # conv_in and mid blocks on latent cells.
    for level in reversed(range(config.levels)):
        decoder += 2 * (config.blocks_per_level + 1) * scale
        if level > 0:
            # A pixel of the finer grid inherits its parent's reach plus up to half a parent cell,
            # then the 3x3 conv after the upsampling reaches one finer cell.
            decoder += scale // 2 + scale // 2
            scale //= 2
    return encoder, decoder + 1  # conv_out reaches one pixel.
