import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.autoencoder.config import AutoencoderConfig, autoencoder_section, tiny_config
from sora_jax.autoencoder.discriminator import (
    build_discriminator,
    discriminator_hinge_loss,
    generator_hinge_loss,
)
from sora_jax.autoencoder.losses import (
    adversarial_weight,
    kl_loss,
    make_autoencoder_loss,
    make_discriminator_loss,
    reconstruction_loss,
)
from sora_jax.autoencoder.model import DiagonalGaussian
from sora_jax.config import ConfigError


def test_kl_is_zero_at_the_prior_and_matches_the_closed_form():
    zeros = jnp.zeros((2, 3, 4, 4, 8))
    assert float(kl_loss(DiagonalGaussian(zeros, zeros))) == 0.0
    # KL(N(1, 1) || N(0, 1)) = 1/2; KL(N(0, 2) || N(0, 1)) = (2 - 1 - ln 2) / 2.
    np.testing.assert_allclose(kl_loss(DiagonalGaussian(zeros + 1.0, zeros)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(
        kl_loss(DiagonalGaussian(zeros, zeros + math.log(2.0))), (1 - math.log(2.0)) / 2, rtol=1e-5
    )


def test_posterior_samples_have_its_mean_and_variance():
    mean, logvar = jnp.full((20_000,), 0.5), jnp.full((20_000,), math.log(0.25))
    sample = DiagonalGaussian(mean, logvar).sample(jax.random.key(0))
    assert abs(float(sample.mean()) - 0.5) < 0.02 and abs(float(sample.std()) - 0.5) < 0.02


def test_reconstruction_losses():
    videos = jnp.zeros((1, 1, 2, 2, 1))
    reconstructions = jnp.asarray([0.5, -0.5, 1.0, 0.0]).reshape(videos.shape)
    assert float(reconstruction_loss(videos, reconstructions, "l1")) == pytest.approx(0.5)
    assert float(reconstruction_loss(videos, reconstructions, "mse")) == pytest.approx(0.375)


def test_hinge_losses():
    real, fake = jnp.asarray([2.0, 0.5]), jnp.asarray([-2.0, 0.0])
    # Real: relu(1 - 2) = 0, relu(1 - 0.5) = 0.5; fake: relu(1 - 2) = 0, relu(1 + 0) = 1.
    assert float(discriminator_hinge_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.5))
    assert float(generator_hinge_loss(fake)) == pytest.approx(1.0)
    # Beyond the margins a discriminator has nothing left to learn: zero loss, zero gradient.
    confident = jax.grad(discriminator_hinge_loss, argnums=(0, 1))(real + 1.0, fake - 1.0)
    assert float(discriminator_hinge_loss(real + 1.0, fake - 1.0)) == 0.0
    assert all(float(jnp.abs(g).sum()) == 0.0 for g in confident)


def test_adversarial_weight_switches_on_at_disc_start():
    config = AutoencoderConfig(disc_weight=0.5, disc_start=100)
    weights = [float(adversarial_weight(jnp.asarray(step), config)) for step in (0, 99, 100, 5000)]
    assert weights == [0.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize("time_kernel", [1, 3])
def test_patch_discriminator_judges_patches_within_its_time_window(time_kernel):
    config = tiny_config(disc_time_kernel=time_kernel)
    discriminator = nnx.jit(lambda d, v: d(v))
    discriminator = functools.partial(discriminator, build_discriminator(config, 0))
    video = jax.random.uniform(jax.random.key(0), (1, 5, 32, 32, 3), minval=-1, maxval=1)
    logits = discriminator(video)
    # Two stride-2 layers (32 -> 16 -> 8 pixels), then two 4x4 stride-1 convs lose a pixel each.
    assert logits.shape == (1, 5, 6, 6, 1)
    changed = discriminator(video.at[:, 2].set(0.0))
    moved = np.abs(np.asarray(changed - logits)).max(axis=(0, 2, 3, 4)) > 0
    reach = time_kernel // 2 * (config.disc_layers + 2)  # Every conv reaches k // 2 frames.
    np.testing.assert_array_equal(moved, [abs(t - 2) <= reach for t in range(5)])


def test_autoencoder_loss_adds_the_gan_term_from_disc_start(micro_vae):
    config = micro_vae.config
    gan = dataclasses.replace(config, disc_weight=0.5, disc_start=10)
    graphdef, params = nnx.split(micro_vae, nnx.Param)
    discriminator = build_discriminator(gan, 1)
    disc_graphdef, disc_params = nnx.split(discriminator, nnx.Param)
    loss_fn = jax.jit(make_autoencoder_loss(graphdef, gan, disc_graphdef))
    videos = jax.random.uniform(jax.random.key(1), (2, 3, 16, 16, 3), minval=-1, maxval=1)
    key = jax.random.key(2)
    before, aux = loss_fn(params, videos, key, disc_params, jnp.asarray(9))
    after, aux_after = loss_fn(params, videos, key, disc_params, jnp.asarray(10))
    np.testing.assert_allclose(before, aux["reconstruction"] + gan.kl_weight * aux["kl"], rtol=1e-6)
    assert abs(float(aux_after["generator"])) > 1e-2  # Large enough for the next check to see it.
    np.testing.assert_allclose(after - before, 0.5 * aux_after["generator"], rtol=1e-4, atol=1e-6)
    assert aux["reconstructions"].shape == videos.shape

    d_loss_fn = jax.jit(make_discriminator_loss(disc_graphdef))
    d_loss, d_aux = d_loss_fn(disc_params, videos, aux["reconstructions"])
    assert np.isfinite(float(d_loss)) and 0.0 <= float(d_aux["accuracy"]) <= 1.0


def test_config_section_round_trips_and_is_validated():
    section = autoencoder_section()
    assert AutoencoderConfig.from_section(section) == AutoencoderConfig()
    section.temporal_downsample = (True,)
    with pytest.raises(ConfigError, match="autoencoder.temporal_downsample"):
        AutoencoderConfig.from_section(section)
    with pytest.raises(ConfigError, match="autoencoder.norm"):
        tiny_config(norm="batch")
