"""Physics-world clips into a pixel clip store, with each caption's states by a frozen text encoder.

    sora-jax prepare --world 6000 --output STORE --text-encoder DIR

A run without ``data.store`` trains on the world from memory, rendering every clip at the shape it
asks for; a frozen ``model.text_encoder`` instead reads caption states computed once and stored
beside each clip (``data.store``). This writes such a store: world clips ``0 .. N-1``
of a seed, rendered at one shape (``[T, H, W, 3]`` uint8, each at its own frame rate), with their
captions and, given an encoder, their captions' states. Clip ids are those of latent world stores
(:func:`sora_jax.data.encode.world_clip_id`), so a pixel and a latent store of one seed hold the
same scenes under the same ids.

A training run reads it as any prepared store: its clips are cut in time and scaled down to the
shapes the run draws, while a caption tells of the whole clip, so a cut clip's caption can name
motion its frames do not show (a world run renders each clip at its drawn shape and has no such
mismatch).

The store's ``extra["world"]`` records the seed, shape and frame rates; a rerun with the same ones
resumes (clips already there are neither rendered nor embedded again), with others it is refused.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from sora_jax.data.clip_store import ClipStore
from sora_jax.data.encode import world_clip_id, world_clips

log = logging.getLogger("sora_jax")

WORLD_KEY = "world"  # extra[WORLD_KEY]: {"seed", "shape", "fps"} of the clips a world store holds.


@dataclasses.dataclass
class WorldStoreReport:
    clips_written: int = 0
    clips_present: int = 0  # Already in the store (a resumed run).


def write_world_store(
    count: int,
    output: str,
    *,
    seed: int = 0,
    shape: tuple[int, int, int] = (16, 32, 32),
    fps: tuple[float, float] = (4.0, 8.0),
    embedder: Any = None,
    flush_every: int = 64,
) -> WorldStoreReport:
    """Writes physics-world clips ``0 .. count - 1`` of ``seed`` at ``shape = (T, H, W)`` into the
    pixel store at ``output`` (created, or resumed), rendered as latent world stores render them
    (:func:`~sora_jax.data.encode.world_clips`: clip ``i`` at its own frame rate drawn from
    ``fps``), and, with ``embedder`` (a :class:`~sora_jax.text.embedder.CaptionEmbedder`), each
    caption's states ``[L, dim]``.

    Raises:
        ValueError: a bad count, shape or frame rate range, or ``output`` holds other clips: not
            a world store, another seed, shape or frame rates, or other caption embeddings.
    """
    if count < 1:
        raise ValueError(f"the number of world clips must be at least 1, got {count}")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"the clip shape (frames, height, width) must be positive, got {shape}")
    low, high = fps
    if not 0 < low <= high:
        raise ValueError(f"the frame rate range must be 0 < MIN <= MAX, got {fps}")
    settings = {"seed": int(seed), "shape": [int(s) for s in shape], "fps": [float(low), float(high)]}
    store = ClipStore.create(
        output,
        dtype="uint8",
        channels=3,
        extra={WORLD_KEY: settings},
        exist_ok=True,
        caption_dim=embedder.dim if embedder is not None else 0,
        caption_encoder=embedder.description if embedder is not None else None,
    )
    held = store.extra.get(WORLD_KEY)
    if held != settings:
        made = f"world clips of {held}" if held else "clips that are not physics-world clips"
        raise ValueError(f"{output} holds {made}, not of {settings}: write into a new store")

    # Only the clips not yet stored are rendered and embedded: a resumed run redoes nothing.
    missing = {world_clip_id(seed, i) for i in range(count) if not store.has(world_clip_id(seed, i))}
    report = WorldStoreReport(clips_present=count - len(missing))
    staged = 0
    for clip in world_clips(count, seed, tuple(shape), (low, high), embedder, keep=missing.__contains__):
        store.append(
            clip.frames,
            clip_id=clip.clip_id,
            fps=clip.fps,
            caption=clip.caption,
            source=clip.source,
            start=clip.start,
            caption_embedding=clip.caption_embedding,
        )
        report.clips_written += 1
        staged += 1
        if staged >= flush_every:
            store.flush()
            staged = 0
            log.info("wrote %d world clips", report.clips_written)
    store.flush()
    store.compact()
    return report
