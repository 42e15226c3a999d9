"""The train step: a pure function of (state, batch), jitted once for the whole run.

Noise and timesteps come from ``fold_in(seed, step)`` inside the step, so a run is a pure function
of (config, seed, step) and a resumed run continues bit-for-bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from sora_jax.diffusion.flow import flow_loss, velocity_predictor
from sora_jax.train.optimizer import ema_update, learning_rate, make_optimizer
from sora_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def step_key(seed: int, step: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), step)


def make_loss_fn(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict
) -> Callable[[nnx.State, Batch, jax.Array], tuple[jax.Array, dict]]:
    """``loss(params, batch, key) -> (loss, aux)`` for the model described by ``graphdef``."""

    def loss_fn(params: nnx.State, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
        model = nnx.merge(graphdef, params)
        return flow_loss(velocity_predictor(model, batch, config.diffusion), batch, key, config)

    return loss_fn


def make_update(
    config: ml_collections.ConfigDict,
) -> Callable[[TrainState, jax.Array, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """``update(state, loss, grads) -> (next state, metrics)``: the optimizer step and the EMA,
    shared by every model the trainer trains. A non-finite loss or gradient skips the update
    (parameters, EMA and moments stay put) and is counted."""
    optimizer = make_optimizer(config)
    schedule = learning_rate(config, config.train.steps)

    def update(state: TrainState, loss: jax.Array, grads: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, config.optim.ema_decay, state.step)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        params, ema = keep(params, state.params), keep(ema, state.ema_params)
        opt_state = keep(opt_state, state.opt_state)
        nonfinite_in_a_row = jnp.where(finite, 0, state.nonfinite_in_a_row + 1)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "skipped_nonfinite": (~finite).astype(jnp.int32),
            "nonfinite_in_a_row": nonfinite_in_a_row,
            "param_norm": optax.tree.norm(params),
            "lr": schedule(state.step),
        }
        return TrainState(state.step + 1, params, ema, opt_state, nonfinite_in_a_row), metrics

    return update


def make_train_step(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step; the trainer jits it with shardings and donates the state."""
    loss_fn = make_loss_fn(graphdef, config)
    update = make_update(config)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        key = step_key(config.seed, state.step)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
        new_state, metrics = update(state, loss, grads)
        metrics["clips"] = jnp.sum(batch["clip_grid"][..., 0] > 0)
        metrics["tokens"] = jnp.sum(batch["segment_ids"] > 0)
        return new_state, metrics

    return train_step
