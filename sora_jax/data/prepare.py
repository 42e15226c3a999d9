"""Ingest: videos and images with captions into a :class:`~sora_jax.data.clip_store.ClipStore`.

Input is either a folder, searched recursively for ``.mp4 .avi .mov .mkv .webm .gif`` videos and
``.png .jpg .jpeg .bmp .webp`` images (hidden files and folders skipped) each captioned by a
sidecar ``.txt`` with the same stem, or a CSV in the Open-Sora layout: columns ``path,text``
plus optional ``num_frames,height,width,fps``, paths relative to the CSV's folder. Only ``fps``
is used from the optional columns, and only when the file itself reports no frame rate; sizes
and lengths are probed from the files, which are what actually gets decoded.

Each source becomes clips of uint8 RGB frames ``[T, H, W, 3]``, ids ``"<source>#<k>"`` where
``<source>`` is the path relative to the folder (or as written in the CSV):

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
* Captions: with ``text_encoder`` (a Hugging Face-format BERT or T5 directory), each source's
  caption is encoded once, here, and every clip of it stores the hidden states of the caption's
  real tokens (at most ``caption_tokens``) as a float16 caption embedding, so training reads
  them instead of running the encoder.

Bad input never stops a run: each source that cannot be used is skipped and listed with a
reason (see ``REASONS``). Decoding runs in ``workers`` spawned processes, one file per process
at a time, so a decoder crash (even a segfault) or hang in one file fails only that file; the
dead or stuck process is replaced. Workers write decoded clips to a local scratch folder and the
parent process alone appends them to the store, each source's clips and its done mark in one
atomic group, so a source is either completely in the store (and skipped by later runs) or not
at all. Failed sources are retried by later runs. A report is written to
``<output>/prepare_report.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sora_jax.data.clip_store import ClipStore
from sora_jax.data.isolated_pool import IsolatedPool, TaskFailure, call_task
from sora_jax.data.video_io import IMAGE_SUFFIXES, DecodedFrame, VideoDecodeError, open_video, probe_video

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
MEDIA_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES
REPORT_KEY = "prepare_report.json"

REASONS = {
    "missing_caption": "no sidecar .txt / empty CSV text, and no caption_default",
    "missing_file": "a CSV row names a file that does not exist",
    "duplicate": "a CSV row repeats an earlier row's path",
    "empty_file": "zero bytes",
    "unreadable": "the file cannot be opened (permissions, I/O error)",
    "decode_error": "FFmpeg cannot demux or decode it (corrupt, truncated, no video stream)",
    "no_frames": "opens but yields no decodable frame",
    "unknown_fps": "fps=None and the file reports no frame rate",
    "too_small": "a side below min_side, or under 8 pixels after scaling to max_area",
    "too_large": "more than max_input_pixels pixels per frame",
    "worker_crash": "the decoding process died (segfault, out of memory)",
    "timeout": "decoding took longer than file_timeout",
    "partial_in_store": "the store holds clips of this source but no done mark (written by other means)",
    "internal_error": "an unexpected exception while decoding",
}

_FLUSH_SECONDS = 30.0  # Work an interruption can lose is bounded by this, plus one file.
_FLUSH_SOURCES = 256
_COMPACT_SEGMENTS = 32


@dataclasses.dataclass
class PrepareReport:
    """What a :func:`prepare` run did. Counts are for this run only.

    ``inputs_seen``: media files found (folder) or CSV rows. ``sources_done``: sources ingested
    by this run. ``skipped_done``: sources already done by an earlier run. ``failures``:
    ``{reason: count}``; ``failed``: ``{"path", "reason", "detail"}`` per skipped source, sorted
    by path, ``path`` relative to the input folder (or as in the CSV).
    """

    input: str
    output: str
    inputs_seen: int = 0
    sources_done: int = 0
    skipped_done: int = 0
    clips_written: int = 0
    frames_written: int = 0
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0

    def fail(self, path: str, reason: str, detail: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.failed.append({"path": path, "reason": reason, "detail": detail})
        log.info("skipped %s: %s (%s)", path, reason, detail)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, ensure_ascii=False)


class SkipSource(TaskFailure):
    """A source that cannot be used; args are ``(reason, detail)`` so it pickles intact."""


@dataclasses.dataclass(frozen=True)
class _Settings:
    max_seconds: float
    fps: float | None
    max_area: int
    min_side: int
    max_input_pixels: int


@dataclasses.dataclass(frozen=True)
class _Source:
    key: str  # Relative path: the source's name in the store and in clip ids.
    path: str  # Where to read it.
    caption: str | None
    fps_hint: float  # From a CSV's fps column; 0.0 if none.


def prepare(
    input: str,
    output: str,
    *,
    max_seconds: float = 4.0,
    fps: float | None = 8.0,
    max_area: int = 256 * 256,
    min_side: int = 16,
    max_input_pixels: int = 4096 * 4096,
    workers: int = 2,
    caption_default: str | None = None,
    file_timeout: float | None = 1800.0,
    text_encoder: str | os.PathLike | None = None,
    caption_tokens: int = 64,
) -> PrepareReport:
    """Decodes the videos/images under ``input`` into uint8 clips in the store at ``output``.

    ``input``: a folder or an Open-Sora CSV (see the module docstring); ``output``: a clip
    store path or URL, created if absent (an existing one must hold uint8, C=3 clips).
    ``max_seconds``: longest clip (s). ``fps``: target frames/s (None keeps every frame).
    ``max_area``: most pixels per output frame. ``min_side``: smallest usable source side (px).
    ``max_input_pixels``: largest usable source frame (px), a guard against decompression
    bombs. ``workers``: decoding processes (0 decodes in this process: no crash isolation, for
    debugging). ``caption_default``: caption for sources without one (None skips them).
    ``file_timeout``: seconds one file may take to decode before its process is killed (None:
    no limit; ignored with ``workers=0``). ``text_encoder``: a frozen encoder's directory, to
    store caption embeddings of at most ``caption_tokens`` tokens (a store prepared with one
    must be resumed with the same one).

    Sources already marked done in the store are skipped, so an interrupted run resumes where
    it stopped. Raises ValueError for bad arguments or a CSV without a ``path`` column and
    FileNotFoundError for a missing ``input``; per-source problems are only reported.
    """
    if not (max_seconds > 0 and math.isfinite(max_seconds)):
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive or None, got {fps}")
    if max_area < 64:
        raise ValueError(f"max_area must be >= 64 (one 8x8 frame), got {max_area}")
    if min_side < 1 or max_input_pixels < 1:
        raise ValueError(f"min_side and max_input_pixels must be >= 1, got {min_side}, {max_input_pixels}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if file_timeout is not None and not file_timeout > 0:
        raise ValueError(f"file_timeout must be positive or None, got {file_timeout}")
    if caption_tokens < 1:
        raise ValueError(f"caption_tokens must be >= 1, got {caption_tokens}")
    embedder = None
    if text_encoder is not None:  # JAX loads only where captions are embedded, never in decoders.
        from sora_jax.text.embedder import CaptionEmbedder

        embedder = CaptionEmbedder(text_encoder, caption_tokens)
    started = time.monotonic()
    settings = _Settings(
        float(max_seconds), None if fps is None else float(fps), max_area, min_side, max_input_pixels
    )
    report = PrepareReport(input=os.fspath(input), output=os.fspath(output))

    sources, report.inputs_seen = _discover(Path(input), report)
    captions = {}
    if embedder is not None:
        captions = {"caption_dim": embedder.dim, "caption_encoder": embedder.description}
    store = ClipStore.create(output, dtype="uint8", channels=3, exist_ok=True, **captions)
    done = store.sources_done()
    partial = {r.source for r in store.records} - done
    todo: list[_Source] = []
    for source in sources:
        if source.key in done:
            report.skipped_done += 1
        elif source.key in partial:
            report.fail(source.key, "partial_in_store", "clips present without a done mark; not re-adding")
        elif source.caption is None and caption_default is None:
            report.fail(source.key, "missing_caption", "no caption file or text")
        else:
            todo.append(dataclasses.replace(source, caption=source.caption or caption_default))

    scratch = tempfile.mkdtemp(prefix="sora_prepare_")
    pool = None
    try:
        pool = IsolatedPool(workers, file_timeout) if workers > 0 and todo else None
        tasks = (
            (i, _decode_source, (s.path, os.path.join(scratch, str(i)), settings, s.fps_hint))
            for i, s in enumerate(todo)
        )
        results = pool.run(tasks) if pool else ((i, *call_task(fn, args)) for i, fn, args in tasks)
        last_flush, unflushed = time.monotonic(), 0
        for i, ok, value in results:
            source = todo[i]
            try:
                if ok:
                    _ingest(store, source, *value, report, embedder)
                    unflushed += 1
                else:
                    report.fail(source.key, *value)
            finally:
                shutil.rmtree(os.path.join(scratch, str(i)), ignore_errors=True)
            if unflushed >= _FLUSH_SOURCES or time.monotonic() - last_flush > _FLUSH_SECONDS:
                store.flush()
                last_flush, unflushed = time.monotonic(), 0
        store.compact(min_segments=_COMPACT_SEGMENTS)
    finally:
        if pool:
            pool.close()
        shutil.rmtree(scratch, ignore_errors=True)
        # Staged entries are whole sources (atomic groups), so committing them is always safe.
        store.flush()

    report.failed.sort(key=lambda f: (f["path"], f["reason"]))
    report.elapsed_s = round(time.monotonic() - started, 3)
    store.kvstore.write(REPORT_KEY, report.to_json()).result()
    log.info(
        "prepare %s -> %s: %d sources done, %d already done, %d clips, %d frames, failures %s",
        report.input,
        report.output,
        report.sources_done,
        report.skipped_done,
        report.clips_written,
        report.frames_written,
        report.failures,
    )
    return report


def _ingest(
    store: ClipStore,
    source: _Source,
    fps: float,
    clips: list[tuple[str, float]],
    report: PrepareReport,
    embedder: Any = None,
) -> None:
    """Appends one source's spooled clips and its done mark as one atomic group."""
    frames_written = 0
    # One caption per source: encoded once, stored with each of its clips.
    embedding = embedder(source.caption) if embedder is not None else None
    with store.atomic():
        for k, (file, start) in enumerate(clips):
            frames = np.load(file)
            store.append(
                frames,
                clip_id=f"{source.key}#{k}",
                fps=fps,
                caption=source.caption,
                source=source.key,
                start=start,
                caption_embedding=embedding,
            )
            frames_written += frames.shape[0]
        store.mark_done(source.key)
    report.sources_done += 1
    report.clips_written += len(clips)
    report.frames_written += frames_written


