"""ODE samplers for rectified flow, with classifier-free guidance.

Integration runs from t = 1 (noise) to t = 0 (data) on a grid warped by the same resolution shift
used in training, so a sampler spends its steps where the model was trained to.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


def timestep_grid(steps: int, shift: float | jax.Array = 1.0) -> jax.Array:
    """``[steps + 1]`` times from 1 down to 0, warped by ``shift`` (>= 1 spends more time near 1)."""
    t = jnp.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1.0 + (shift - 1.0) * t)


def guided(
    velocity_rows: Callable[[jax.Array, jax.Array], jax.Array], scale: float, cond_scale: float | None = None
) -> VelocityFn:
    """Classifier-free guidance over the rows of one batched prediction.

    ``velocity_rows(x, t)`` returns velocities stacked on a leading axis: with the caption, without
    it, and (when ``cond_scale`` is given) without the caption or the conditioning frames.
    Two rows: ``v_uncond + scale * (v_cond - v_uncond)``. Three rows (dual guidance, as in
    InstructPix2Pix): ``v_none + cond_scale * (v_given - v_none) + scale * (v_text - v_given)``.
    """

    def velocity(x: jax.Array, t: jax.Array) -> jax.Array:
        v = velocity_rows(x, t)
        base = v[1] if cond_scale is None else v[2] + cond_scale * (v[1] - v[2])
        return base + scale * (v[0] - v[1])

    return velocity


def integrate(velocity: VelocityFn, noise: jax.Array, grid: jax.Array, method: str = "euler") -> jax.Array:
    """Integrate ``dx/dt = velocity(x, t)`` from ``grid[0]`` (= 1, ``noise``) to ``grid[-1]`` (= 0).

    ``euler`` takes one velocity per step; ``heun`` averages the velocities at both ends of a step
    (second order), except on a final step ending at t = 0, where the end velocity is undefined for
    a model that predicts from pure data, and Euler is used.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown sampler {method!r}; use euler or heun")

    def step(x: jax.Array, times: jax.Array) -> tuple[jax.Array, None]:
        t, t_next = times[0], times[1]
        v = velocity(x, t)
        x_euler = x + (t_next - t) * v
        if method == "euler":
            return x_euler, None
        v_next = velocity(x_euler, t_next)
        x_heun = x + (t_next - t) * 0.5 * (v + v_next)
        return jnp.where(t_next > 0, x_heun, x_euler), None

    pairs = jnp.stack([grid[:-1], grid[1:]], axis=-1)
    x, _ = jax.lax.scan(step, noise, pairs)
    return x
