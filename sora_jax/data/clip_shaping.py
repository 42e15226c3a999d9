"""How ``sora-jax prepare`` turns one video or image file into clips of the store's shape.

Each source becomes clips of uint8 RGB frames ``[T, H, W, 3]``:

* Frame rate: frames are sampled every ``1/fps`` s from the first frame, each sample taking
  the frame on screen at that time (the last frame with timestamp <= sample time). Sources at or
  below ``fps`` keep their own rate instead: repeating frames to reach ``fps`` would only teach
  the model to stutter. ``fps=None`` keeps every frame. The clip's record says its real rate.
* Duration: clips hold at most ``floor(max_seconds * rate)`` frames. A leftover tail shorter
  than half a clip is merged with the clip before it and the two are split evenly, so every
  clip of a long video has between half and all of the maximum length.
* Size: scaled by ``s = min(1, sqrt(max_area / (h * w)))`` keeping the aspect ratio, then
  center-cropped to ``H = floor(h * s)`` and ``W = floor(w * s)`` rounded down to multiples
  of 8 (so ``H * W <= max_area``; the crop loses at most 7 rows/columns, where stretching to
  the rounded size would distort small frames by up to 8/H). Scaling uses FFmpeg's swscale
  area averaging on the decoded frame, which also does the YUV->RGB conversion, and only for
  sampled frames; frames are never upscaled.
* Images are one-frame clips with ``fps = 0.0`` and ``start = 0.0``.
* Scene cuts (``scene_threshold``, None: off): the sampled frames are checked for cuts as they
  come (:class:`~sora_jax.data.clip_filters.SceneCuts`); each scene is cut into clips as a
  whole video would be (tail merged with the clip before it), so no clip spans a cut. The
  frames from one cut to the next are a scene when they last
  :data:`~sora_jax.data.clip_filters.MIN_SCENE_SECONDS` (at least one frame, at most a clip).
  Shorter stretches in a row (cuts faster than that: noise, a strobe light, a montage) make one
  scene together once they last that long; a shorter one (a flash between two shots, a black
  frame before the first) is dropped and counted. A video without cuts is one scene, however
  short.
* Letterbox (``letterbox_crop``): dark bars on opposite sides of a clip's frames are cropped
  away before it is stored (its sides stay multiples of 8). Every clip is measured
  (:func:`~sora_jax.data.clip_filters.measure_clip`: motion, brightness, letterbox, and a
  perceptual hash of its middle frame), whatever the settings.
* Sound (unless ``audio_rate`` is None): each video clip keeps the first audio track's sound of
  exactly its time span, from its first frame's time for ``T / fps`` s (``round(T / fps *
  audio_rate)`` samples), resampled to ``audio_rate`` Hz and ``audio_channels`` channels by
  :func:`~sora_jax.data.video_io.read_audio_spans`, zero where the track does not reach. A
  source without an audio track (and every image) gives its clips no sound.

:func:`decode_source` runs in a decoding process (see :mod:`sora_jax.data.isolated_pool`), so it
imports no more than decoding needs, writes its clips as ``.npy`` files for the parent to store,
and fails a source by raising :class:`SkipSource`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from sora_jax.data.clip_filters import (
    DEFAULT_SCENE_THRESHOLD,
    MIN_SCENE_SECONDS,
    MeasuredClip,
    SceneCuts,
    measure_clip,
)
from sora_jax.data.isolated_pool import TaskFailure
from sora_jax.data.video_io import (
    DecodedFrame,
    VideoDecodeError,
    open_video,
    probe_video,
    read_audio_spans,
)


class SkipSource(TaskFailure):
    """A source that cannot be used; args are ``(reason, detail)`` so it pickles intact."""


@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """What clips are cut to (``max_seconds`` s, ``fps`` frames/s or None to keep every frame,
    ``max_area`` pixels a frame, sound at ``audio_rate`` Hz or None to drop it, ``audio_channels``
    1 or 2, videos split at scene cuts by a ``scene_threshold`` or None for no splitting, and
    letterbox bars cropped when ``letterbox_crop``) and which sources are usable (a side of at
    least ``min_side`` px, at most ``max_input_pixels`` px a frame)."""

    max_seconds: float
    fps: float | None
    max_area: int
    min_side: int
    max_input_pixels: int
    audio_rate: int | None = 16000
    audio_channels: int = 1
    scene_threshold: float | None = DEFAULT_SCENE_THRESHOLD
    letterbox_crop: bool = True

    def shaping(self) -> dict[str, Any]:
        """The settings a store's clips depend on, as kept under ``PREPARE_KEY`` (a store kept
        before sound existed has no ``audio_*`` keys: it was made without it; one kept before scene
        cuts and letterbox cropping has neither key)."""
        return {
            "max_seconds": self.max_seconds,
            "fps": self.fps,
            "max_area": self.max_area,
            "audio_rate": self.audio_rate,
            "audio_channels": self.audio_channels if self.audio_rate else None,
            "scene_threshold": self.scene_threshold,
            "letterbox_crop": self.letterbox_crop,
        }


def target_size(height: int, width: int, max_area: int) -> tuple[int, int, int, int] | None:
    """``(resize_h, resize_w, crop_h, crop_w)`` for a source frame, or None if under 8 px."""
    scale = min(1.0, math.sqrt(max_area / (height * width)))
    # The epsilon keeps exact products (512 * 0.5) from flooring one short through rounding.
    crop_h = int(height * scale + 1e-9) // 8 * 8
    crop_w = int(width * scale + 1e-9) // 8 * 8
    if crop_h < 8 or crop_w < 8:
        return None
    return max(crop_h, round(height * scale)), max(crop_w, round(width * scale)), crop_h, crop_w


@dataclasses.dataclass(frozen=True)
class SpooledClip:
    """One clip a decoding worker wrote: its frames' ``.npy`` ``file``, ``start`` seconds into the
    source, its ``sound`` file (float32 ``[samples, audio_channels]`` ``.npy``, None without an audio
    track or with sound off), its ``scores`` and ``phash`` (see :mod:`sora_jax.data.clip_filters`),
    and whether letterbox bars were ``cropped`` from it."""

    file: str
    start: float
    sound: str | None
    scores: dict[str, float]
    phash: str
    cropped: bool


@dataclasses.dataclass(frozen=True)
class DecodedSource:
    """What :func:`decode_source` made of a source: its clips' frame rate ``fps`` (0.0 for an
    image), the ``clips`` in order, the ``scene_cuts`` found, and the scenes shorter than
    :data:`~sora_jax.data.clip_filters.MIN_SCENE_SECONDS` dropped (``short_scenes``, holding
    ``short_scene_frames`` frames)."""

    fps: float
    clips: list[SpooledClip]
    scene_cuts: int = 0
    short_scenes: int = 0
    short_scene_frames: int = 0


class _ClipSpool:
    """Cuts a stream of ``(time, frame)`` into clips saved as ``.npy`` files in ``directory``.

    Holds at most two clips in memory: the last full clip of a scene is kept back until the
    scene ends (:meth:`end_scene`, or the end of the stream) so a short tail can be merged with it
    and split evenly. Each clip is measured, and cropped when ``crop_letterbox``, as it is written.
    """

    def __init__(self, directory: str, clip_len: int, fps: float, crop_letterbox: bool) -> None:
        self.directory = directory
        self.clip_len, self.fps, self.crop_letterbox = clip_len, fps, crop_letterbox
        self.current: list[tuple[float, np.ndarray]] = []
        self.held: list[tuple[float, np.ndarray]] | None = None
        self.written: list[tuple[str, float, int]] = []
        self.measured: list[MeasuredClip] = []  # Of each written clip, without its frames.
        # Not makedirs: a worker left running by a killed run must not recreate scratch that a
        # later run removed.
        os.mkdir(directory)

    def add(self, t: float, frame: np.ndarray) -> None:
        self.current.append((t, frame))
        if len(self.current) == self.clip_len:
            if self.held is not None:
                self._write(self.held)
            self.held, self.current = self.current, []

    def end_scene(self) -> None:
        """Writes the scene's last clips; the next frame added starts a new clip."""
        held, tail = self.held, self.current
        if held is not None and tail and 2 * len(tail) < self.clip_len:
            both = held + tail
            half = (len(both) + 1) // 2
            groups = [both[:half], both[half:]]
        else:
            groups = [g for g in (held, tail) if g]
        for group in groups:
            self._write(group)
        self.held, self.current = None, []

    def finish(self) -> list[tuple[str, float, int]]:
        """Writes what is left; returns ``(file, start seconds, frames)`` per clip in order."""
        self.end_scene()
        return self.written

    def _write(self, frames: list[tuple[float, np.ndarray]]) -> None:
        file = os.path.join(self.directory, f"{len(self.written):06d}.npy")
        measured = measure_clip(np.stack([f for _, f in frames]), self.fps, self.crop_letterbox)
        np.save(file, measured.frames)
        self.written.append((file, frames[0][0], len(frames)))
        # The frames are in the file: keep only what describes them.
        self.measured.append(dataclasses.replace(measured, frames=np.empty((0,), np.uint8)))


