"""Where clips come from: the physics-world generator and prepared clip stores.

A source answers two questions about its clip ``index``: which (frames, height, width) shapes it
can deliver (:meth:`shapes`), and the clip at one of them (:meth:`load`). The packer chooses the
shape, so it can pick one that fills what is left of a row. Both are deterministic in their
arguments and the ``rng`` they are given, so a batch depends only on where it sits in the stream.

Every source takes the config's ``audio`` section (None, or ``enabled`` false: no sound). With
sound on, a loaded clip carries the sound of exactly its frames (:attr:`LoadedClip.audio`) at
``audio.sample_rate`` Hz and ``audio.channels`` channels: the world renders it from the clip's
own simulation; a store gives what it keeps for the clip's time span, resampled and mixed when
the store keeps another rate or channel count, and None for a clip whose source had no audio track.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import ml_collections
import numpy as np
from PIL import Image

from sora_jax.audio.codec import clip_samples
from sora_jax.data import world
from sora_jax.data.clip_selection import select_clips
from sora_jax.data.clip_store import AUTOENCODER_KEY, STATS_KEY, ClipRecord, ClipStore
from sora_jax.data.shards import ShardedClips, open_clips

log = logging.getLogger("sora_jax")


@dataclasses.dataclass(frozen=True)
class ShapeOptions:
    """Shapes a clip can take: any of ``frames`` with any of ``sizes`` (rows of (height, width))."""

    frames: np.ndarray  # int [F], ascending, starting at 1 (the clip as an image)
    sizes: np.ndarray  # int [Z, 2], (height, width) multiples of the patch

    def tokens(self, patch: tuple[int, int, int]) -> np.ndarray:
        """``[F, Z]`` token count of every (frames, size) combination."""
        pt, ph, pw = patch
        per_frame_group = (self.sizes[:, 0] // ph) * (self.sizes[:, 1] // pw)
        return -(-self.frames[:, None] // pt) * per_frame_group[None, :]


@dataclasses.dataclass(frozen=True)
class LoadedClip:
    frames: np.ndarray  # uint8 [T, H, W, 3] pixels, or float32 [T', H', W', z] normalised latents
    fps: float
    caption: str
    caption_embedding: np.ndarray | None = None  # float32 [L, D], from a store with embeddings
    # float32 [clip_samples(T, fps, sample_rate), C] in [-1, 1]: the sound of exactly the loaded
    # frames (sample n at n / sample_rate s, frame k at k / fps s). None when the source has no
    # audio for this clip or audio is off.
    audio: np.ndarray | None = None


def _sound_on(audio: ml_collections.ConfigDict | None) -> bool:
    return audio is not None and bool(audio.enabled)


def _patch_multiples(low: int, high: int, step: int) -> np.ndarray:
    return np.arange(-(-low // step) * step, high + 1, step)


class WorldSource:
    """The physics world: unlimited clips rendered at exactly the shape asked for."""

    name = "world"

    def __init__(
        self,
        seed: int,
        data: ml_collections.ConfigDict,
        patch: tuple[int, int, int],
        audio: ml_collections.ConfigDict | None = None,
    ):
        self.seed, self.data, self.audio = seed, data, audio
        heights = _patch_multiples(data.side[0], data.side[1], patch[1])
        widths = _patch_multiples(data.side[0], data.side[1], patch[2])
        if not len(heights) or not len(widths):
            raise ValueError(f"data.side={data.side} holds no multiple of the patch {patch[1:]}")
        self._sizes = np.stack(np.meshgrid(heights, widths, indexing="ij"), -1).reshape(-1, 2)
        # One frame (an image) is always on offer, whatever the duration range.
        self._frames = np.union1d([1], np.arange(data.frames[0], data.frames[1] + 1))

    def __len__(self) -> int:
        return 2**31 - 1  # Procedural: no end; indices only seed scenes.

    def shapes(self, index: int) -> ShapeOptions:
        return ShapeOptions(self._frames, self._sizes)

    def load(self, index: int, frames: int, height: int, width: int, rng: np.random.Generator) -> LoadedClip:
        fps = float(rng.uniform(*self.data.fps))
        if not _sound_on(self.audio):
            clip = world.make_clip(self.seed, index, frames=frames, height=height, width=width, fps=fps)
            return LoadedClip(clip.frames, fps, clip.caption)
        from sora_jax.data import world_audio  # Only runs with sound on need the renderer.

        a = self.audio
        clip = world.make_clip(
            self.seed,
            index,
            frames=frames,
            height=height,
            width=width,
            fps=fps,
            caption_sounds=a.caption_sounds,
        )
        audio = world_audio.clip_audio(
            clip, sample_rate=a.sample_rate, channels=a.channels, room_tone=a.room_tone
        )
        return LoadedClip(clip.frames, fps, clip.caption, audio=audio)


class StoreSource:
    """Clips of a prepared store, each resized (aspect kept) and cropped in time to the shape asked.

    Sizes keep the clip's aspect ratio, with an area between ``data.side[0]**2`` and
    ``data.side[1]**2`` and never above the stored size (no upscaling); durations run from one
    frame (an image) up to the stored length, starting at a random frame. Only the clips the
    selection keys keep (``data.min_motion``, ..., ``data.dedup_distance``; see
    :mod:`sora_jax.data.clip_selection`) are drawn: clip ``index`` of this source is the store's
    clip ``positions[index]``.
    """

    name = "store"

    def __init__(
        self,
        store: str | ClipStore,
        data: ml_collections.ConfigDict,
        patch: tuple[int, int, int],
        audio: ml_collections.ConfigDict | None = None,
    ):
        self.store = store = _opened(store)
        self.audio = audio
        path = store.path
        if self.store.dtype != np.uint8 or self.store.channels != 3:
            raise ValueError(f"{path} holds {self.store.dtype} x{self.store.channels} clips, not pixels")
        self.embeddings = bool(self.store.caption_dim)
        if not len(self.store):
            raise ValueError(f"clip store {path} is empty")
        self.positions = select_clips(store, data)
        self.data, self.patch = data, patch
        _note_sound_format(store, audio)

    def __len__(self) -> int:
        return len(self.positions)

    def record(self, index: int) -> ClipRecord:
        """The stored record of this source's clip ``index``."""
        return self.store.record(int(self.positions[index]))

    def shapes(self, index: int) -> ShapeOptions:
        frames, height, width, _ = self.record(index).shape
        _, ph, pw = self.patch
        low, high = self.data.side[0] ** 2, min(self.data.side[1] ** 2, height * width)
        sizes = set()
        for area in np.geomspace(max(min(low, high), ph * pw), high, 12):
            scale = math.sqrt(area / (height * width))
            h, w = int(height * scale) // ph * ph, int(width * scale) // pw * pw
            if h >= ph and w >= pw:
                sizes.add((h, w))
        if not sizes:  # Smaller than one patch after all: the patch itself, upscaled.
            sizes.add((ph, pw))
        longest = min(frames, self.data.frames[1])
        return ShapeOptions(np.arange(1, longest + 1), np.asarray(sorted(sizes)))

    def load(self, index: int, frames: int, height: int, width: int, rng: np.random.Generator) -> LoadedClip:
        index = int(self.positions[index])
        record = self.store.record(index)
        video = self.store.read(index)
        start = int(rng.integers(0, video.shape[0] - frames + 1))
        video = video[start : start + frames]
        if video.shape[1:3] != (height, width):
            video = np.stack(
                [np.asarray(Image.fromarray(f).resize((width, height), Image.BOX)) for f in video]
            )
        audio = _stored_audio(self.store, index, start, frames, self.audio)
        return LoadedClip(
            video,
            record.fps or 1.0,
            record.caption,
            _embedding(self.store, index, self.embeddings),
            audio=audio,
        )


