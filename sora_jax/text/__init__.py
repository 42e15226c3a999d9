"""Frozen pretrained text encoders (BERT family, T5 family) loaded from Hugging Face-format directories."""

from sora_jax.text.encoder import FrozenTextEncoder, load_text_encoder, mean_pool, text_encoder_dim
from sora_jax.text.hf_loading import CheckpointError

__all__ = ["CheckpointError", "FrozenTextEncoder", "load_text_encoder", "mean_pool", "text_encoder_dim"]
