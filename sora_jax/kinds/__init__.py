"""Kinds of run: what a run trains (the DiT, the video autoencoder, ...), each behind one interface.

- ``base``: :class:`~sora_jax.kinds.base.RunKind`, the interface, and what it exchanges;
- ``registry``: the kinds by name, as ``config.task`` names them;
- ``video_dit`` / ``autoencoder``: the two built-in kinds.

The package imports nothing itself.
"""
