"""Rotary position embedding over (t, h, w) patch coordinates, so any resolution and duration works.

The head dimension is split into three even parts, one per axis; each part rotates pairs of
features by angles ``position * frequency``. A query-key dot product then depends only on the
*difference* of the two tokens' coordinates, which is what lets a model trained on small clips
attend sensibly inside larger ones.
"""

from __future__ import annotations

import jax.numpy as jnp


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Feature dims given to (t, h, w): h and w equal, t takes the rest; all even."""
    spatial = (head_dim // 3) // 2 * 2
    return head_dim - 2 * spatial, spatial, spatial


def rope_angles(positions: jnp.ndarray, dims: tuple[int, ...], theta: float) -> jnp.ndarray:
    """Angles ``[..., sum(dims) // 2]`` (f32) for ``positions [..., len(dims)]`` (integer, or float
    for times between patches, :func:`rope_coordinates`).

    Axis ``a`` of the coordinates rotates ``dims[a]`` features (see :func:`axis_dims` for video;
    text uses one axis, its token index, over the whole head).
    """
    parts = []
    for axis, dim in enumerate(dims):
        freqs = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
        parts.append(positions[..., axis : axis + 1].astype(jnp.float32) * freqs)
    return jnp.concatenate(parts, axis=-1)


def rope_coordinates(positions: jnp.ndarray, times: jnp.ndarray | None = None) -> jnp.ndarray:
    """The (t, h, w) coordinates a token rotates by: ``positions [..., 3]`` as they are, or with
    ``times [...]`` (float, a batch with sound) as the time axis, so an audio token sits on its clip's
    video clock between the temporal patches it sounds with."""
    if times is None:
        return positions
    return jnp.concatenate([times[..., None], positions[..., 1:].astype(jnp.float32)], axis=-1)


def apply_rope(x_blnh: jnp.ndarray, angles_blh: jnp.ndarray) -> jnp.ndarray:
    """Rotate ``x [B, L, N, H]`` by ``angles [B, L, H/2]`` (shared across the N heads)."""
    half = x_blnh.shape[-1] // 2
    cos = jnp.cos(angles_blh)[:, :, None, :]
    sin = jnp.sin(angles_blh)[:, :, None, :]
    x1, x2 = x_blnh[..., :half].astype(jnp.float32), x_blnh[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_blnh.dtype)
