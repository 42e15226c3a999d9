"""Latent caching: clips through a trained autoencoder into a latent clip store, once, before training.

    sora-jax encode --autoencoder runs/vae_world --input STORE --output LATENTS   # a prepared store
    sora-jax encode --autoencoder runs/vae_world --world 2000 --output LATENTS    # physics-world clips

A latent DiT then trains on ``LATENTS`` (``data.store``) without running the encoder, and its
samples are decoded by the same autoencoder.

The output is a :class:`~sora_jax.data.clip_store.ClipStore` of float16 ``[T', H', W', z]``
posterior means, one per input clip, with the input's id, frame rate, caption, caption
embedding and sound (a pixel store's clip sound is copied unchanged, at the store's rate and
channels, with its ``"sound"``/``"silent"``/``"none"`` state; physics-world clips get none).
A stored clip's ingest scores and perceptual hash are copied too, so clip selection works on latents.
Its ``extra`` metadata holds (keys and schema defined in :mod:`sora_jax.data.clip_store`)

* ``"autoencoder"``: which run and checkpoint made the latents and its compression factors (a
  resumed encode must use the same one; a DiT run checks it against ``model.autoencoder``);
* ``"latent_stats"``: per-channel ``mean`` and ``std`` of the latents, over up to ``stats_clips``
  clips spread through the store, written when encoding finishes. Training normalises latents with
  them and sampling undoes it, so the DiT sees unit-scale data whatever scale the autoencoder chose.

Clips are committed in groups of ``flush_every``; a rerun skips the ids already in the output (without
reading their pixels), so an interrupted encode resumes where it stopped. A clip the encoder cannot
take (smaller than one latent pixel) or whose latents are not finite is skipped and counted, never fatal.

Data parallel over the host's accelerators: each device gets its own copy of the autoencoder's weights
and one thread that encodes a clip at a time on it (:class:`DataParallelEncoder`), so clips of any
shape run side by side, while the results are written by one thread in the input's order (resuming
works as above). A copy compiles its own programs, once per clip shape and device. On CPU only one
device is used (:func:`encode_devices`): fake host devices share the same cores.

Sharded: N workers each encode the clips whose id their :class:`~sora_jax.data.shards.Shard` owns
(``keep`` of :func:`store_clips` and :func:`world_clips`) into their own shard store of one dataset
(``sora-jax encode --shard I --num-shards N``, or the engine's environment); each shard resumes on its
own and holds the latent statistics of its own clips.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import jax
import numpy as np
from flax import nnx

from sora_jax.data import world

# Callers that import the schema keys from here, where they used to be defined, still get them.
from sora_jax.data.clip_store import AUTOENCODER_KEY, STATS_KEY, ClipStore

log = logging.getLogger("sora_jax")


@dataclasses.dataclass
class EncodeReport:
    clips_written: int = 0
    clips_present: int = 0  # Already in the output (a resumed encode).
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> count
    devices: dict[str, int] = dataclasses.field(default_factory=dict)  # device -> clips it encoded

    def skip(self, clip_id: str, reason: str) -> None:
        log.warning("skipping %s: %s", clip_id, reason)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclasses.dataclass(frozen=True)
class _Clip:
    clip_id: str
    frames: np.ndarray | None  # uint8 [T, H, W, 3]; None until loaded() for a stored clip
    fps: float
    caption: str
    source: str
    start: float
    caption_embedding: np.ndarray | None
    audio: np.ndarray | None = None  # float32 [samples, C], the clip's sound as its store keeps it
    scores: dict[str, float] | None = None  # The pixel clip's ingest scores, kept for clip selection.
    phash: str = ""  # Its perceptual hash ("" when none).
    # Reads the frames, caption embedding and sound of a clip listed without them.
    load: Callable[[], _Clip] | None = None

    def loaded(self) -> _Clip:
        """The clip with its data: itself, or what :attr:`load` reads."""
        return self.load() if self.frames is None and self.load is not None else self


def world_clip_id(seed: int, index: int) -> str:
    """The clip id of physics-world clip ``index`` of ``seed`` in a latent store."""
    return f"world/{seed}/{index}"


def world_clips(
    count: int,
    seed: int,
    shape: tuple[int, int, int],
    fps: tuple[float, float],
    embedder: Any = None,
    keep: Callable[[str], bool] | None = None,
) -> Iterator[_Clip]:
    """Physics-world clips ``0 .. count - 1`` of ``seed`` at ``shape = (T, H, W)``, each at its own
    frame rate in ``fps``, captions embedded by ``embedder`` when given; only those whose id ``keep``
    takes (e.g. a shard's ``owns``) when given, and the others are never rendered."""

    def rate(index: int) -> float:
        return float(np.random.default_rng([seed, index]).uniform(*fps))

    indices = [i for i in range(count) if keep is None or keep(world_clip_id(seed, i))]
    for index, clip in zip(indices, world.make_clips(seed, indices, shape, rate), strict=True):
        embedding = embedder(clip.caption) if embedder is not None else None
        yield _Clip(world_clip_id(seed, index), clip.frames, clip.fps, clip.caption, "world", 0.0, embedding)


def store_clips(store: Any, keep: Callable[[str], bool] | None = None) -> Iterator[_Clip]:
    """Every clip of a pixel store (a :class:`ClipStore` or any reader with its API, such as a sharded
    dataset's) in position order, with its caption embedding when the store has them and its sound
    when it has one; only those whose id ``keep`` takes when given.

    The records are read a part of the index at a time (``store.iter_records()``), so the first clip
    comes at once and memory stays flat however large the store; a clip's data is read only when
    :meth:`_Clip.loaded` asks for it, so clips another shard owns, or a resumed encode already holds,
    cost no pixel reads.

    Raises:
        ValueError: the store holds latents, not RGB pixels.
    """
    if store.dtype != np.uint8 or store.channels != 3:
        raise ValueError(
            f"{store.path} holds {store.dtype} x{store.channels} clips, not RGB pixels to encode"
        )

    def load(position: int, listed: _Clip) -> _Clip:
        embedding = store.read_caption_embedding(position) if store.caption_dim else None
        return dataclasses.replace(
            listed,
            frames=store.read(position),
            caption_embedding=embedding,
            audio=store.read_audio(position),
            load=None,
        )

    for position, record in enumerate(store.iter_records()):
        if keep is not None and not keep(record.clip_id):
            continue
        listed = _Clip(
            record.clip_id,
            None,
            record.fps,
            record.caption,
            record.source,
            record.start,
            None,
            None,
            dict(record.scores),
            record.phash,
        )
        yield dataclasses.replace(listed, load=functools.partial(load, position, listed))


def encode_devices() -> list[jax.Device]:
    """The devices an encode spreads its clips over: this host's accelerators (``jax.local_devices()``),
    or on CPU only the first one, since CPU devices (``--xla_force_host_platform_device_count``) share
    the same cores and one computation already uses all of them."""
    devices = jax.local_devices()
    return devices[:1] if devices[0].platform == "cpu" else devices


class DataParallelEncoder:
    """``autoencoder.encode`` on several devices at once, one clip per device at a time.

    Each device holds its own copy of the weights and has one thread that runs the (blocking) encode
    of a clip there; clips of any shape go to whichever device is free. Use as a context manager;
    :meth:`submit` returns a future of the clip's latents (or of its ValueError: too small).

    On one CPU device the encode runs in the caller's thread when submitted (the future is already
    done): one encode there already uses every core, so reading the next clip alongside it gains
    nothing, and the process then runs no XLA work in a second thread.
    """

    def __init__(self, autoencoder: Any, devices: Sequence[jax.Device] | None = None) -> None:
        """``autoencoder``: an object with ``encode(frames)`` and an NNX module ``vae`` holding its
        weights (a TrainedAutoencoder or WanAutoencoder); ``devices``: default :func:`encode_devices`."""
        self.devices = list(devices) if devices is not None else encode_devices()
        if not self.devices:
            raise ValueError("no device to encode on")
        graphdef, weights = nnx.split(autoencoder.vae)
        self._free: queue.SimpleQueue[tuple[jax.Device, Any]] = queue.SimpleQueue()
        for device in self.devices:
            copy = nnx.merge(graphdef, jax.device_put(weights, device))
            self._free.put((device, dataclasses.replace(autoencoder, vae=copy)))
        inline = len(self.devices) == 1 and self.devices[0].platform == "cpu"
        self._pool = (
            None if inline else futures.ThreadPoolExecutor(len(self.devices), thread_name_prefix="encode")
        )
        self._lock = threading.Lock()
        self.encoded: collections.Counter[str] = collections.Counter()  # Clips per device, so far.

    @property
    def depth(self) -> int:
        """Clips worth keeping submitted ahead of the one being written: every device busy, and the
        next clip read while the oldest finishes."""
        return 2 * len(self.devices)

    def submit(self, frames: np.ndarray) -> futures.Future[np.ndarray]:
        """Encodes uint8 ``[T, H, W, 3]`` frames on the next free device (see ``autoencoder.encode``)."""
        if self._pool is not None:
            return self._pool.submit(self._encode, frames)
        done: futures.Future[np.ndarray] = futures.Future()
        try:
            done.set_result(self._encode(frames))
        except Exception as error:  # Delivered by result(), as the pool's future would.
            done.set_exception(error)
        return done

    def _encode(self, frames: np.ndarray) -> np.ndarray:
        # At most one task per thread and one thread per device: a copy is always free here.
        device, autoencoder = self._free.get()
        try:
            # The frames it uploads land on this device (the setting is per thread), where its weights are.
            with jax.default_device(device):
                latents = autoencoder.encode(frames)
            with self._lock:
                self.encoded[str(device)] += 1
            return latents
        finally:
            self._free.put((device, autoencoder))

    def __enter__(self) -> DataParallelEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


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
    devices: Sequence[jax.Device] | None = None,
    empty_ok: bool = False,
) -> EncodeReport:
    """Encodes ``clips`` with ``autoencoder`` (a :class:`~sora_jax.autoencoder.trained.TrainedAutoencoder`,
    or a pretrained :class:`~sora_jax.wan.autoencoder.WanAutoencoder`, which brings its latent statistics)
    into the latent store at ``output`` (created, or resumed when it exists), then writes its
    latent statistics. ``audio_sample_rate`` and ``audio_channels``: the sound format of the
    clips' sound, the input store's (rate 0: the clips carry none).

    The clips are encoded on ``devices`` (default :func:`encode_devices`) side by side and written in
    their input order; the store is the same whatever the devices. ``empty_ok``: ``clips`` may be
    none at all (``output`` is a shard of a dataset that owns none of its clips); the store is then
    left empty, with statistics of zero clips (mean 0, std 1), so that readers see it finished.

    Raises:
        ValueError: ``output`` exists but was made by another autoencoder or with other captions
            or sound format; or clips were given and none could be encoded.
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

    def write(clip: _Clip, encoded: futures.Future[np.ndarray]) -> None:
        nonlocal staged
        try:
            latents = encoded.result()
        except ValueError as error:  # Smaller than one latent pixel.
            report.skip(clip.clip_id, f"too small: {error}")
            return
        if not np.isfinite(latents).all() or np.abs(latents).max() > np.finfo(np.float16).max:
            report.skip(clip.clip_id, "latents not finite in float16")
            return
        store.append(
            latents.astype(np.float16),
            clip_id=clip.clip_id,
            fps=clip.fps,
            caption=clip.caption,
            source=clip.source,
            start=clip.start,
            caption_embedding=clip.caption_embedding,
            audio=clip.audio,
            scores=clip.scores,
            phash=clip.phash,
        )
        report.clips_written += 1
        staged += 1
        if staged >= flush_every:
            store.flush()
            staged = 0
            log.info("encoded %d clips", report.clips_written)

    with DataParallelEncoder(autoencoder, devices) as encoder:
        # In input order; an id already in flight counts as present, as it would once written.
        in_flight: collections.deque[tuple[_Clip, futures.Future[np.ndarray]]] = collections.deque()
        in_flight_ids: set[str] = set()
        for clip in clips:
            if store.has(clip.clip_id) or clip.clip_id in in_flight_ids:
                report.clips_present += 1
                continue
            clip = clip.loaded()  # Only now: a clip already present is never read.
            in_flight.append((clip, encoder.submit(clip.frames)))
            in_flight_ids.add(clip.clip_id)
            while len(in_flight) > encoder.depth:
                done, _ = in_flight[0]
                write(*in_flight.popleft())
                in_flight_ids.discard(done.clip_id)
        while in_flight:
            write(*in_flight.popleft())
        report.devices = dict(encoder.encoded)
    log.info("clips encoded per device: %s", report.devices)
    store.flush()
    owned = report.clips_written + report.clips_present + sum(report.skipped.values())
    if not len(store) and not (empty_ok and owned == 0):
        raise ValueError(f"no clip could be encoded into {output}: {report.skipped}")
    # A pretrained VAE's model expects its own normalisation (Wan's); a run's autoencoder gets the store's.
    fixed = getattr(autoencoder, "latent_stats", None)
    if fixed is not None:
        store.extra[STATS_KEY] = fixed()
    elif len(store):
        store.extra[STATS_KEY] = latent_stats(store, stats_clips)
    else:  # A shard that owns no clip: finished, and weighs nothing when shards' statistics are pooled.
        channels = store.channels
        store.extra[STATS_KEY] = {"mean": [0.0] * channels, "std": [1.0] * channels, "clips": 0}
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
