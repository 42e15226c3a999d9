"""Frozen pretrained text encoders (BERT family, T5 family) loaded from Hugging Face-format directories.

- ``encoder``: :func:`~sora_jax.text.encoder.load_text_encoder` and
  :class:`~sora_jax.text.encoder.FrozenTextEncoder`.
- ``hf_loading``: reading Hugging Face checkpoints; :class:`~sora_jax.text.hf_loading.CheckpointError`.
- ``bert`` / ``t5``: the two families; ``layers``: what they share; ``embedder``: captions to stored states.

The package imports nothing itself, so importing one module does not pull in the others.
"""
