"""Video compression network: a causal 3D convolutional VAE (Wan 2.1 / HunyuanVideo / CogVideoX style).

- ``config``: :class:`AutoencoderConfig` and the ``autoencoder`` config section.
- ``layers``: causal 3D convolution with its chunk cache, per-frame norms, residual and resampling blocks.
- ``model``: :class:`VideoAutoencoder` (encoder to a diagonal Gaussian, decoder), causality contract.
- ``streaming``: time-chunked and spatially tiled encode/decode in bounded memory.
- ``losses`` / ``discriminator``: reconstruction + KL (+ hinge PatchGAN) as pure loss functions.
- ``metrics``: per-frame PSNR and SSIM.

The package imports nothing itself: import from the modules.
"""
