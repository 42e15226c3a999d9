"""AdamW with linear warmup and cosine decay, global-norm clipping, and the parameter EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sora_jax.errors import ConfigError


def learning_rate(
    config: ml_collections.ConfigDict, total_steps: int, peak: float | None = None
) -> optax.Schedule:
    """Warmup to ``peak`` (default ``optim.lr``), then cosine decay to ``peak * optim.min_lr_ratio``."""
    o = config.optim
    peak = o.lr if peak is None else peak
    warmup = min(o.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=peak * o.min_lr_ratio,
    )


def make_optimizer(
    config: ml_collections.ConfigDict,
    grad_clip: float | None = None,
    weight_decay: float | None = None,
    lr: float | None = None,
) -> optax.GradientTransformation:
    """AdamW of the ``optim`` section; ``grad_clip``, ``weight_decay`` and peak ``lr`` replace its
    values where given (a second network's own settings)."""
    o = config.optim
    grad_clip = o.grad_clip if grad_clip is None else grad_clip
    clip = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    return optax.chain(
        *clip,
        optax.adamw(
            learning_rate(config, config.train.steps, lr),
            b1=o.b1,
            b2=o.b2,
            weight_decay=o.weight_decay if weight_decay is None else weight_decay,
            # Decay matrices only: norms' scales and biases stay unregularised.
            mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
        ),
    )


def validate_optim_section(o: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first ``optim.*`` key that cannot work."""
    if o.lr <= 0 or o.warmup_steps < 0 or not 0 <= o.min_lr_ratio <= 1:
        raise ConfigError("config key 'optim.lr': lr > 0, warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")
    if not 0.0 <= o.ema_decay < 1.0:
        raise ConfigError(f"config key 'optim.ema_decay': must be in [0, 1), got {o.ema_decay}")


def ema_update(ema, params, decay: float, step: jax.Array):
    """EMA with a warmup (decay ramps as (1 + step) / (10 + step)) so early EMA tracks training."""
    if decay == 0.0:
        return params
    rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)
