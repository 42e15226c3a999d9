"""VAE training losses, as pure functions of split parameters (the train step's contract).

Autoencoder step::

    loss_fn = make_autoencoder_loss(graphdef, config, disc_graphdef)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, videos, key,
                                                                    disc_params=disc_params, step=step)

``loss = reconstruction + kl_weight * KL + adversarial_weight(step) * generator_hinge``; without a
discriminator (or with ``disc_weight = 0``) it is the plain VAE loss. Discriminator step, on the
reconstructions the autoencoder step returned in ``aux`` (no second decoding)::

    d_loss_fn = make_discriminator_loss(disc_graphdef)
    (d_loss, d_aux), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        disc_params, videos, aux["reconstructions"])

Videos are ``[B, T, H, W, C]`` float in [-1, 1]; every term is a mean, so the scale of the loss does
not depend on the clip size.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.autoencoder.config import AutoencoderConfig
from sora_jax.autoencoder.discriminator import discriminator_hinge_loss, generator_hinge_loss
from sora_jax.autoencoder.metrics import psnr
from sora_jax.autoencoder.model import DiagonalGaussian

AutoencoderLoss = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def reconstruction_loss(videos: jax.Array, reconstructions: jax.Array, kind: str = "l1") -> jax.Array:
    """Mean absolute (``l1``) or squared (``mse``) error over all pixels and channels."""
    error = reconstructions - videos
    return jnp.mean(jnp.abs(error)) if kind == "l1" else jnp.mean(jnp.square(error))


def kl_loss(posterior: DiagonalGaussian) -> jax.Array:
    """KL(posterior || N(0, I)) per latent element, averaged; 0 exactly at mean 0, logvar 0."""
    return jnp.mean(posterior.kl())


def adversarial_weight(step: jax.Array | int | None, config: AutoencoderConfig) -> jax.Array:
    """``disc_weight`` from step ``disc_start`` on, 0 before (traceable: ``step`` may be traced)."""
    if step is None:
        return jnp.asarray(config.disc_weight, jnp.float32)
    return jnp.where(jnp.asarray(step) >= config.disc_start, config.disc_weight, 0.0).astype(jnp.float32)


def make_autoencoder_loss(
    graphdef: nnx.GraphDef, config: AutoencoderConfig, disc_graphdef: nnx.GraphDef | None = None
) -> AutoencoderLoss:
    """``loss(params, videos, key, disc_params=None, step=None) -> (loss, aux)``.

    ``aux``: the scalar terms (``reconstruction``, ``kl``, ``generator``, ``adversarial_weight``),
    ``psnr`` (mean over frames, dB) and ``reconstructions`` (gradient stopped, for the
    discriminator step). ``key`` draws the latent sample. With ``disc_params`` the generator's hinge
    loss is added, weighted by :func:`adversarial_weight` of ``step``.
    """

    def loss_fn(
        params: nnx.State,
        videos: jax.Array,
        key: jax.Array,
        disc_params: nnx.State | None = None,
        step: jax.Array | int | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        vae = nnx.merge(graphdef, params)
        reconstructions, posterior = vae(videos, key)
        reconstruction = reconstruction_loss(videos, reconstructions, config.reconstruction_loss)
        kl = kl_loss(posterior)
        loss = reconstruction + config.kl_weight * kl
        generator = jnp.zeros((), jnp.float32)
        weight = jnp.zeros((), jnp.float32)
        if disc_params is not None and disc_graphdef is not None:
            discriminator = nnx.merge(disc_graphdef, disc_params)
            # Taken by the autoencoder step's gradient (in ``params``) through the reconstructions;
            # the discriminator is trained by its own loss.
            generator = generator_hinge_loss(discriminator(reconstructions))
            weight = adversarial_weight(step, config)
            loss = loss + weight * generator
        aux = {
            "reconstruction": reconstruction,
            "kl": kl,
            "generator": generator,
            "adversarial_weight": weight,
            "psnr": jnp.mean(psnr(videos, jax.lax.stop_gradient(reconstructions))),
            "reconstructions": jax.lax.stop_gradient(reconstructions),
        }
        return loss, aux

    return loss_fn


def make_discriminator_loss(
    disc_graphdef: nnx.GraphDef,
) -> Callable[[nnx.State, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
    """``d_loss(disc_params, videos, reconstructions) -> (hinge loss, aux)``.

    Real and reconstructed videos go through the discriminator in one batch (one compiled call).
    ``aux``: mean logits on real and reconstructed videos, and the accuracy of their signs.
    """

    def d_loss_fn(
        disc_params: nnx.State, videos: jax.Array, reconstructions: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        discriminator = nnx.merge(disc_graphdef, disc_params)
        both = jnp.concatenate([videos, jax.lax.stop_gradient(reconstructions)], axis=0)
        logits_real, logits_fake = jnp.split(discriminator(both), 2, axis=0)
        loss = discriminator_hinge_loss(logits_real, logits_fake)
        accuracy = 0.5 * (jnp.mean(logits_real > 0) + jnp.mean(logits_fake < 0))
        aux = {
            "logits_real": jnp.mean(logits_real),
            "logits_fake": jnp.mean(logits_fake),
            "accuracy": accuracy,
        }
        return loss, aux

    return d_loss_fn