class _SceneSplitter:
    """Feeds a :class:`_ClipSpool` scene by scene, as the module docstring says.

    A fragment (the frames from one cut to the next) of ``min_scene`` frames or more is a scene;
    shorter ones in a row form a run, which is a scene once it holds ``min_scene`` frames and is
    dropped if it ends (at a scene, or the end) shorter. Only undecided frames are held here: at
    most ``min_scene`` of the fragment and fewer than ``min_scene`` of a run.
    """

    def __init__(self, spool: _ClipSpool, scenes: SceneCuts, min_scene: int) -> None:
        self.spool, self.scenes, self.min_scene = spool, scenes, min_scene
        self.fragment: list[tuple[float, np.ndarray]] = []  # Since the last cut, while undecided.
        self.fragment_is_scene = False  # It reached min_scene frames: it streams into the spool.
        self.run: list[tuple[float, np.ndarray]] = []  # Short fragments in a row, while too short.
        self.run_is_scene = False  # The run reached min_scene frames: it streams into the spool.
        self.cuts = self.short_scenes = self.short_scene_frames = 0

    def add(self, t: float, frame: np.ndarray) -> None:
        if self.scenes.starts_scene(frame):
            self.cuts += 1
            self._end_fragment()
        if self.fragment_is_scene:
            self.spool.add(t, frame)
            return
        self.fragment.append((t, frame))
        if len(self.fragment) == self.min_scene:  # A scene: the run before it ends here.
            self._end_run()
            self.fragment_is_scene = True
            self._feed(self.fragment)

    def finish(self) -> list[tuple[str, float, int]]:
        if not self.cuts and self.fragment:  # A short video without cuts is one scene all the same.
            self._feed(self.fragment)
        elif not self.fragment_is_scene:
            self._end_fragment()
            self._end_run()
        return self.spool.finish()

    def _end_fragment(self) -> None:
        """At a cut: a scene ends; a short fragment joins the run."""
        if self.fragment_is_scene:
            self.spool.end_scene()
            self.fragment_is_scene = False
        elif self.run_is_scene:
            self._feed(self.fragment)
        else:
            self.run += self.fragment
            if len(self.run) >= self.min_scene:
                self.run_is_scene = True
                self._feed(self.run)
        self.fragment = []

    def _end_run(self) -> None:
        if self.run_is_scene:
            self.spool.end_scene()
            self.run_is_scene = False
        elif self.run:
            self.short_scenes += 1
            self.short_scene_frames += len(self.run)
        self.run = []

    def _feed(self, frames: list[tuple[float, np.ndarray]]) -> None:
        for t, frame in frames:
            self.spool.add(t, frame)
        frames.clear()


