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

With sound (``audio.enabled``), a clip's audio tokens follow its video tokens in its row, in the same
segment, and the batch has three more fields (without sound it has exactly the fields above):

==================  ==============  ==========================================================
modality            [B, L] i32      0 a video token (and padding), 1 an audio token
times               [B, L] f32      the token's time on its clip's video clock in temporal
                                    patches: a video token its t, an audio token its centre
                                    (``sora_jax.audio.codec.audio_token_times``)
clip_audio          [B, S] bool     the clip has audio tokens (images and silent sources do not)
==================  ==============  ==========================================================

``patches`` is then ``max(P_v, P_a)`` wide, each token zero beyond its own modality's width
(:func:`token_widths`); audio token ``k`` of a clip has ``positions`` ``(k, 0, 0)``, and
``cond_mask`` marks given audio tokens as it marks video ones.

With frame-level conditioning (``conditioning.frame_level``), one more field:

==================  ==============  ==========================================================
given_frames        [B, L] i32      bit f set: frame f of the token's temporal patch is given
                                    clean inside a token that is otherwise generated (0 for
                                    every other token, wholly given ones included)
==================  ==============  ==========================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import ml_collections
import numpy as np

AUDIO, VIDEO = 1, 0  # Values of the batch's ``modality``.


@dataclasses.dataclass(frozen=True)
class PackedClip:
    """One clip ready to pack: its patches, their coordinates and its caption tokens; with sound, its
    audio tokens and their times (all three ``audio_*`` given together, or none)."""

    patches: np.ndarray  # float32 [N, P]
    positions: np.ndarray  # int32 [N, 3]
    grid: tuple[int, int, int]  # (T', H', W'), N = T' * H' * W'
    frames: int
    fps: float
    text_tokens: np.ndarray  # int32 [M]
    cond_mask: np.ndarray | None = None  # bool [N]; None = no conditioning tokens
    text_embedding: np.ndarray | None = None  # float32 [M, Dt], a frozen encoder's caption states
    audio_patches: np.ndarray | None = None  # float32 [Na, P_a], the codec's tokens of its sound
    audio_times: np.ndarray | None = None  # float32 [Na], on the video clock in temporal patches
    audio_cond_mask: np.ndarray | None = None  # bool [Na]; None = no given audio tokens
    given_frames: np.ndarray | None = None  # int32 [N] bits of given frames; None = none

    @property
    def num_tokens(self) -> int:
        """Tokens the clip takes in a row: its video tokens and its audio tokens."""
        return self.patches.shape[0] + self.num_audio_tokens

    @property
    def num_audio_tokens(self) -> int:
        return 0 if self.audio_patches is None else self.audio_patches.shape[0]


