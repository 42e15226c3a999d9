import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.autoencoder.config import AutoencoderConfig, tiny_config
from sora_jax.autoencoder.model import build_autoencoder
from sora_jax.autoencoder.streaming import decode_chunked, encode_chunked


def _abstract_shapes(config, frames, side):
    """Latent and decoded shapes for each clip length, traced without parameters or compiling."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_autoencoder(config, 0)))

    def roundtrip(state, video):
        vae = nnx.merge(graphdef, state)
        posterior = vae.encode(video)
        return posterior.mean, posterior.logvar, vae.decode(posterior.mean)

    shapes = []
    for length in frames:
        video = jax.ShapeDtypeStruct((2, length, side, side, 3), jnp.float32)
        shapes.append(tuple(x.shape for x in jax.eval_shape(roundtrip, state, video)))
    return shapes


def test_default_vae_compresses_4x8x8_to_16_channels():
    config = AutoencoderConfig()
    assert (config.temporal_factor, config.spatial_factor, config.latent_channels) == (4, 8, 16)
    image, video = _abstract_shapes(config, (1, 9), 32)
    assert image == ((2, 1, 4, 4, 16), (2, 1, 4, 4, 16), (2, 1, 32, 32, 3))
    assert video == ((2, 3, 4, 4, 16), (2, 3, 4, 4, 16), (2, 9, 32, 32, 3))
    assert config.latent_shape(9, 32, 32) == (3, 4, 4, 16)


def test_tiny_vae_shapes():
    config = tiny_config()
    assert (config.temporal_factor, config.spatial_factor) == (2, 4)
    image, video = _abstract_shapes(config, (1, 5), 16)
    assert image[0] == (2, 1, 4, 4, 4) and image[2] == (2, 1, 16, 16, 3)
    assert video[0] == (2, 3, 4, 4, 4) and video[2] == (2, 5, 16, 16, 3)


def test_clip_shapes_that_do_not_fit_are_rejected():
    config = AutoencoderConfig()
    with pytest.raises(ValueError, match="1 \\+ 4 \\* k"):
        config.latent_shape(8, 32, 32)
    with pytest.raises(ValueError, match="multiples of 8"):
        config.latent_shape(5, 36, 32)


def _video(frames, seed=0, side=8):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (1, frames, side, side, 3)), jnp.float32)


@pytest.mark.parametrize("changed_frame", [1, 2, 3, 6, 8])
def test_encoder_is_causal(micro_vae, changed_frame):
    """Frame k >= 1 belongs to latent frame ceil(k / ft); latent frames before it do not change."""
    ft = micro_vae.config.temporal_factor
    video = _video(9)
    changed = video.at[:, changed_frame].add(0.5)
    before = np.asarray(encode_chunked(micro_vae, video).mean)
    after = np.asarray(encode_chunked(micro_vae, changed).mean)
    first_affected = -(-changed_frame // ft)
    np.testing.assert_array_equal(after[:, :first_affected], before[:, :first_affected])
    assert np.abs(after[:, first_affected] - before[:, first_affected]).max() > 1e-3


@pytest.mark.parametrize("changed_latent", [0, 1, 3])
def test_decoder_is_causal(micro_vae, changed_latent):
    """Latent frame j >= 1 first shows in frame 1 + (j - 1) ft; latent frame 0 in frame 0."""
    ft = micro_vae.config.temporal_factor
    latents = jnp.asarray(np.random.default_rng(1).normal(size=(1, 5, 4, 4, 4)), jnp.float32)
    before = np.asarray(decode_chunked(micro_vae, latents))
    after = np.asarray(decode_chunked(micro_vae, latents.at[:, changed_latent].add(1.0)))
    first_affected = 0 if changed_latent == 0 else 1 + (changed_latent - 1) * ft
    np.testing.assert_array_equal(after[:, :first_affected], before[:, :first_affected])
    assert np.abs(after[:, first_affected] - before[:, first_affected]).max() > 1e-3


def test_image_and_still_video_share_the_latent_space(micro_vae):
    """An image encodes like the first frame of a video; a still video's latents are still."""
    video = _video(9, seed=2)
    image_latent = np.asarray(encode_chunked(micro_vae, video[:, :1]).mean)
    video_latents = np.asarray(encode_chunked(micro_vae, video).mean)
    np.testing.assert_allclose(video_latents[:, :1], image_latent, atol=1e-5)
    still = jnp.repeat(video[:, :1], 9, axis=1)
    still_latents = np.asarray(encode_chunked(micro_vae, still).mean)
    np.testing.assert_allclose(still_latents, np.repeat(image_latent, 5, axis=1), atol=1e-5)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "frames"),
    [
        ((3, 3, 3), (1, 1, 1), None, 11),
        ((3, 1, 1), (2, 1, 1), None, 9),  # Temporal downsampling.
        ((1, 3, 3), (1, 2, 2), (0, 1), 9),  # Spatial downsampling, asymmetric padding.
        ((1, 1, 1), (1, 1, 1), None, 9),
    ],
)
def test_the_causal_conv_computed_as_2d_convs_equals_the_3d_convolution(kernel, stride, padding, frames):
    from sora_jax.autoencoder.layers import CausalConv3d

    with nnx.use_eager_sharding(False):
        conv = CausalConv3d(5, 7, kernel, nnx.Rngs(0), stride=stride, spatial_padding=padding)
    conv.conv.bias[...] = jnp.arange(7.0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, frames, 8, 8, 5)), jnp.float32)
    np.testing.assert_allclose(np.asarray(conv._convolve(x)), np.asarray(conv.conv(x)), rtol=1e-5, atol=1e-5)


def test_fresh_kernels_are_inflated_from_2d():
    """Only the current-frame tap of a fresh causal kernel is drawn; past taps start at zero."""
    from sora_jax.autoencoder.layers import conv_kernel_init

    kernel = np.asarray(conv_kernel_init(jax.random.key(0), (3, 3, 3, 16, 32)))
    np.testing.assert_array_equal(kernel[:2], 0.0)
    assert abs(kernel[2].std() - (1 / np.sqrt(3 * 3 * 16))) < 0.01  # LeCun variance of the 2D kernel.
