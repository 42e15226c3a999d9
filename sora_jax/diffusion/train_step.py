"""The DiT's train step: the rectified-flow loss of a packed batch, its gradients and the update.

Noise and timesteps are drawn inside the step from ``fold_in(seed, step)`` (see
:mod:`sora_jax.train.step`), per clip and, under conditioning, per token. With sound the step's
metrics also hold ``video_loss`` and ``audio_loss``: the mean of each modality's clip losses over
the clips that have such tokens in the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from sora_jax.diffusion.flow import flow_loss, velocity_predictor
from sora_jax.train.state import TrainState
from sora_jax.train.step import make_update, step_key

Batch = dict[str, jax.Array]


def make_loss_fn(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict
) -> Callable[..., tuple[jax.Array, dict]]:
    """``loss(params, batch, key, frozen=None) -> (loss, aux)`` for the model described by
    ``graphdef``; ``frozen``: the parameters that do not train (a LoRA run's base), merged with
    ``params`` into the model."""

    def loss_fn(
        params: nnx.State, batch: Batch, key: jax.Array, frozen: nnx.State | None = None
    ) -> tuple[jax.Array, dict]:
        model = nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)
        return flow_loss(velocity_predictor(model, batch, config.diffusion), batch, key, config)

    return loss_fn


def make_train_step(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step; the trainer jits it with shardings and donates the state."""
    loss_fn = make_loss_fn(graphdef, config)
    update = make_update(config, optimizer)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        key = step_key(config.seed, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)  # Gradients of the trained parameters only.
        (loss, aux), grads = grad_fn(state.params, batch, key, state.frozen)
        new_state, metrics = update(state, loss, grads)
        if "clip_audio_loss" in aux:
            for name in ("video", "audio"):
                has = aux[f"clip_has_{name}"]
                total = jnp.sum(jnp.where(has, aux[f"clip_{name}_loss"], 0.0))
                metrics[f"{name}_loss"] = total / jnp.maximum(has.sum(), 1)
        metrics["clips"] = jnp.sum(batch["clip_grid"][..., 0] > 0)
        metrics["tokens"] = jnp.sum(batch["segment_ids"] > 0)
        return new_state, metrics

    return train_step