def decode_source(path: str, spool: str, settings: ClipSettings, fps_hint: float) -> DecodedSource:
    """Decodes, resamples, resizes, cuts and measures one source into ``.npy`` clips under ``spool``.

    Raises SkipSource for anything that makes the source unusable (``"short_scenes"`` when scene
    cuts leave no scene long enough to keep).
    """
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError as e:
        raise SkipSource("missing_file", str(e)) from None
    except OSError as e:
        raise SkipSource("unreadable", str(e)) from None
    if size == 0:
        raise SkipSource("empty_file", "0 bytes")
    try:
        info = probe_video(path)
    except VideoDecodeError as e:
        raise SkipSource("decode_error", e.reason) from None
    _check_pixels(info.height, info.width, settings)
    target = target_size(info.height, info.width, settings.max_area)
    if target is None:
        raise SkipSource(
            "too_small", f"{info.width}x{info.height} is under 8 px at max_area {settings.max_area}"
        )
    resize_h, resize_w, crop_h, crop_w = target
    y0, x0 = (resize_h - crop_h) // 2, (resize_w - crop_w) // 2

    def convert(frame: DecodedFrame) -> np.ndarray:
        # Checked per frame: headers can lie, and streams can change size midway.
        _check_pixels(frame.height, frame.width, settings)
        rgb = frame.to_rgb(resize_h, resize_w)
        return np.ascontiguousarray(rgb[y0 : y0 + crop_h, x0 : x0 + crop_w])

    still = info.is_still
    source_fps = info.fps or fps_hint
    if still:
        out_fps, step = 0.0, None
    elif settings.fps is None or (source_fps and source_fps <= settings.fps * (1 + 1e-3)):
        if not source_fps:
            raise SkipSource("unknown_fps", "fps=None and the file reports no frame rate")
        out_fps, step = source_fps, None  # Keep every frame.
    else:
        out_fps, step = settings.fps, 1.0 / settings.fps
    clip_len = 1 if still else max(1, math.floor(settings.max_seconds * out_fps + 1e-6))
    clips = _ClipSpool(spool, clip_len, out_fps, settings.letterbox_crop)
    scenes = None
    if settings.scene_threshold is not None and not still:
        # At least a frame, at most a clip (so a scene's first clip is decided before it is full).
        min_scene = min(clip_len, max(1, math.ceil(MIN_SCENE_SECONDS * out_fps - 1e-6)))
        scenes = _SceneSplitter(clips, SceneCuts(settings.scene_threshold), min_scene)
    sink = scenes or clips

    eps = 1e-6  # Seconds: float sample times vs exact rational timestamps.
    t0 = prev = None
    last_t = -math.inf
    j = 0  # Next sample is at t0 + j * step; a product, so no drift over long videos.
    cache: tuple[DecodedFrame, np.ndarray] | None = None

    def sample(frame: DecodedFrame) -> np.ndarray:
        nonlocal cache
        if cache is None or cache[0] is not frame:  # A frame held over several samples.
            cache = (frame, convert(frame))
        return cache[1]

    try:
        # open_video rather than iter_frames: iter_frames converts every frame to full-size RGB,
        # whereas only the sampled ones are needed, and to_rgb converts and shrinks in one pass.
        with open_video(path) as video:
            for frame in video.frames():
                t = frame.time
                if t <= last_t:  # Out-of-order or repeated timestamps in broken streams.
                    continue
                last_t = t
                if still:
                    sink.add(0.0, convert(frame))
                    break
                if step is None:
                    sink.add(t, convert(frame))
                    continue
                if t0 is None:
                    t0 = t
                while t0 + j * step < t - eps:  # Samples before this frame show the previous one.
                    sink.add(t0 + j * step, sample(prev))
                    j += 1
                prev = frame
    except VideoDecodeError as e:
        raise SkipSource("decode_error", e.reason) from None
    if prev is not None:
        # The last frame stays on screen for one source frame interval.
        end = last_t + (1.0 / source_fps if source_fps else step)
        while t0 + j * step < end - eps:
            sink.add(t0 + j * step, sample(prev))
            j += 1
    written = sink.finish()
    if not written and scenes is not None and scenes.short_scenes:
        raise SkipSource(
            "short_scenes",
            f"{scenes.cuts} scene cuts leave no scene of {MIN_SCENE_SECONDS:g} s "
            "(--no-scene-cuts or a higher --scene-threshold keeps them)",
        )
    if not written:
        raise SkipSource("no_frames", "no decodable video frames")
    sound_files: list[str | None] = [None] * len(written)
    if settings.audio_rate and out_fps > 0:
        sound_files = _cut_sound(path, written, out_fps, settings)
    spooled = [
        SpooledClip(file, start, sound, measured.scores, measured.phash, measured.cropped)
        for (file, start, _), sound, measured in zip(written, sound_files, clips.measured, strict=True)
    ]
    if scenes is None:
        return DecodedSource(out_fps, spooled)
    return DecodedSource(out_fps, spooled, scenes.cuts, scenes.short_scenes, scenes.short_scene_frames)


def _cut_sound(
    path: str, clips: list[tuple[str, float, int]], fps: float, settings: ClipSettings
) -> list[str | None]:
    """Saves each clip's sound beside its frames (``<clip>.sound.npy``); Nones without a track."""
    spans = [(start, frames / fps) for _, start, frames in clips]
    try:
        sounds = read_audio_spans(
            path, spans, sample_rate=settings.audio_rate, channels=settings.audio_channels
        )
        if sounds is None:
            return [None] * len(clips)
        files = []
        for (file, _, _), sound in zip(clips, sounds, strict=True):
            # round(frames / fps * rate) samples: the length the store checks against the frames.
            files.append(file.removesuffix(".npy") + ".sound.npy")
            np.save(files[-1], sound)
    except VideoDecodeError as e:
        raise SkipSource("decode_error", f"{e.reason} (--no-audio keeps its pictures alone)") from None
    return files


def _check_pixels(height: int, width: int, settings: ClipSettings) -> None:
    if height * width > settings.max_input_pixels:
        raise SkipSource("too_large", f"{width}x{height} > max_input_pixels {settings.max_input_pixels}")
    if min(height, width) < settings.min_side:
        raise SkipSource("too_small", f"{width}x{height} has a side < min_side {settings.min_side}")
