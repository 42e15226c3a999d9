"""Video compression network: a causal 3D convolutional VAE (Wan 2.1 / HunyuanVideo / CogVideoX style).

- ``config``: :class:`AutoencoderConfig` and the ``autoencoder`` config section.
- ``layers``: causal 3D convolution with its chunk cache, per-frame norms, residual and resampling blocks.
- ``model``: :class:`VideoAutoencoder` (encoder to a diagonal Gaussian, decoder), causality contract.
- ``streaming``: time-chunked and spatially tiled encode/decode in bounded memory.
- ``losses`` / ``discriminator``: reconstruction + KL (+ hinge PatchGAN) as pure loss functions.
- ``metrics``: per-frame PSNR and SSIM.
"""

from sora_jax.autoencoder.config import AutoencoderConfig, autoencoder_section, tiny_config
from sora_jax.autoencoder.discriminator import (
    PatchDiscriminator,
    build_discriminator,
    discriminator_hinge_loss,
    generator_hinge_loss,
)
from sora_jax.autoencoder.layers import FrameCache
from sora_jax.autoencoder.losses import (
    adversarial_weight,
    kl_loss,
    make_autoencoder_loss,
    make_discriminator_loss,
    reconstruction_loss,
)
from sora_jax.autoencoder.metrics import psnr, ssim
from sora_jax.autoencoder.model import DiagonalGaussian, VideoAutoencoder, build_autoencoder, spatial_reach
from sora_jax.autoencoder.streaming import (
    decode_chunked,
    decode_tiled,
    encode_chunked,
    encode_tiled,
    safe_margin,
)

__all__ = [
    "AutoencoderConfig",
    "DiagonalGaussian",
    "FrameCache",
    "PatchDiscriminator",
    "VideoAutoencoder",
    "adversarial_weight",
    "autoencoder_section",
    "build_autoencoder",
    "build_discriminator",
    "decode_chunked",
    "decode_tiled",
    "discriminator_hinge_loss",
    "encode_chunked",
    "encode_tiled",
    "generator_hinge_loss",
    "kl_loss",
    "make_autoencoder_loss",
    "make_discriminator_loss",
    "psnr",
    "reconstruction_loss",
    "safe_margin",
    "spatial_reach",
    "ssim",
    "tiny_config",
]
