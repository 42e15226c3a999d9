"""Spacetime patches: cutting a clip into tokens and putting generated tokens back into frames.

A clip ``[T, H, W, C]`` becomes ``T' * H' * W'`` tokens of ``P = pt * ph * pw * C`` values, ordered
time-major then row-major, each with its integer ``(t, h, w)`` patch coordinate for the 3D RoPE.
A duration that is not a multiple of ``pt`` is padded by repeating the last frame (so a single image
is a valid clip for any ``pt``); :func:`unpatchify` cuts the padding off again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def grid_size(frames: int, height: int, width: int, patch: Sequence[int]) -> tuple[int, int, int]:
    """Token grid ``(T', H', W')`` of a clip; height and width must be multiples of the patch."""
    pt, ph, pw = patch
    if height % ph or width % pw:
        raise ValueError(f"clip {height}x{width} is not a multiple of the patch {ph}x{pw}")
    return -(-frames // pt), height // ph, width // pw


def patchify(clip: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``clip`` ``[T, H, W, C]`` into ``patches [N, P]`` and ``positions [N, 3]`` (int32 t, h, w)."""
    pt, ph, pw = patch
    frames, height, width, channels = clip.shape
    gt, gh, gw = grid_size(frames, height, width, patch)
    if gt * pt != frames:  # Repeat the last frame up to a whole temporal patch.
        clip = np.concatenate([clip, np.repeat(clip[-1:], gt * pt - frames, axis=0)], axis=0)
    tokens = clip.reshape(gt, pt, gh, ph, gw, pw, channels).transpose(0, 2, 4, 1, 3, 5, 6)
    patches = tokens.reshape(gt * gh * gw, pt * ph * pw * channels)
    positions = np.stack(np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij"), -1)
    return patches, positions.reshape(-1, 3).astype(np.int32)


def unpatchify(
    patches: np.ndarray, grid: Sequence[int], patch: Sequence[int], frames: int | None = None
) -> np.ndarray:
    """Inverse of :func:`patchify`: ``[N, P]`` tokens of a ``(T', H', W')`` grid to ``[T, H, W, C]``.

    ``frames`` (default ``T' * pt``) cuts off the frames :func:`patchify` repeated as padding.
    """
    pt, ph, pw = patch
    gt, gh, gw = (int(g) for g in grid)
    channels = patches.shape[-1] // (pt * ph * pw)
    clip = patches[: gt * gh * gw].reshape(gt, gh, gw, pt, ph, pw, channels)
    clip = clip.transpose(0, 3, 1, 4, 2, 5, 6).reshape(gt * pt, gh * ph, gw * pw, channels)
    return clip[: frames if frames is not None else gt * pt]
