"""Wan 2.1 (Wan-Video/Wan2.1, Apache-2.0) in the framework: load, sample, fine-tune and export.

- ``transformer``: :class:`~sora_jax.wan.transformer.WanTransformer` on the packed-batch contract;
  ``transformer_weights``: diffusers' ``transformer/`` folder to our parameters and back.
- ``vae``: the Wan video autoencoder (causal 3D convolutions, chunked with the causal cache);
  ``vae_config``: its diffusers config, checked; ``vae_weights``: diffusers' ``vae/`` folder;
  ``autoencoder``: the VAE behind the interface that ``sora-jax encode`` and latent runs use.
- ``pipeline``: text-to-video sampling of a Wan directory or a fine-tuned run, as diffusers'
  ``WanPipeline`` samples (flow-matching Euler with Wan's shift, classifier-free guidance);
  ``sample_command``: ``sora-jax sample`` of a Wan directory.
- ``export``: a fine-tuned run (LoRA merged) back to a diffusers directory.

Training is the ``wan`` kind of run (:mod:`sora_jax.kinds.wan`); the UMT5 text encoder is
:mod:`sora_jax.text`'s. Nothing here imports PyTorch. The package imports nothing itself.
"""
