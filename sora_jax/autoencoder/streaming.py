"""Encode and decode videos of any duration and size in bounded memory: time chunks and spatial tiles.

Time chunks are exact. The encoder runs on frames ``[0, 1 + n)``, then ``n`` frames at a time
(``n`` a multiple of ``ft``); each causal convolution carries its last ``k_t - s_t`` input frames to
the next chunk (a tuple of arrays, :class:`~sora_jax.autoencoder.layers.FrameCache`), and every norm
works within a frame, so the chunks' latents concatenate to the whole video's (to float32 rounding,
~1e-6; in bfloat16, to its rounding). The decoder likewise runs on latent frames ``[0, 1 + m)``,
then ``m`` at a time. Activation memory is that of one chunk.

Spatial tiles are blended. Tiles of ``tile x tile`` pixels overlap by at least ``overlap`` pixels and
are blended linearly across each overlap, ignoring ``margin`` pixels next to each cut: a tile's
values there saw the zero padding at its edge instead of the neighbouring pixels. With
``margin >= spatial_reach`` (see :func:`safe_margin`) and ``norm="rms"`` (no statistics across
pixels), every blended value is a convex combination of exact ones, so tiles equal the whole
frame to float tolerance; with ``margin = 0`` the blending is the usual seam-hiding approximation.

Each chunk and tile is one jitted call (a few compilations: the first chunk, the others, the last).
Inputs may be host (numpy) arrays: each piece goes to the device when it is processed. Decoded
videos come back as numpy arrays, piece by piece, so the device never holds a whole long video.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.autoencoder.layers import FrameCache
from sora_jax.autoencoder.model import DiagonalGaussian, VideoAutoencoder, spatial_reach

Past = tuple[jax.Array, ...] | None


@functools.partial(jax.jit, static_argnums=0)
def _encode_step(
    graphdef: nnx.GraphDef, params: nnx.State, frames: jax.Array, past: Past
) -> tuple[DiagonalGaussian, tuple[jax.Array, ...]]:
    cache = FrameCache(past)
    posterior = nnx.merge(graphdef, params).encode(frames, cache)
    return posterior, tuple(cache.saved)


@functools.partial(jax.jit, static_argnums=0)
def _decode_step(
    graphdef: nnx.GraphDef, params: nnx.State, latents: jax.Array, past: Past
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    cache = FrameCache(past)
    video = nnx.merge(graphdef, params).decode(latents, cache)
    return video, tuple(cache.saved)


def _chunks(total: int, first: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``[0, first)``, then of ``size`` items each (the last may be shorter)."""
    bounds, start = [(0, min(first, total))], min(first, total)
    while start < total:
        bounds.append((start, min(start + size, total)))
        start += size
    return bounds


def encode_chunked(
    vae: VideoAutoencoder, video_bthwc: jax.Array, chunk_frames: int | None = None
) -> DiagonalGaussian:
    """The posterior of ``video [B, 1 + ft k, H, W, C]``, encoded ``chunk_frames`` frames at a time.

    ``chunk_frames`` (a multiple of ``ft``; None: the whole video in one call) bounds the activation
    memory; the result equals the whole-video encoding.
    """
    ft = vae.config.temporal_factor
    frames = video_bthwc.shape[1]
    vae.config.latent_shape(frames, *video_bthwc.shape[2:4])  # Checks the shape.
    if chunk_frames is None:
        chunk_frames = max(frames - 1, ft)  # One call: frame 0 and all the rest.
    if chunk_frames < 1 or chunk_frames % ft:
        raise ValueError(f"chunk_frames={chunk_frames} must be a multiple of the temporal factor {ft}")
    graphdef, params = nnx.split(vae)
    means, logvars, past = [], [], None
    for start, stop in _chunks(frames, 1 + chunk_frames, chunk_frames):
        posterior, past = _encode_step(graphdef, params, video_bthwc[:, start:stop], past)
        means.append(posterior.mean)
        logvars.append(posterior.logvar)
    return DiagonalGaussian(jnp.concatenate(means, axis=1), jnp.concatenate(logvars, axis=1))


def decode_chunked(
    vae: VideoAutoencoder, latents_bthwz: jax.Array, chunk_latents: int | None = None
) -> np.ndarray:
    """The video of ``latents [B, T', H', W', z]``, decoded ``chunk_latents`` latent frames at a time.

    Returns ``[B, 1 + ft (T' - 1), H, W, C]`` float32 on the host (videos are ~50x the size of their
    latents: each chunk leaves the device as it is made), equal to the whole decoding. None: one call.
    """
    total = latents_bthwz.shape[1]
    chunk_latents = chunk_latents or total  # None: one call.
    graphdef, params = nnx.split(vae)
    pieces, past = [], None
    for start, stop in _chunks(total, 1 + chunk_latents, chunk_latents):
        video, past = _decode_step(graphdef, params, latents_bthwz[:, start:stop], past)
        pieces.append(np.asarray(video))
    return np.concatenate(pieces, axis=1)