# -- discovery ------------------------------------------------------------------------------


def _discover(input: Path, report: PrepareReport) -> tuple[list[_Source], int]:
    """Sources in ``input`` (a folder or a CSV), plus how many inputs were seen."""
    if input.is_file() and input.suffix.lower() == ".csv":
        return _from_csv(input, report)
    if input.is_dir():
        return _from_folder(input)
    if not input.exists():
        raise FileNotFoundError(f"input {os.fspath(input)!r} does not exist")
    raise ValueError(f"input must be a folder or a .csv file, got {os.fspath(input)!r}")


def _from_folder(root: Path) -> tuple[list[_Source], int]:
    sources = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        # Dot-files include partial writes (write_video's temporaries) and OS metadata.
        if path.suffix.lower() not in MEDIA_SUFFIXES or any(p.startswith(".") for p in rel.parts):
            continue
        if not path.is_file():
            continue
        caption = _read_caption(path.with_suffix(".txt"))
        sources.append(_Source(rel.as_posix(), os.fspath(path), caption, 0.0))
    return sources, len(sources)


def _from_csv(csv_path: Path, report: PrepareReport) -> tuple[list[_Source], int]:
    sources: list[_Source] = []
    keys: set[str] = set()
    seen = 0
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ValueError(f"{os.fspath(csv_path)!r} has no 'path' column (columns: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            seen += 1
            raw = (row.get("path") or "").strip()
            if not raw:
                report.fail(f"{csv_path.name}:{line}", "missing_file", "empty path")
                continue
            absolute = os.path.isabs(raw)
            key = Path(os.path.normpath(raw)).as_posix()
            path = Path(raw) if absolute else csv_path.parent / raw
            if key in keys:
                report.fail(key, "duplicate", f"repeated at {csv_path.name} line {line}")
                continue
            keys.add(key)
            if not path.is_file():
                report.fail(key, "missing_file", f"{os.fspath(path)} not found")
                continue
            caption = (row.get("text") or "").strip() or None
            sources.append(_Source(key, os.fspath(path), caption, _parse_float(row.get("fps"))))
    return sources, seen


def _read_caption(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or None
    except OSError:
        return None


def _parse_float(text: str | None) -> float:
    try:
        value = float(text) if text else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


# -- decoding (runs in worker processes) ----------------------------------------------------


def _target_size(height: int, width: int, max_area: int) -> tuple[int, int, int, int] | None:
    """``(resize_h, resize_w, crop_h, crop_w)`` for a source frame, or None if under 8 px."""
    scale = min(1.0, math.sqrt(max_area / (height * width)))
    # The epsilon keeps exact products (512 * 0.5) from flooring one short through rounding.
    crop_h = int(height * scale + 1e-9) // 8 * 8
    crop_w = int(width * scale + 1e-9) // 8 * 8
    if crop_h < 8 or crop_w < 8:
        return None
    return max(crop_h, round(height * scale)), max(crop_w, round(width * scale)), crop_h, crop_w


class _ClipSpool:
    """Cuts a stream of ``(time, frame)`` into clips saved as ``.npy`` files in ``directory``.

    Holds at most two clips in memory: the last full clip is kept back until the stream ends so
    a short tail can be merged with it and split evenly.
    """

    def __init__(self, directory: str, clip_len: int) -> None:
        self.directory = directory
        self.clip_len = clip_len
        self.current: list[tuple[float, np.ndarray]] = []
        self.held: list[tuple[float, np.ndarray]] | None = None
        self.written: list[tuple[str, float]] = []
        os.makedirs(directory, exist_ok=True)

    def add(self, t: float, frame: np.ndarray) -> None:
        self.current.append((t, frame))
        if len(self.current) == self.clip_len:
            if self.held is not None:
                self._write(self.held)
            self.held, self.current = self.current, []

    def finish(self) -> list[tuple[str, float]]:
        """Writes what is left; returns ``(file, start seconds)`` per clip in order."""
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
        return self.written

    def _write(self, frames: list[tuple[float, np.ndarray]]) -> None:
        file = os.path.join(self.directory, f"{len(self.written):06d}.npy")
        np.save(file, np.stack([f for _, f in frames]))
        self.written.append((file, frames[0][0]))


def _decode_source(
    path: str, spool: str, settings: _Settings, fps_hint: float
) -> tuple[float, list[tuple[str, float]]]:
    """Decodes, resamples, resizes and cuts one source into ``.npy`` clips under ``spool``.

    Returns ``(fps, [(file, start_seconds), ...])``; ``fps`` is the clips' frame rate (0.0
    for an image). Raises SkipSource for anything that makes the source unusable.
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
    target = _target_size(info.height, info.width, settings.max_area)
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
    clips = _ClipSpool(spool, clip_len)

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
                    clips.add(0.0, convert(frame))
                    break
                if step is None:
                    clips.add(t, convert(frame))
                    continue
                if t0 is None:
                    t0 = t
                while t0 + j * step < t - eps:  # Samples before this frame show the previous one.
                    clips.add(t0 + j * step, sample(prev))
                    j += 1
                prev = frame
    except VideoDecodeError as e:
        raise SkipSource("decode_error", e.reason) from None
    if prev is not None:
        # The last frame stays on screen for one source frame interval.
        end = last_t + (1.0 / source_fps if source_fps else step)
        while t0 + j * step < end - eps:
            clips.add(t0 + j * step, sample(prev))
            j += 1
    written = clips.finish()
    if not written:
        raise SkipSource("no_frames", "no decodable video frames")
    return out_fps, written


def _check_pixels(height: int, width: int, settings: _Settings) -> None:
    if height * width > settings.max_input_pixels:
        raise SkipSource("too_large", f"{width}x{height} > max_input_pixels {settings.max_input_pixels}")
    if min(height, width) < settings.min_side:
        raise SkipSource("too_small", f"{width}x{height} has a side < min_side {settings.min_side}")
