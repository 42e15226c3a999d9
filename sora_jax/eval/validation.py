"""The DiT's validation loss: the flow loss of held-out packed batches with fixed noise at fixed
timesteps, one per band of ``eval.timestep_buckets`` equal bands of t, so two checkpoints compare
without sampling noise."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.data.pipeline import batch_stream
from sora_jax.diffusion.flow import flow_loss, velocity_predictor


def held_out_batches(config: ml_collections.ConfigDict) -> list[dict[str, np.ndarray]]:
    """``eval.batches`` physics-world batches from ``eval.seed``, captions always kept.

    A latent run, or one reading stored caption embeddings, can only be fed from its store: its
    batches are then the store's clips in the order ``eval.seed`` draws (not held out).
    """
    held_out = config.copy_and_resolve_references()
    from_store = bool(config.model.autoencoder) or config.model.text_encoder != "learned"
    with held_out.unlocked():
        held_out.seed = config.eval.seed
        held_out.data.store = config.data.store if from_store else ""
        held_out.data.caption_dropout = 0.0
        held_out.data.workers = 0
    return list(itertools.islice(batch_stream(held_out, config.data.batch_size), config.eval.batches))


class FlowValidation:
    """``validation(params) -> {"val_loss", "val_loss_t<t>" per band}`` on :func:`held_out_batches`."""

    def __init__(self, graphdef: nnx.GraphDef, config: ml_collections.ConfigDict) -> None:
        self.graphdef, self.config = graphdef, config
        self.batches = held_out_batches(config)
        buckets = config.eval.timestep_buckets
        self.bucket_t = [(b + 0.5) / buckets for b in range(buckets)]
        self.loss = jax.jit(self._loss)

    def _loss(self, params: nnx.State, batch: dict, key: jax.Array, t: jax.Array) -> jax.Array:
        model = nnx.merge(self.graphdef, params)
        velocity = velocity_predictor(model, batch, self.config.diffusion)
        return flow_loss(velocity, batch, key, self.config, timesteps=t)[0]

    def __call__(self, params: nnx.State) -> dict[str, float]:
        base = jax.random.key(self.config.eval.seed)
        by_bucket = {}
        for t in self.bucket_t:
            losses = [
                float(self.loss(params, batch, jax.random.fold_in(base, i), jnp.float32(t)))
                for i, batch in enumerate(self.batches)
            ]
            by_bucket[f"val_loss_t{t:.3f}"] = float(np.mean(losses))
        return {"val_loss": float(np.mean(list(by_bucket.values()))), **by_bucket}
