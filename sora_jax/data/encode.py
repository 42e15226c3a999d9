"""Latent caching: clips through a trained autoencoder into a latent clip store, once, before training.

    sora-jax encode --autoencoder runs/vae_world --input STORE --output LATENTS   # a prepared store
    sora-jax encode --autoencoder runs/vae_world --world 2000 --output LATENTS    # physics-world clips

A latent DiT then trains on ``LATENTS`` (``data.store``) without running the encoder, and its
samples are decoded by the same autoencoder.

The output is a :class:`~sora_jax.data.clip_store.ClipStore` of float16 ``[T', H', W', z]``
posterior means, one per input clip, with the input's id, frame rate, caption, caption
embedding and sound (a pixel store's clip sound is copied unchanged, at the store's rate and
channels, with its ``"sound"``/``"silent"``/``"none"`` state; physics-world clips get none).
Its ``extra`` metadata holds (keys and schema defined in :mod:`sora_jax.data.clip_store`)

* ``"autoencoder"``: which run and checkpoint made the latents and its compression factors (a
  resumed encode must use the same one; a DiT run checks it against ``model.autoencoder``);
* ``"latent_stats"``: per-channel ``mean`` and ``std`` of the latents, over up to ``stats_clips``
  clips spread through the store, written when encoding finishes. Training normalises latents with
  them and sampling undoes it, so the DiT sees unit-scale data whatever scale the autoencoder chose.

Clips are committed in groups of ``flush_every``; a rerun skips the ids already in the output, so an
interrupted encode resumes where it stopped. A clip the encoder cannot take (smaller than one latent
pixel) or whose latents are not finite is skipped and counted, never fatal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from sora_jax.data import world

# Callers that import the schema keys from here, where they used to be defined, still get them.
from sora_jax.data.clip_store import AUTOENCODER_KEY, STATS_KEY, ClipStore

log = logging.getLogger("sora_jax")


@dataclasses.dataclass
class EncodeReport:
    clips_written: int = 0
    clips_present: int = 0  # Already in the output (a resumed encode).
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> count

    def skip(self, clip_id: str, reason: str) -> None:
        log.warning("skipping %s: %s", clip_id, reason)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclasses.dataclass(frozen=True)
class _Clip:
    clip_id: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    fps: float
    caption: str
    source: str
    start: float
    caption_embedding: np.ndarray | None
    audio: np.ndarray | None = None  # float32 [samples, C], the clip's sound as its store keeps it


def world_clips(
    count: int, seed: int, shape: tuple[int, int, int], fps: tuple[float, float], embedder: Any = None
) -> Iterator[_Clip]:
    """Physics-world clips ``0 .. count - 1`` of ``seed`` at ``shape = (T, H, W)``, each at its own
    frame rate in ``fps``, captions embedded by ``embedder`` when given."""

    def rate(index: int) -> float:
        return float(np.random.default_rng([seed, index]).uniform(*fps))

    for index, clip in enumerate(world.make_clips(seed, range(count), shape, rate)):
        embedding = embedder(clip.caption) if embedder is not None else None
        yield _Clip(f"world/{seed}/{index}", clip.frames, clip.fps, clip.caption, "world", 0.0, embedding)


def store_clips(store: ClipStore) -> Iterator[_Clip]:
    """Every clip of a pixel store, with its caption embedding when the store has them and its
    sound when it has one."""
    if store.dtype != np.uint8 or store.channels != 3:
        raise ValueError(
            f"{store.path} holds {store.dtype} x{store.channels} clips, not RGB pixels to encode"
        )
    for index, record in enumerate(store.records):
        embedding = store.read_caption_embedding(index) if store.caption_dim else None
        yield _Clip(
            record.clip_id,
            store.read(index),
            record.fps,
            record.caption,
            record.source,
            record.start,
            embedding,
            store.read_audio(index),
        )


def encode_into_store(
    autoencoder: Any,
    clips: Iterator[_Clip],
    output: str,
    *,
    caption_dim: int = 0,
    caption_encoder: dict[str, Any] | None = None,
    audio_sample_rate: int = 0,
    audio_channels: int = 1,
    flush_every: int = 32,
    stats_clips: int = 256,
) -> EncodeReport:
    """Encodes ``clips`` with ``autoencoder`` (a :class:`~sora_jax.autoencoder.trained.TrainedAutoencoder`,
    or a pretrained :class:`~sora_jax.wan.autoencoder.WanAutoencoder`, which brings its latent statistics)
    into the latent store at ``output`` (created, or resumed when it exists), then writes its
    latent statistics. ``audio_sample_rate`` and ``audio_channels``: the sound format of the
    clips' sound, the input store's (rate 0: the clips carry none).

    Raises:
        ValueError: ``output`` exists but was made by another autoencoder or with other captions
            or sound format.
    """
    made_by = autoencoder.describe()
    store = ClipStore.create(
        output,
        dtype="float16",
        channels=autoencoder.config.latent_channels,
        extra={AUTOENCODER_KEY: made_by},
        exist_ok=True,
        caption_dim=caption_dim,
        caption_encoder=caption_encoder,
        audio_sample_rate=audio_sample_rate,
        audio_channels=audio_channels,
    )
    if store.extra.get(AUTOENCODER_KEY) != made_by:
        raise ValueError(
            f"{output} holds latents of autoencoder {store.extra.get(AUTOENCODER_KEY)}, not {made_by}: "
            "encode into a new store"
        )
    report = EncodeReport()
    staged = 0
    for clip in clips:
        if store.has(clip.clip_id):
            report.clips_present += 1
            continue
        try:
            latents = autoencoder.encode(clip.frames)
        except ValueError as error:  # Smaller than one latent pixel.
            report.skip(clip.clip_id, f"too small: {error}")
            continue
        if not np.isfinite(latents).all() or np.abs(latents).max() > np.finfo(np.float16).max:
            report.skip(clip.clip_id, "latents not finite in float16")
            continue
        store.append(
            latents.astype(np.float16),
            clip_id=clip.clip_id,
            fps=clip.fps,
            caption=clip.caption,
            source=clip.source,
            start=clip.start,
            caption_embedding=clip.caption_embedding,
            audio=clip.audio,
        )
        report.clips_written += 1
        staged += 1
        if staged >= flush_every:
            store.flush()
            staged = 0
            log.info("encoded %d clips", report.clips_written)
    store.flush()
    if not len(store):
        raise ValueError(f"no clip could be encoded into {output}: {report.skipped}")
    # A pretrained VAE's model expects its own normalisation (Wan's); a run's autoencoder gets the store's.
    fixed = getattr(autoencoder, "latent_stats", None)
    store.extra[STATS_KEY] = fixed() if fixed is not None else latent_stats(store, stats_clips)
    store.compact()
    log.info("latent stats: %s", json.dumps(store.extra[STATS_KEY]))
    return report


def latent_stats(store: ClipStore, max_clips: int) -> dict[str, Any]:
    """Per-channel mean and standard deviation of the latents of up to ``max_clips`` clips spread
    evenly through ``store`` (float64 sums; every latent pixel of a chosen clip counts once)."""
    picks = np.unique(np.linspace(0, len(store) - 1, min(max_clips, len(store))).round().astype(int))
    total = np.zeros(store.channels)
    squares = np.zeros(store.channels)
    count = 0
    for index in picks:
        values = store.read(int(index)).reshape(-1, store.channels).astype(np.float64)
        total += values.sum(0)
        squares += np.square(values).sum(0)
        count += len(values)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist(), "clips": len(picks)}
