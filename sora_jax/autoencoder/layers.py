"""Building blocks of the causal video VAE: causal 3D convolution, per-frame norms, residual blocks,
and the resampling steps between levels.

Activations are ``[B, T, H, W, C]``. Time is causal everywhere: an output frame depends only on input
frames at or before it, and every normalisation is computed within one frame. So a video can be
processed in time chunks, each convolution continuing from the frames it kept from the previous
chunk (:class:`FrameCache`), with the same result as the whole video at once.

Parameters carry logical axis names: convolution kernels ``(None, None, None, "conv_in", "conv_out")``
(time, height, width, input and output channels), biases ``("conv_out",)``, norm scales ``(None,)``.
Names absent from ``mesh.rules`` are replicated, which suits a VAE of tens of millions of parameters;
mapping ``conv_out`` to ``fsdp`` shards the larger kernels without touching this code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.autoencoder.config import AutoencoderConfig

KERNEL_AXES = (None, None, None, "conv_in", "conv_out")
ModuleT = TypeVar("ModuleT", bound=nnx.Module)


def initialise(create: Callable[[], ModuleT]) -> ModuleT:
    """``create()`` with its parameters drawn in one compiled program; logical axis names are kept
    as metadata only (no eager sharding), as ``build_model`` does for the DiT."""

    def unsharded() -> ModuleT:
        with nnx.use_eager_sharding(False):
            return create()

    graphdef, _ = nnx.split(nnx.eval_shape(unsharded))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.split(unsharded())[1])())


def conv_kernel_init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """``[kt, kh, kw, in, out]`` kernels inflated from 2D: LeCun normal (truncated at 2 sigma, variance
    ``1 / (kh kw in)``) on the last time tap, the current frame, and zeros on the past frames.

    So a fresh network treats every frame as an image, and learns what to take from the past. With
    all taps random (variance ``1 / (kt kh kw in)``) every layer starts by blending each frame with
    its predecessors, which the network must then learn to undo: on physics-world clips a VAE
    without compression reached 23.8 dB after 300 steps that way, against 28 dB on single frames.

    Drawn as a flat vector and reshaped: XLA's CPU compiler takes seconds for each random draw of a
    rank-5 shape (measured ~4 s, against ~0.3 s flat), which made initialising even a tiny VAE slow.
    """
    kt, spatial = shape[0], tuple(shape[1:])
    fan_in = math.prod(spatial[:-1])
    stddev = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # Std of a standard normal cut at +-2.
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(spatial),), dtype)
    current = (stddev * flat).reshape(1, *spatial)
    return jnp.concatenate([jnp.zeros((kt - 1, *spatial), dtype), current])


class FrameCache:
    """The past frames every causal convolution needs, handed from one time chunk to the next.

    A fresh cache is made for each call of the encoder or decoder. ``past`` is None at the start of a
    video, where each convolution pads with copies of its first input frame; otherwise it is the
    ``saved`` tuple of the previous chunk's call. Convolutions take and record their frames in call
    order, which is fixed by the architecture, so position ``i`` always belongs to the same layer.
    Only the tuple of arrays crosses ``jit`` boundaries; this object lives while tracing.
    """

    def __init__(self, past: Sequence[jax.Array] | None = None) -> None:
        self.past = tuple(past) if past is not None else None
        self.saved: list[jax.Array] = []

    @property
    def at_start(self) -> bool:
        """Whether this call sees the first frame of the video."""
        return self.past is None

    def extend(self, x_bthwc: jax.Array, pad: int, keep: int) -> jax.Array:
        """``x`` with its past in front: ``pad`` copies of frame 0 at the start, else the kept frames.

        Records the last ``keep`` frames of the extended stream: those not yet consumed by a
        convolution of stride ``s`` and kernel ``k`` (``keep = k - s``) when chunks are whole strides.
        """
        if self.past is None:
            past = jnp.repeat(x_bthwc[:, :1], pad, axis=1)
        else:
            past = self.past[len(self.saved)].astype(x_bthwc.dtype)
        stream = jnp.concatenate([past, x_bthwc], axis=1)
        self.saved.append(stream[:, stream.shape[1] - keep :])
        return stream


class CausalConv3d(nnx.Module):
    """3D convolution, causal in time, zero-padded to keep ("same") height and width at stride 1.

    In time it pads only the past: ``k_t - 1`` copies of the first frame. Replicating the first frame
    (rather than zeros) makes an image behave like the first frame of a still video, so a still
    video's latents stay still and images and videos share one latent space; it is also what the
    chunked path reproduces exactly, since a chunk after the first carries real past frames.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int],
        rngs: nnx.Rngs,
        *,
        stride: tuple[int, int, int] = (1, 1, 1),
        spatial_padding: tuple[int, int] | None = None,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ) -> None:
        """``spatial_padding``: (before, after) pixels on height and width; default ``k // 2`` each side."""
        kt, kh, kw = kernel
        if kt > 1 and kt <= stride[0]:
            raise ValueError(f"a causal kernel of {kt} frames needs a time stride below it, got {stride[0]}")
        self.time_kernel, self.time_stride = kt, stride[0]
        before, after = spatial_padding if spatial_padding is not None else (kh // 2, kh // 2)
        self.spatial_stride = stride[1:]
        self.spatial_padding = ((before, after), (before, after))
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding=((0, 0), (before, after), (before, after)),
            kernel_init=nnx.with_partitioning(conv_kernel_init, KERNEL_AXES),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x_bthwc: jax.Array, cache: FrameCache) -> jax.Array:
        """``[B, T, H, W, Ci]`` -> ``[B, T / s_t, H / s_h, W / s_w, Co]``.

        At the start of a video ``T`` frames give ``(T - 1) / s_t + 1`` outputs; later chunks must
        hold whole strides (``T % s_t == 0``) and give ``T / s_t``.
        """
        if self.time_kernel > 1:
            x_bthwc = cache.extend(x_bthwc, self.time_kernel - 1, self.time_kernel - self.time_stride)
        return self._convolve(x_bthwc)

    def _convolve(self, x_bthwc: jax.Array) -> jax.Array:
        """The valid-in-time 3D convolution as a sum of ``k_t`` 2D convolutions, one per kernel
        frame, with frames folded into the batch: the same result as ``self.conv(x)``, computed the
        way XLA's CPU backend is fast at (about 4x faster than its 3D convolution at 8 channels,
        forward and backward); accelerators run 2D convolutions as well as 3D ones."""
        kernel = self.conv.kernel[...]
        x_bthwc, kernel = x_bthwc.astype(self.conv.dtype), kernel.astype(self.conv.dtype)
        b, st = x_bthwc.shape[0], self.time_stride
        t_out = (x_bthwc.shape[1] - self.time_kernel) // st + 1
        out = None
        for dt in range(self.time_kernel):
            frames = x_bthwc[:, dt : dt + st * (t_out - 1) + 1 : st]
            y = jax.lax.conv_general_dilated(
                frames.reshape(b * t_out, *frames.shape[2:]),
                kernel[dt],
                self.spatial_stride,
                self.spatial_padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            out = y if out is None else out + y
        out = out + self.conv.bias[...].astype(out.dtype)
        return out.reshape(b, t_out, *out.shape[1:])


class FrameNorm(nnx.Module):
    """Normalisation within each frame (see ``AutoencoderConfig.norm``), statistics in float32."""

    def __init__(self, channels: int, config: AutoencoderConfig, rngs: nnx.Rngs) -> None:
        kw = dict(
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (None,)),
            rngs=rngs,
        )
        self.kind = config.norm
        if config.norm == "rms":
            self.norm = nnx.RMSNorm(channels, **kw)
            self.bias = nnx.Param(jnp.zeros((channels,), jnp.dtype(config.param_dtype)), out_sharding=(None,))
        else:
            self.norm = nnx.GroupNorm(
                channels,
                config.groups,
                bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (None,)),
                **kw,
            )

    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        if self.kind == "rms":
            return self.norm(x_bthwc) + self.bias[...].astype(x_bthwc.dtype)
        b, t = x_bthwc.shape[:2]
        # Frames as separate samples: GroupNorm's statistics never mix time steps.
        return self.norm(x_bthwc.reshape(b * t, *x_bthwc.shape[2:])).reshape(x_bthwc.shape)


