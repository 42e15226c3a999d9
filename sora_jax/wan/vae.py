"""The Wan 2.1 video autoencoder (diffusers' ``AutoencoderKLWan``), channels-last, in time chunks.

Videos are ``[B, T, H, W, C]`` in [-1, 1] with ``T = 1 + 4 k`` frames and ``H, W`` multiples of 8;
latents are ``[B, 1 + k, H / 8, W / 8, z]`` (the factors follow the config: 2 per temporal or
spatial downsampling). Encoding and decoding run the way diffusers runs them, so results agree to
float rounding: the encoder sees frame 0 alone, then 4 frames at a time; the decoder one latent
frame at a time. Between chunks, each causal convolution hands on the frames it still needs (a
tuple of arrays, the ``past`` of :meth:`WanVAE.encode_chunk` and :meth:`WanVAE.decode_chunk`), so
activation memory is that of one chunk whatever the clip's length, and one compiled program serves
every chunk of a shape.

What differs from sora_jax's own VAE (``sora_jax.autoencoder``), whose causal convolution this
reuses: time is zero-padded before frame 0 (not padded with copies of it); the norms are Wan's
``F.normalize(x) * sqrt(C) * gamma`` (an L2 norm over channels, no mean of squares, no epsilon
inside the root); the first chunk skips the temporal resampling (the encoder keeps frame 0 whole
instead of striding over it; the decoder emits one frame for latent frame 0, and its later temporal
upsamplings see zeros, not latent frame 0, as their past), which is why a clip must start with a
first chunk of exactly one frame (latent frame).

Parameters carry logical axis names as metadata: convolution kernels
``(None, None, None, "conv_in", "conv_out")`` (``sora_jax.autoencoder.layers.KERNEL_AXES``), biases
``("conv_out",)``, norm scales ``(None,)``. Names absent from ``mesh.rules`` are replicated, which
suits a VAE of ~130 M parameters (Wan 2.1's) that is only run, never trained, here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.autoencoder.layers import CausalConv3d, FrameCache
from sora_jax.errors import ConfigError
from sora_jax.wan.vae_config import WanVAEConfig, positive_int

Past = tuple[jax.Array, ...]


class WanFrameCache(FrameCache):
    """:class:`~sora_jax.autoencoder.layers.FrameCache` with Wan's start: zero frames before frame 0.

    diffusers' ``feat_cache`` keeps, per causal convolution, the last ``CACHE_T = 2`` frames of its
    (zero-padded) input stream; that is what ``saved`` holds here, in call order. :meth:`record`
    keeps what a resampling layer hands on at the first chunk, where it skips its time convolution.
    """

    def extend(self, x_bthwc: jax.Array, pad: int, keep: int) -> jax.Array:
        if self.at_start:
            zeros = jnp.zeros((x_bthwc.shape[0], pad, *x_bthwc.shape[2:]), x_bthwc.dtype)
            return super().extend(jnp.concatenate([zeros, x_bthwc], axis=1), 0, keep)
        return super().extend(x_bthwc, pad, keep)

    def record(self, frames_bthwc: jax.Array) -> None:
        self.saved.append(frames_bthwc)


class RMSNorm(nnx.Module):
    """Wan's ``RMS_norm``: ``x / max(|x|, 1e-12) * sqrt(C) * gamma`` over channels, in float32.

    (Wan 2.1 builds every one of these without the optional bias.)
    """

    def __init__(self, channels: int, dtype: jnp.dtype) -> None:
        self.gamma = nnx.Param(jnp.ones((channels,), dtype), out_sharding=(None,))
        self.scale = math.sqrt(channels)

    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        x32 = x_bthwc.astype(jnp.float32)
        length = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
        normalized = (x32 / jnp.maximum(length, 1e-12)).astype(x_bthwc.dtype)
        return normalized * self.scale * self.gamma[...].astype(x_bthwc.dtype)


def _conv(
    in_channels: int, out_channels: int, kernel: tuple[int, int, int], dtype: jnp.dtype, rngs: nnx.Rngs, **kw
) -> CausalConv3d:
    return CausalConv3d(in_channels, out_channels, kernel, rngs, dtype=dtype, param_dtype=dtype, **kw)


class ResidualBlock(nnx.Module):
    """norm -> SiLU -> causal 3x3x3 conv, twice, plus a (1x1x1-projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        self.norm1 = RMSNorm(in_channels, dtype)
        self.conv1 = _conv(in_channels, out_channels, (3, 3, 3), dtype, rngs)
        self.norm2 = RMSNorm(out_channels, dtype)
        self.conv2 = _conv(out_channels, out_channels, (3, 3, 3), dtype, rngs)
        self.conv_shortcut = (
            _conv(in_channels, out_channels, (1, 1, 1), dtype, rngs) if in_channels != out_channels else None
        )

    def __call__(self, x_bthwc: jax.Array, cache: WanFrameCache) -> jax.Array:
        skip = self.conv_shortcut(x_bthwc, cache) if self.conv_shortcut is not None else x_bthwc
        h = self.conv1(jax.nn.silu(self.norm1(x_bthwc)), cache)
        h = self.conv2(jax.nn.silu(self.norm2(h)), cache)
        return h + skip


class AttentionBlock(nnx.Module):
    """Single-head self-attention among the pixels of each frame (no mixing across time)."""

    def __init__(self, channels: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        self.norm = RMSNorm(channels, dtype)
        self.to_qkv = _conv(channels, 3 * channels, (1, 1, 1), dtype, rngs)
        self.proj = _conv(channels, channels, (1, 1, 1), dtype, rngs)

    def __call__(self, x_bthwc: jax.Array, cache: WanFrameCache) -> jax.Array:
        b, t, h, w, c = x_bthwc.shape
        qkv = self.to_qkv(self.norm(x_bthwc), cache).reshape(b * t, h * w, 3 * c)
        q_blc, k_blc, v_blc = jnp.split(qkv, 3, axis=-1)
        logits = jnp.einsum("bqc,bkc->bqk", q_blc, k_blc, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(c), axis=-1).astype(v_blc.dtype)
        attended = jnp.einsum("bqk,bkc->bqc", weights, v_blc).reshape(b, t, h, w, c)
        return self.proj(attended, cache) + x_bthwc


class MidBlock(nnx.Module):
    """Residual block, attention, residual block: the lowest resolution of encoder and decoder."""

    def __init__(self, channels: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        self.resnets = nnx.List([ResidualBlock(channels, channels, dtype, rngs) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(channels, dtype, rngs)])

    def __call__(self, x_bthwc: jax.Array, cache: WanFrameCache) -> jax.Array:
        x_bthwc = self.resnets[0](x_bthwc, cache)
        return self.resnets[1](self.attentions[0](x_bthwc, cache), cache)


class Resample(nnx.Module):
    """Halve (``down``) or double (``up``) height and width, and with ``temporal`` time too.

    Down: a stride-2 3x3 conv per frame (zero row and column after the frame, none before), then
    in time a causal conv of 3 frames at stride 2 over the previous chunk's last frame and this
    chunk's. Up: in time, a causal conv making two frames of each, then nearest 2x and a 3x3 conv
    to ``channels / 2``. At the first chunk the time conv is skipped (see the module docstring).
    """

    def __init__(self, channels: int, up: bool, temporal: bool, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        self.up = up
        if up:
            self.resample = _conv(channels, channels // 2, (1, 3, 3), dtype, rngs)
            self.time_conv = _conv(channels, 2 * channels, (3, 1, 1), dtype, rngs) if temporal else None
        else:
            self.resample = _conv(
                channels, channels, (1, 3, 3), dtype, rngs, stride=(1, 2, 2), spatial_padding=(0, 1)
            )
            self.time_conv = (
                _conv(channels, channels, (3, 1, 1), dtype, rngs, stride=(2, 1, 1)) if temporal else None
            )

    def __call__(self, x_bthwc: jax.Array, cache: WanFrameCache) -> jax.Array:
        if not self.up:
            x_bthwc = self.resample(x_bthwc, cache)
            if self.time_conv is None:
                return x_bthwc
            if cache.at_start:  # Frame 0 passes whole; it is the next chunk's past.
                cache.record(x_bthwc[:, -1:])
                return x_bthwc
            return self.time_conv(x_bthwc, cache)
        if self.time_conv is not None:
            if cache.at_start:  # Latent frame 0 makes one frame; the next chunk's past is zeros.
                cache.record(jnp.zeros((x_bthwc.shape[0], 2, *x_bthwc.shape[2:]), x_bthwc.dtype))
            else:
                pairs = self.time_conv(x_bthwc, cache)
                b, t, h, w, c2 = pairs.shape
                # [B, T, H, W, 2C] -> [B, T, 2, H, W, C] -> [B, 2T, H, W, C]: frame j makes 2j, 2j + 1.
                x_bthwc = pairs.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
                x_bthwc = x_bthwc.reshape(b, 2 * t, h, w, c2 // 2)
        x_bthwc = jnp.repeat(jnp.repeat(x_bthwc, 2, axis=2), 2, axis=3)
        return self.resample(x_bthwc, cache)


class Encoder(nnx.Module):
    """Video -> ``2 z`` channels (mean and log-variance) at ``1 / 8`` size and ``1 / 4`` rate.

    ``down_blocks`` is one flat list in diffusers' order: per level, ``num_res_blocks`` residual
    blocks, then a resampling except after the last level.
    """

    def __init__(self, config: WanVAEConfig, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        widths = [config.base_dim * m for m in (1, *config.dim_mult)]
        self.conv_in = _conv(config.in_channels, widths[0], (3, 3, 3), dtype, rngs)
        blocks: list[nnx.Module] = []
        levels = len(config.dim_mult)
        for level, (width_in, width) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(width_in, width, dtype, rngs))
                width_in = width
            if level < levels - 1:
                blocks.append(Resample(width, False, config.temperal_downsample[level], dtype, rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(widths[-1], dtype, rngs)
        self.norm_out = RMSNorm(widths[-1], dtype)
        self.conv_out = _conv(widths[-1], 2 * config.z_dim, (3, 3, 3), dtype, rngs)

    def __call__(self, video_bthwc: jax.Array, cache: WanFrameCache) -> jax.Array:
        x = self.conv_in(video_bthwc, cache)
        for block in self.down_blocks:
            x = block(x, cache)
        x = self.mid_block(x, cache)
        return self.conv_out(jax.nn.silu(self.norm_out(x)), cache)


class UpBlock(nnx.Module):
    """``num_res_blocks + 1`` residual blocks, then (except at the last level) a resampling."""

    def __init__(
        self,
        width_in: int,
        width: int,
        blocks: int,
        resample: Resample | None,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ) -> None:
        self.resnets = nnx.List(
            [ResidualBlock(width_in if i == 0 else width, width, dtype, rngs) for i in range(blocks)]
        )
        self.upsamplers = nnx.List([resample]) if resample is not None else None

    def __call__(self, x_bthwc: jax.Array, cache: WanFrameCache) -> jax.Array:
        for block in self.resnets:
            x_bthwc = block(x_bthwc, cache)
        return self.upsamplers[0](x_bthwc, cache) if self.upsamplers is not None else x_bthwc


class Decoder(nnx.Module):
    """Latents (``z`` channels) -> video, mirroring the encoder."""

    def __init__(self, config: WanVAEConfig, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        mult = config.dim_mult
        widths = [config.decoder_base_dim * m for m in (mult[-1], *reversed(mult))]
        temporal = tuple(reversed(config.temperal_downsample))
        self.conv_in = _conv(config.z_dim, widths[0], (3, 3, 3), dtype, rngs)
        self.mid_block = MidBlock(widths[0], dtype, rngs)
        blocks = []
        for level, (width_in, width) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            # Every upsampling halves the width it was given, so later levels start at half.
            width_in = width_in // 2 if level > 0 else width_in
            up = Resample(width, True, temporal[level], dtype, rngs) if level < len(mult) - 1 else None
            blocks.append(UpBlock(width_in, width, config.num_res_blocks + 1, up, dtype, rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(widths[-1], dtype)
        self.conv_out = _conv(widths[-1], config.out_channels, (3, 3, 3), dtype, rngs)

    def __call__(self, latents_bthwz: jax.Array, cache: WanFrameCache) -> jax.Array:
        x = self.mid_block(self.conv_in(latents_bthwz, cache), cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return self.conv_out(jax.nn.silu(self.norm_out(x)), cache)


class WanVAE(nnx.Module):
    """The Wan 2.1 VAE: ``encode`` to a diagonal Gaussian's (mean, logvar), ``decode`` to video.

    ``config``: diffusers' ``vae/config.json`` keys (a dict, validated here) or a
    :class:`WanVAEConfig`. Parameters are stored and computed in ``dtype``; norms and softmax run
    in float32 and results come back float32. ``rngs`` draws a fresh initialisation (sora_jax's
    convolution init, not Wan's); pretrained weights come from ``sora_jax.wan.vae_weights.load_vae``.
    """

    def __init__(
        self, config: Mapping[str, Any] | WanVAEConfig, rngs: nnx.Rngs, *, dtype: jnp.dtype = jnp.float32
    ) -> None:
        if not isinstance(config, WanVAEConfig):
            config = WanVAEConfig.from_dict(config)
        self.config = config  # Frozen dataclass: static, part of the graph definition.
        self.dtype = jnp.dtype(dtype)
        # Axis names are metadata only: placement is the caller's, under whatever mesh it runs.
        with nnx.use_eager_sharding(False):
            self.encoder = Encoder(config, self.dtype, rngs)
            self.quant_conv = _conv(2 * config.z_dim, 2 * config.z_dim, (1, 1, 1), self.dtype, rngs)
            self.post_quant_conv = _conv(config.z_dim, config.z_dim, (1, 1, 1), self.dtype, rngs)
            self.decoder = Decoder(config, self.dtype, rngs)

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame after the first (4)."""
        return self.config.temporal_factor

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along height and width (8)."""
        return self.config.spatial_factor

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a ``frames``-frame clip: ``1 + k`` for ``1 + 4 k``; ConfigError otherwise,
        naming the count and the nearest valid ones."""
        ft = self.temporal_factor
        if frames >= 1 and (frames - 1) % ft == 0:
            return 1 + (frames - 1) // ft
        below = 1 + ft * ((frames - 1) // ft) if frames > 1 else None
        nearest = f"{below} or {below + ft}" if below is not None else "1"
        raise ConfigError(
            f"a clip of {frames} frames cannot be encoded: the Wan VAE takes 1 + {ft} k frames "
            f"(k = 0, 1, ...); the nearest valid counts are {nearest}"
        )

    def encode_chunk(
        self, frames_bthwc: jax.Array, past: Past | None = None
    ) -> tuple[jax.Array, jax.Array, Past]:
        """One time chunk of a clip -> (mean, logvar) of its latent frames, and the ``past`` for the
        next chunk. ``past=None`` starts a clip: then ``frames`` is frame 0 alone; later chunks hold
        a multiple of ``temporal_factor`` frames (``n`` frames make ``n / 4`` latent frames).

        mean and logvar are float32 ``[B, T', H / 8, W / 8, z]``; logvar clipped to [-30, 20] as
        diffusers' ``DiagonalGaussianDistribution`` does.
        """
        frames = frames_bthwc.shape[1]
        if (past is None and frames != 1) or (past is not None and frames % self.temporal_factor):
            raise ValueError(
                f"a chunk of {frames} frames: the first chunk is 1 frame, later ones a multiple of "
                f"{self.temporal_factor}"
            )
        cache = WanFrameCache(past)
        moments = self.quant_conv(self.encoder(frames_bthwc.astype(self.dtype), cache), cache)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0), tuple(cache.saved)

    def decode_chunk(self, latents_bthwz: jax.Array, past: Past | None = None) -> tuple[jax.Array, Past]:
        """Latent frames of one time chunk -> their video frames in [-1, 1] (float32), and the
        ``past`` for the next chunk. ``past=None`` starts a clip: latent frame 0 alone, decoded to
        one frame; later chunks of ``m`` latent frames decode to ``4 m`` frames."""
        if past is None and latents_bthwz.shape[1] != 1:
            raise ValueError(f"the first chunk is 1 latent frame, got {latents_bthwz.shape[1]}")
        cache = WanFrameCache(past)
        video = self.decoder(self.post_quant_conv(latents_bthwz.astype(self.dtype), cache), cache)
        return jnp.clip(video.astype(jnp.float32), -1.0, 1.0), tuple(cache.saved)

    def encode(
        self, video_bthwc: jax.Array | np.ndarray, chunk_frames: int | None = 4
    ) -> tuple[jax.Array, jax.Array]:
        """Video ``[B, 1 + 4 k, H, W, C]`` in [-1, 1] -> (mean, logvar), float32 ``[B, 1 + k, H / 8,
        W / 8, z]``: the posterior diffusers' ``encode(x).latent_dist`` gives (its ``mean`` and
        ``logvar``, channels last).

        Frame 0, then ``chunk_frames`` frames at a time (a multiple of 4; 4 as diffusers; None: all
        the rest in one call), each chunk one call of a compiled program; any chunking gives the
        same latents to float rounding. ConfigError for a frame count, size or channel count the
        VAE cannot take.
        """
        self._check_video(video_bthwc.shape)
        frames = video_bthwc.shape[1]
        size = self._chunk_size(chunk_frames, frames - 1, "chunk_frames", self.temporal_factor)
        graphdef, params = nnx.split(self)
        means, logvars, past = [], [], None
        for start, stop in _chunk_bounds(frames, size):
            mean, logvar, past = _encode_chunk(graphdef, params, video_bthwc[:, start:stop], past)
            means.append(mean)
            logvars.append(logvar)
        return jnp.concatenate(means, axis=1), jnp.concatenate(logvars, axis=1)

    def decode(self, latents_bthwz: jax.Array | np.ndarray, chunk_latents: int | None = 1) -> jax.Array:
        """Latents ``[B, T', H', W', z]`` -> video ``[B, 1 + 4 (T' - 1), 8 H', 8 W', C]`` float32 in
        [-1, 1] (clamped, as diffusers' ``decode``).

        Latent frame 0, then ``chunk_latents`` latent frames at a time (1 as diffusers; None: the
        rest in one call), each chunk one call of a compiled program.
        """
        shape = latents_bthwz.shape
        if len(shape) != 5 or shape[1] < 1 or shape[-1] != self.config.z_dim:
            raise ConfigError(
                f"latents of shape {tuple(shape)}: the Wan VAE decodes [batch, frames >= 1, height, width, "
                f"{self.config.z_dim}]"
            )
        size = self._chunk_size(chunk_latents, shape[1] - 1, "chunk_latents", 1)
        graphdef, params = nnx.split(self)
        pieces, past = [], None
        for start, stop in _chunk_bounds(shape[1], size):
            video, past = _decode_chunk(graphdef, params, latents_bthwz[:, start:stop], past)
            pieces.append(video)
        return jnp.concatenate(pieces, axis=1)

    def normalize_latents(self, latents_bthwz: jax.Array) -> jax.Array:
        """Posterior latents -> the diffusion model's space: ``(z - mean) * (1 / std)``, per channel
        (the Wan pipelines' arithmetic, float32)."""
        mean, inv_std = self._latent_statistics()
        return (latents_bthwz.astype(jnp.float32) - mean) * inv_std

    def denormalize_latents(self, latents_bthwz: jax.Array) -> jax.Array:
        """The inverse of :meth:`normalize_latents`, as ``pipeline_wan.py`` writes it before
        decoding: ``z / (1 / std) + mean``."""
        mean, inv_std = self._latent_statistics()
        return latents_bthwz.astype(jnp.float32) / inv_std + mean

    def _latent_statistics(self) -> tuple[jax.Array, jax.Array]:
        mean = jnp.asarray(self.config.latents_mean, jnp.float32)
        return mean, 1.0 / jnp.asarray(self.config.latents_std, jnp.float32)

    def _check_video(self, shape: Sequence[int]) -> None:
        channels = self.config.in_channels
        if len(shape) != 5 or shape[-1] != channels:
            raise ConfigError(
                f"video of shape {tuple(shape)}: the Wan VAE encodes "
                f"[batch, frames, height, width, {channels}]"
            )
        self.latent_frames(shape[1])
        fs = self.spatial_factor
        for name, side in zip(("height", "width"), shape[2:4], strict=True):
            if side < fs or side % fs:
                lower = max(fs, side // fs * fs)
                raise ConfigError(
                    f"video {name} {side} is not a multiple of {fs}, the VAE's spatial factor "
                    f"(nearest: {lower} or {lower + fs})"
                )

    @staticmethod
    def _chunk_size(size: int | None, rest: int, name: str, multiple: int) -> int:
        if size is None:
            return max(rest, multiple)
        if not positive_int(size) or size % multiple:
            raise ConfigError(f"{name}={size!r} must be a positive multiple of {multiple}")
        return size


def _chunk_bounds(total: int, size: int) -> list[tuple[int, int]]:
    """``[0, 1)``, then ``[start, start + size)`` up to ``total`` (the last may be shorter)."""
    return [(0, 1)] + [(start, min(start + size, total)) for start in range(1, total, size)]


@functools.partial(jax.jit, static_argnums=0)
def _encode_chunk(
    graphdef: nnx.GraphDef, params: nnx.State, frames: jax.Array, past: Past | None
) -> tuple[jax.Array, jax.Array, Past]:
    return nnx.merge(graphdef, params).encode_chunk(frames, past)


@functools.partial(jax.jit, static_argnums=0)
def _decode_chunk(
    graphdef: nnx.GraphDef, params: nnx.State, latents: jax.Array, past: Past | None
) -> tuple[jax.Array, Past]:
    return nnx.merge(graphdef, params).decode_chunk(latents, past)