def safe_margin(vae: VideoAutoencoder) -> int:
    """A blending margin in pixels (a multiple of ``fs``) that makes tiled encode and decode exact."""
    fs = vae.config.spatial_factor
    return fs * math.ceil(max(spatial_reach(vae.config)) / fs)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest ``tile``-long windows covering ``[0, size)`` that overlap by ``overlap``
    or more, spread evenly (in grid cells: pass sizes already divided by the cell size)."""
    if tile >= size:
        return [0]
    count = 1 + math.ceil((size - tile) / (tile - overlap))
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def blend_weights(length: int, cut_before: bool, cut_after: bool, overlap: int, margin: int) -> np.ndarray:
    """``[length]`` weights of one tile along one axis: 0 within ``margin`` of a cut, then rising
    linearly over the ``overlap - 2 margin`` cells that follow; 1 elsewhere (and at frame edges).

    Two tiles overlapping by exactly ``overlap`` get weights that add up to 1 across it.
    """
    ramp_cells = overlap - 2 * margin
    distance = np.arange(length, dtype=np.float64)
    ramp = np.clip((distance + 1 - margin) / (ramp_cells + 1), 0.0, 1.0)
    weights = np.ones(length)
    if cut_before:
        weights *= ramp
    if cut_after:
        weights *= ramp[::-1]
    return weights.astype(np.float32)


def _check_tiling(vae: VideoAutoencoder, tile: int, overlap: int, margin: int) -> None:
    fs = vae.config.spatial_factor
    if tile % fs or overlap % fs or margin % fs:
        raise ValueError(f"tile={tile}, overlap={overlap}, margin={margin}: each must be a multiple of {fs}")
    if not 0 <= 2 * margin < overlap <= tile // 2:
        raise ValueError(f"need 2 * margin < overlap <= tile / 2, got {margin}, {overlap}, {tile}")


def _blend_tiles(
    run_tile: Callable[[int, int], jax.Array],
    height: int,
    width: int,
    tile: int,
    overlap: int,
    margin: int,
    scale: int,
) -> np.ndarray:
    """Blend ``run_tile(row, col)`` over a grid covering ``height x width`` cells (all in input cells;
    outputs have ``scale`` output cells per input cell, and ``overlap``/``margin`` are output cells).

    The blend is accumulated on the host: the device holds one tile's output at a time.
    """
    rows, cols = tile_starts(height, tile, overlap // scale), tile_starts(width, tile, overlap // scale)
    total, weight_sum = None, np.zeros((height * scale, width * scale, 1), np.float32)
    for row in rows:
        for col in cols:
            out = np.asarray(run_tile(row, col))  # [B, T, h, w, C] for the tile at (row, col).
            h, w = out.shape[2:4]
            wy = blend_weights(h, row > 0, row + tile < height, overlap, margin)
            wx = blend_weights(w, col > 0, col + tile < width, overlap, margin)
            weight = (wy[:, None] * wx[None, :])[:, :, None]
            if total is None:
                total = np.zeros((*out.shape[:2], *weight_sum.shape[:2], out.shape[-1]), np.float32)
            window = (slice(row * scale, row * scale + h), slice(col * scale, col * scale + w))
            total[:, :, window[0], window[1]] += weight * out
            weight_sum[window] += weight
    return total / weight_sum


def encode_tiled(
    vae: VideoAutoencoder,
    video_bthwc: jax.Array,
    tile: int,
    overlap: int,
    margin: int = 0,
    chunk_frames: int | None = None,
) -> DiagonalGaussian:
    """The posterior of ``video``, encoded in ``tile x tile``-pixel tiles (each in time chunks).

    ``tile``, ``overlap`` and ``margin`` are pixels, multiples of ``fs``, with
    ``2 margin < overlap <= tile / 2``. Exact with ``margin >= safe_margin(vae)`` and rms norms.
    """
    fs = vae.config.spatial_factor
    _check_tiling(vae, tile, overlap, margin)
    height, width = (side // fs for side in video_bthwc.shape[2:4])

    def run_tile(row: int, col: int) -> jax.Array:
        pixels = video_bthwc[:, :, row * fs : row * fs + tile, col * fs : col * fs + tile]
        posterior = encode_chunked(vae, pixels, chunk_frames)
        return jnp.concatenate([posterior.mean, posterior.logvar], axis=-1)

    # Blend in latent cells: the tile grid is laid out in latent cells, outputs one per cell.
    moments = _blend_tiles(run_tile, height, width, tile // fs, overlap // fs, margin // fs, 1)
    mean, logvar = np.split(moments, 2, axis=-1)
    return DiagonalGaussian(jnp.asarray(mean), jnp.asarray(logvar))


def decode_tiled(
    vae: VideoAutoencoder,
    latents_bthwz: jax.Array,
    tile: int,
    overlap: int,
    margin: int = 0,
    chunk_latents: int | None = None,
) -> np.ndarray:
    """The video of ``latents``, decoded in tiles of ``tile`` output pixels (``tile / fs`` latents).

    Same rules as :func:`encode_tiled`; the tiles are blended in pixels, on the host (as
    :func:`decode_chunked`, the result is a numpy array).
    """
    fs = vae.config.spatial_factor
    _check_tiling(vae, tile, overlap, margin)
    height, width = latents_bthwz.shape[2:4]
    cells = tile // fs

    def run_tile(row: int, col: int) -> jax.Array:
        latents = latents_bthwz[:, :, row : row + cells, col : col + cells]
        return decode_chunked(vae, latents, chunk_latents)

    return _blend_tiles(run_tile, height, width, cells, overlap, margin, fs)