def _opened(store: str | ClipStore | ShardedClips) -> ClipStore | ShardedClips:
    return open_clips(store) if isinstance(store, str) else store


def _embedding(store: ClipStore, index: int, wanted: bool) -> np.ndarray | None:
    return store.read_caption_embedding(index).astype(np.float32) if wanted else None


def _note_sound_format(store: ClipStore, audio: ml_collections.ConfigDict | None) -> None:
    """Logs, once a source, how the store's sound differs from what the config asks for."""
    if not _sound_on(audio):
        return
    if not store.audio_sample_rate:
        log.warning("%s keeps no sound (prepared without audio): its clips get no audio", store.path)
    elif (store.audio_sample_rate, store.audio_channels) != (audio.sample_rate, audio.channels):
        log.info(
            "%s keeps sound at %d Hz x%d; resampling and mixing to audio.sample_rate=%d, audio.channels=%d",
            store.path,
            store.audio_sample_rate,
            store.audio_channels,
            audio.sample_rate,
            audio.channels,
        )


def _stored_audio(
    store: ClipStore, index: int, first: int, frames: int, audio: ml_collections.ConfigDict | None
) -> np.ndarray | None:
    """The sound of frames ``first .. first + frames - 1`` of stored clip ``index`` (video frames at
    the record's fps), float32 ``[clip_samples(frames, fps, audio.sample_rate), audio.channels]``;
    None with sound off, for a clip without a track, or a still image."""
    if not _sound_on(audio):
        return None
    fps = store.record(index).fps
    sound = store.read_audio(index)
    if sound is None or not fps:
        return None
    rate, stored_rate = int(audio.sample_rate), store.audio_sample_rate
    if rate != stored_rate:
        from scipy.signal import resample_poly  # Polyphase, anti-aliased; only stores of other rates.

        common = math.gcd(rate, stored_rate)
        sound = resample_poly(sound, rate // common, stored_rate // common, axis=0).astype(np.float32)
    if sound.shape[1] != audio.channels:
        sound = sound.mean(1, keepdims=True) if audio.channels == 1 else np.repeat(sound, 2, axis=1)
    begin = round(first / fps * rate)
    length = clip_samples(frames, fps, rate)
    span = sound[begin : begin + length]
    if len(span) < length:  # Rounding at the clip's end (or a resampled length one short).
        span = np.pad(span, ((0, length - len(span)), (0, 0)))
    return np.clip(span, -1.0, 1.0).astype(np.float32)


class LatentStoreSource:
    """Clips of a latent store (made by ``sora-jax encode``), normalised by its per-channel statistics.

    Shapes are in latent units: ``data.frames`` and ``data.side`` bound latent frames and latent
    pixels. A shorter clip is the stored clip's first latent frames, which the causal encoder makes
    exactly the latents of the video's first frames (one latent frame: its first frame as an image).
    A smaller size is a crop at a random place, keeping roughly the stored aspect ratio. With
    sound on, a clip of ``T'`` latent frames carries the sound of the ``1 + (T' - 1) *
    temporal_factor`` video frames they encode (``clip_samples`` of those at the record's fps).
    """

    name = "latents"

    def __init__(
        self,
        store: str | ClipStore,
        data: ml_collections.ConfigDict,
        patch: tuple[int, int, int],
        channels: int,
        audio: ml_collections.ConfigDict | None = None,
    ):
        self.store = store = _opened(store)
        self.audio = audio
        path = store.path
        if self.store.dtype == np.uint8:
            raise ValueError(f"{path} holds pixels, not latents")
        if self.store.channels != channels:
            raise ValueError(
                f"{path} holds latents of {self.store.channels} channels; model.channels is {channels}"
            )
        stats = self.store.extra.get(STATS_KEY)
        if not stats:
            raise ValueError(f"{path} has no latent statistics: its encode did not finish; run it again")
        self.mean = np.asarray(stats["mean"], np.float32)
        self.std = np.asarray(stats["std"], np.float32)
        _, ph, pw = patch
        # Store positions of the clips at least one patch in size (smaller ones are skipped) that
        # the selection keys keep (data.min_motion, ...; see sora_jax.data.clip_selection).
        shapes = store.shapes
        fits = (shapes[:, 1] >= ph) & (shapes[:, 2] >= pw)
        if not fits.any():
            raise ValueError(f"clip store {path} holds no clip of at least one patch ({ph}x{pw} latents)")
        self.skipped = len(shapes) - int(fits.sum())
        if self.skipped:
            log.warning("%s: skipping %d clips smaller than one %dx%d patch", path, self.skipped, ph, pw)
        self.usable = select_clips(store, data, eligible=fits)
        self.data, self.patch = data, patch
        self.embeddings = bool(self.store.caption_dim)
        # Latent frame 0 encodes video frame 0, each later one the next temporal_factor frames.
        self.temporal_factor = int((store.extra.get(AUTOENCODER_KEY) or {}).get("temporal_factor", 1))
        _note_sound_format(store, audio)

    def __len__(self) -> int:
        return len(self.usable)

    def record(self, index: int) -> ClipRecord:
        """The stored record of this source's clip ``index``."""
        return self.store.record(int(self.usable[index]))

    def shapes(self, index: int) -> ShapeOptions:
        frames, height, width, _ = self.record(index).shape
        _, ph, pw = self.patch
        sizes = {(height // ph * ph, width // pw * pw)}
        for scale in np.linspace(0.5, 1.0, 6):
            h, w = int(height * scale) // ph * ph, int(width * scale) // pw * pw
            if min(h, w) >= max(self.data.side[0], ph, pw):
                sizes.add((h, w))
        return ShapeOptions(np.arange(1, min(frames, self.data.frames[1]) + 1), np.asarray(sorted(sizes)))

    def load(self, index: int, frames: int, height: int, width: int, rng: np.random.Generator) -> LoadedClip:
        index = int(self.usable[index])
        record = self.store.record(index)
        latents = self.store.read(index)
        top = int(rng.integers(0, latents.shape[1] - height + 1))
        left = int(rng.integers(0, latents.shape[2] - width + 1))
        crop = latents[:frames, top : top + height, left : left + width].astype(np.float32)
        video_frames = 1 + (frames - 1) * self.temporal_factor
        return LoadedClip(
            (crop - self.mean) / self.std,
            record.fps or 1.0,
            record.caption,
            _embedding(self.store, index, self.embeddings),
            audio=_stored_audio(self.store, index, 0, video_frames, self.audio),
        )
