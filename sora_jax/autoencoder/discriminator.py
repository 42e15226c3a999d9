"""Patch discriminator and hinge losses for the VAE's optional adversarial term.

A PatchGAN (pix2pix's ``NLayerDiscriminator``): stride-2 4x4 convolutions whose output is a map of
logits, each judging one patch (70x70 pixels with 3 layers) as real or reconstructed. Per frame (2D)
by default; with ``disc_time_kernel = k > 1`` every convolution also spans ``k`` frames (3D), so the
discriminator can also see flicker. Norms are per-frame GroupNorms (batch statistics, as
pix2pix's BatchNorm, would couple the real and fake halves of a batch).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.autoencoder.config import AutoencoderConfig
from sora_jax.autoencoder.layers import KERNEL_AXES, initialise


def _kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """N(0, 0.02^2), as pix2pix; drawn flat (see ``layers.conv_kernel_init`` for why)."""
    return 0.02 * jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


class PatchDiscriminator(nnx.Module):
    """Video ``[B, T, H, W, C]`` in [-1, 1] -> logits ``[B, T, ~H / 2^n, ~W / 2^n, 1]`` (n = layers)."""

    def __init__(self, config: AutoencoderConfig, rngs: nnx.Rngs) -> None:
        kt = config.disc_time_kernel
        kw = dict(
            kernel_init=nnx.with_partitioning(_kernel_init, KERNEL_AXES),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            rngs=rngs,
        )
        # Time is padded symmetrically ("same"): a discriminator need not be causal.
        padding = ((kt // 2, kt // 2), (1, 1), (1, 1))

        def conv(cin: int, cout: int, stride: int) -> nnx.Conv:
            return nnx.Conv(cin, cout, (kt, 4, 4), (1, stride, stride), padding=padding, **kw)

        widths = [config.disc_channels * min(2**i, 8) for i in range(config.disc_layers + 1)]
        self.conv_in = conv(config.image_channels, widths[0], 2)
        convs, norms = [], []
        for i in range(1, config.disc_layers + 1):
            # The last feature layer keeps the resolution (stride 1), as in pix2pix.
            convs.append(conv(widths[i - 1], widths[i], 2 if i < config.disc_layers else 1))
            norms.append(
                nnx.GroupNorm(
                    widths[i],
                    math.gcd(32, widths[i]),
                    scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (None,)),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (None,)),
                    rngs=rngs,
                )
            )
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.conv_out = conv(widths[-1], 1, 1)

    def __call__(self, video_bthwc: jax.Array) -> jax.Array:
        x = jax.nn.leaky_relu(self.conv_in(video_bthwc), 0.2)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x)
            b, t = x.shape[:2]
            x = norm(x.reshape(b * t, *x.shape[2:])).reshape(x.shape)  # Per frame.
            x = jax.nn.leaky_relu(x, 0.2)
        return self.conv_out(x).astype(jnp.float32)


def build_discriminator(config: AutoencoderConfig, seed: int) -> PatchDiscriminator:
    return initialise(lambda: PatchDiscriminator(config, nnx.Rngs(params=seed)))


def discriminator_hinge_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """``(mean relu(1 - D(real)) + mean relu(1 + D(fake))) / 2``: zero once real logits reach +1
    and fake ones -1, so a confident discriminator stops pushing."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def generator_hinge_loss(logits_fake: jax.Array) -> jax.Array:
    """``-mean D(fake)``: the autoencoder raises the discriminator's logits on its reconstructions."""
    return -jnp.mean(logits_fake)