def _conv_kw(config: AutoencoderConfig) -> dict:
    return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


class ResBlock(nnx.Module):
    """norm -> SiLU -> causal 3x3x3 conv, twice, plus a (1x1x1-projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, config: AutoencoderConfig, rngs: nnx.Rngs):
        kw = _conv_kw(config)
        self.norm1 = FrameNorm(in_channels, config, rngs)
        self.conv1 = CausalConv3d(in_channels, out_channels, (3, 3, 3), rngs, **kw)
        self.norm2 = FrameNorm(out_channels, config, rngs)
        self.conv2 = CausalConv3d(out_channels, out_channels, (3, 3, 3), rngs, **kw)
        self.shortcut = (
            CausalConv3d(in_channels, out_channels, (1, 1, 1), rngs, **kw)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x_bthwc: jax.Array, cache: FrameCache) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x_bthwc)), cache)
        h = self.conv2(jax.nn.silu(self.norm2(h)), cache)
        skip = self.shortcut(x_bthwc, cache) if self.shortcut is not None else x_bthwc
        return skip + h


class Downsample(nnx.Module):
    """Halve height and width (stride-2 3x3 conv per frame) and, if ``temporal``, time.

    The temporal step is a causal conv of 3 frames at stride 2: with the first frame padded twice,
    output 0 sees only frame 0 and output ``j`` frames ``2j - 2 .. 2j``; ``1 + 2k`` frames give
    ``1 + k``, keeping the first frame separate as the image/video latent space needs.
    """

    def __init__(self, channels: int, temporal: bool, config: AutoencoderConfig, rngs: nnx.Rngs):
        kw = _conv_kw(config)
        # (0, 1) padding: output pixel i sees 2i .. 2i + 2, so tiles starting at even pixels align.
        self.spatial = CausalConv3d(
            channels, channels, (1, 3, 3), rngs, stride=(1, 2, 2), spatial_padding=(0, 1), **kw
        )
        self.temporal = (
            CausalConv3d(channels, channels, (3, 1, 1), rngs, stride=(2, 1, 1), **kw) if temporal else None
        )

    def __call__(self, x_bthwc: jax.Array, cache: FrameCache) -> jax.Array:
        x_bthwc = self.spatial(x_bthwc, cache)
        return self.temporal(x_bthwc, cache) if self.temporal is not None else x_bthwc


class Upsample(nnx.Module):
    """Double time (if ``temporal``), then height and width (nearest, then a 3x3 conv per frame).

    In time a causal conv makes two frames of every input frame; the first video frame's first copy
    is dropped, so ``1 + k`` frames give ``1 + 2k`` (the inverse of :class:`Downsample`).
    """

    def __init__(self, channels: int, temporal: bool, config: AutoencoderConfig, rngs: nnx.Rngs):
        kw = _conv_kw(config)
        self.temporal = CausalConv3d(channels, 2 * channels, (3, 1, 1), rngs, **kw) if temporal else None
        self.spatial = CausalConv3d(channels, channels, (1, 3, 3), rngs, **kw)

    def __call__(self, x_bthwc: jax.Array, cache: FrameCache) -> jax.Array:
        if self.temporal is not None:
            pairs = self.temporal(x_bthwc, cache)
            b, t, h, w, c2 = pairs.shape
            # [B, T, H, W, 2C] -> [B, T, 2, H, W, C] -> [B, 2T, H, W, C]: frame j yields 2j and 2j + 1.
            x_bthwc = pairs.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
            x_bthwc = x_bthwc.reshape(b, 2 * t, h, w, c2 // 2)
            if cache.at_start:
                x_bthwc = x_bthwc[:, 1:]
        x_bthwc = jnp.repeat(jnp.repeat(x_bthwc, 2, axis=2), 2, axis=3)
        return self.spatial(x_bthwc, cache)
