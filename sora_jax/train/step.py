"""What every kind of run's train step shares: its random key and the optimizer update with the EMA.

A train step is a pure function of (state, batch), jitted once for the whole run. Its randomness
comes from ``fold_in(seed, step)`` inside the step, so a run is a pure function of (config, seed,
step) and a resumed run continues bit-for-bit. Each kind of run computes its loss and gradients
(e.g. :mod:`sora_jax.diffusion.train_step`) and hands them to :func:`make_update`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sora_jax.train.optimizer import ema_update, learning_rate
from sora_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def step_key(seed: int, step: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), step)


def make_update(
    config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, jax.Array, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """``update(state, loss, grads) -> (next state, metrics)``: the step of ``optimizer`` (the run
    kind's) and the EMA, shared by every kind of run. A non-finite loss or gradient skips the update
    (parameters, EMA and moments stay put) and is counted."""
    schedule = learning_rate(config, config.train.steps)

    def advance(parts: tuple) -> tuple:
        params, ema, opt_state, grads, count = parts
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, ema_update(ema, params, config.optim.ema_decay, count), opt_state

    def stay(parts: tuple) -> tuple:
        return parts[:3]

    def update(state: TrainState, loss: jax.Array, grads: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A branch, not a select of new and old values: the state is updated in place, where
        # keeping both would copy every parameter and moment and select between them each step.
        parts = (state.params, state.ema_params, state.opt_state, grads, state.step)
        params, ema, opt_state = jax.lax.cond(finite, advance, stay, parts)
        nonfinite_in_a_row = jnp.where(finite, 0, state.nonfinite_in_a_row + 1)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "skipped_nonfinite": (~finite).astype(jnp.int32),
            "nonfinite_in_a_row": nonfinite_in_a_row,
            "param_norm": optax.tree.norm(params),
            "lr": schedule(state.step),
        }
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            ema_params=ema,
            opt_state=opt_state,
            nonfinite_in_a_row=nonfinite_in_a_row,
        )
        return new_state, metrics

    return update