def token_widths(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """``(P_v, P_a)``: the features of a video token (``pt * ph * pw * model.channels``) and of an
    audio token (the codec's ``patch_dim``; 0 without ``audio.enabled``). A batch's ``patches`` are
    ``max(P_v, P_a)`` wide."""
    video = math.prod(config.model.patch_size) * config.model.channels
    if not config.audio.enabled:
        return video, 0
    from sora_jax.audio.codec import codec_from_config

    return video, codec_from_config(config.audio).patch_dim


def empty_batch(
    rows: int,
    seq_len: int,
    patch_dim: int,
    max_clips: int,
    text_len: int,
    text_dim: int = 0,
    audio: bool = False,
    frame_level: bool = False,
) -> dict[str, np.ndarray]:
    """An all-padding batch of the packed layout (the shape every batch of a run has); with
    ``text_dim > 0`` it has ``text_embeddings`` of that width, with ``audio`` the sound fields
    (``patch_dim`` is then the wider of the two modalities'), with ``frame_level`` ``given_frames``."""
    embeddings = {"text_embeddings": np.zeros((rows, text_len, text_dim), np.float32)} if text_dim else {}
    batch = embeddings | {
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
    if audio:
        batch |= {
            "modality": np.zeros((rows, seq_len), np.int32),
            "times": np.zeros((rows, seq_len), np.float32),
            "clip_audio": np.zeros((rows, max_clips), bool),
        }
    if frame_level:
        batch["given_frames"] = np.zeros((rows, seq_len), np.int32)
    return batch


def pack_rows(
    rows: Sequence[Sequence[PackedClip]],
    *,
    seq_len: int,
    patch_dim: int,
    max_clips: int,
    text_len: int,
    text_dim: int = 0,
    audio: bool = False,
    frame_level: bool = False,
) -> dict[str, np.ndarray]:
    """Lay out ``rows`` (each a list of clips that fit together) as one packed batch.

    With ``text_dim > 0`` every clip brings its ``text_embedding`` ``[M, text_dim]``. With ``audio``
    the batch has the sound fields, and a clip's audio tokens (if it has any) follow its video
    tokens; each modality's patches are zero-padded to ``patch_dim``. With ``frame_level`` it has
    ``given_frames``, from each clip's own (zeros for a clip without).

    Raises:
        ValueError: a row whose clips exceed ``seq_len`` tokens (audio tokens included),
            ``text_len`` caption tokens or ``max_clips`` clips (the caller decides what goes in a
            row; this only lays it out), or a clip with audio tokens in a batch without ``audio``.
    """
    batch = empty_batch(len(rows), seq_len, patch_dim, max_clips, text_len, text_dim, audio, frame_level)
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
            video = clip.patches.shape[0]
            tokens, texts = slice(offset, offset + video), slice(text_offset, text_offset + m)
            batch["patches"][r, tokens, : clip.patches.shape[1] if audio else patch_dim] = clip.patches
            batch["segment_ids"][r, offset : offset + n] = slot + 1
            batch["positions"][r, tokens] = clip.positions
            if clip.cond_mask is not None:
                batch["cond_mask"][r, tokens] = clip.cond_mask
            if clip.given_frames is not None:
                if not frame_level:
                    raise ValueError(f"row {r} clip {slot} has given frames; pack it with frame_level=True")
                batch["given_frames"][r, tokens] = clip.given_frames
            if audio:
                _place_audio(batch, r, slot, offset, clip)
            elif clip.audio_patches is not None:
                raise ValueError(f"row {r} clip {slot} has audio tokens; pack it with audio=True")
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


def _place_audio(batch: dict[str, np.ndarray], row: int, slot: int, offset: int, clip: PackedClip) -> None:
    """The sound fields of ``clip`` (slot ``slot`` of ``row``, its tokens from ``offset``): its video
    tokens' times, and its audio tokens right after its video tokens."""
    video, sound = clip.patches.shape[0], clip.num_audio_tokens
    batch["times"][row, offset : offset + video] = clip.positions[:, 0]
    if not sound:
        return
    if clip.audio_times is None or clip.audio_times.shape != (sound,):
        raise ValueError(f"row {row} clip {slot}: needs the times [{sound}] of its audio tokens")
    tokens = slice(offset + video, offset + video + sound)
    batch["patches"][row, tokens, : clip.audio_patches.shape[1]] = clip.audio_patches
    batch["positions"][row, tokens, 0] = np.arange(sound)
    batch["modality"][row, tokens] = AUDIO
    batch["times"][row, tokens] = clip.audio_times
    if clip.audio_cond_mask is not None:
        batch["cond_mask"][row, tokens] = clip.audio_cond_mask
    batch["clip_audio"][row, slot] = True


def unpack_clip(batch: dict[str, np.ndarray], row: int, segment: int) -> np.ndarray:
    """The ``[N, P]`` patches of clip ``segment`` (1-based) of ``row``, in their packed order (with
    sound: its video tokens, then its audio tokens, as ``modality`` says)."""
    return batch["patches"][row][batch["segment_ids"][row] == segment]
