"""Packing clips of any shape into rows of one static shape: the batch contract between data and model.

A batch is a dict of numpy arrays (host side, one process's rows):

==================  ==============  ==========================================================
field               shape           meaning
==================  ==============  ==========================================================
patches             [B, L, P] f32   clean spacetime patches of every clip, row after row
segment_ids         [B, L] i32      which clip of the row a token belongs to (1..S); 0 = padding
positions           [B, L, 3] i32   (t, h, w) patch coordinate of the token inside its clip
cond_mask           [B, L] bool     tokens given clean as conditioning (first frame, prefix, ...)
text_tokens         [B, Lt] i32     caption token ids of the row's clips, packed the same way
text_embeddings     [B, Lt, Dt] f32 (only with a frozen text encoder) its states of those tokens
text_segment_ids    [B, Lt] i32     which clip a caption token belongs to; 0 = padding
text_positions      [B, Lt] i32     index of the token inside its caption
clip_grid           [B, S, 3] i32   token grid (T', H', W') of clip s+1 (zeros for unused slots)
clip_frames         [B, S] i32      true frame count of the clip (before temporal patch padding)
clip_fps            [B, S] f32      frame rate of the clip
==================  ==============  ==========================================================

Segment ``s`` (1-based) of a row describes the clip whose metadata sits at slot ``s - 1``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PackedClip:
    """One clip ready to pack: its patches, their coordinates and its caption tokens."""

    patches: np.ndarray  # float32 [N, P]
    positions: np.ndarray  # int32 [N, 3]
    grid: tuple[int, int, int]  # (T', H', W'), N = T' * H' * W'
    frames: int
    fps: float
    text_tokens: np.ndarray  # int32 [M]
    cond_mask: np.ndarray | None = None  # bool [N]; None = no conditioning tokens
    text_embedding: np.ndarray | None = None  # float32 [M, Dt], a frozen encoder's caption states

    @property
    def num_tokens(self) -> int:
        return self.patches.shape[0]


def empty_batch(
    rows: int, seq_len: int, patch_dim: int, max_clips: int, text_len: int, text_dim: int = 0
) -> dict[str, np.ndarray]:
    """An all-padding batch of the packed layout (the shape every batch of a run has); with
    ``text_dim > 0`` it has ``text_embeddings`` of that width."""
    embeddings = {"text_embeddings": np.zeros((rows, text_len, text_dim), np.float32)} if text_dim else {}
    return embeddings | {
        "patches": np.zeros((rows, seq_len, patch_dim), np.float32),
        "segment_ids": np.zeros((rows, seq_len), np.int32),
        "positions": np.zeros((rows, seq_len, 3), np.int32),
        "cond_mask": np.zeros((rows, seq_len), bool),
        "text_tokens": np.zeros((rows, text_len), np.int32),
        "text_segment_ids": np.zeros((rows, text_len), np.int32),
        "text_positions": np.zeros((rows, text_len), np.int32),
        "clip_grid": np.zeros((rows, max_clips, 3), np.int32),
        "clip_frames": np.zeros((rows, max_clips), np.int32),
        "clip_fps": np.zeros((rows, max_clips), np.float32),
    }


def pack_rows(
    rows: Sequence[Sequence[PackedClip]],
    *,
    seq_len: int,
    patch_dim: int,
    max_clips: int,
    text_len: int,
    text_dim: int = 0,
) -> dict[str, np.ndarray]:
    """Lay out ``rows`` (each a list of clips that fit together) as one packed batch.

    With ``text_dim > 0`` every clip brings its ``text_embedding`` ``[M, text_dim]``.

    Raises:
        ValueError: a row whose clips exceed ``seq_len`` tokens, ``text_len`` caption tokens or
            ``max_clips`` clips (the caller decides what goes in a row; this only lays it out).
    """
    batch = empty_batch(len(rows), seq_len, patch_dim, max_clips, text_len, text_dim)
    for r, clips in enumerate(rows):
        if len(clips) > max_clips:
            raise ValueError(f"row {r} has {len(clips)} clips, more than max_clips={max_clips}")
        offset = text_offset = 0
        for slot, clip in enumerate(clips):
            n, m = clip.num_tokens, len(clip.text_tokens)
            if offset + n > seq_len or text_offset + m > text_len:
                raise ValueError(
                    f"row {r} overflows: {offset + n} tokens > {seq_len} "
                    f"or {text_offset + m} caption tokens > {text_len}"
                )
            tokens, texts = slice(offset, offset + n), slice(text_offset, text_offset + m)
            batch["patches"][r, tokens] = clip.patches
            batch["segment_ids"][r, tokens] = slot + 1
            batch["positions"][r, tokens] = clip.positions
            if clip.cond_mask is not None:
                batch["cond_mask"][r, tokens] = clip.cond_mask
            batch["text_tokens"][r, texts] = clip.text_tokens
            if text_dim:
                if clip.text_embedding is None or clip.text_embedding.shape != (m, text_dim):
                    raise ValueError(f"row {r} clip {slot}: needs a caption embedding [{m}, {text_dim}]")
                batch["text_embeddings"][r, texts] = clip.text_embedding
            batch["text_segment_ids"][r, texts] = slot + 1
            batch["text_positions"][r, texts] = np.arange(m)
            batch["clip_grid"][r, slot] = clip.grid
            batch["clip_frames"][r, slot] = clip.frames
            batch["clip_fps"][r, slot] = clip.fps
            offset, text_offset = offset + n, text_offset + m
    return batch


def unpack_clip(batch: dict[str, np.ndarray], row: int, segment: int) -> np.ndarray:
    """The ``[N, P]`` patches of clip ``segment`` (1-based) of ``row``, in their packed order."""
    return batch["patches"][row][batch["segment_ids"][row] == segment]
