"""AdamW with linear warmup and cosine decay, global-norm clipping, and the parameter EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    o = config.optim
    warmup = min(o.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=o.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=o.lr * o.min_lr_ratio,
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    o = config.optim
    clip = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    return optax.chain(
        *clip,
        optax.adamw(
            learning_rate(config, config.train.steps),
            b1=o.b1,
            b2=o.b2,
            weight_decay=o.weight_decay,
            # Decay matrices only: norms' scales and biases stay unregularised.
            mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
        ),
    )


def ema_update(ema, params, decay: float, step: jax.Array):
    """EMA with a warmup (decay ramps as (1 + step) / (10 + step)) so early EMA tracks training."""
    if decay == 0.0:
        return params
    rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)
