"""Ingest: videos and images with captions into a :class:`~sora_jax.data.clip_store.ClipStore`.

One run of ``sora-jax prepare``, top to bottom: check the arguments and the output; find the
sources (a folder, a single video or image file, or an Open-Sora CSV, each captioned; see
:mod:`sora_jax.data.source_list`); refuse a store made with other settings; decode the sources
not yet done into clips (frame rate, duration and size as :mod:`sora_jax.data.clip_shaping`
says); append each to the store whole; write a report. Clip ids are ``"<source>#<k>"``.

With ``text_encoder`` (a Hugging Face-format BERT or T5 directory), each source's caption is
encoded once, here, and every clip of it stores the hidden states of the caption's real tokens
(at most ``caption_tokens``) as a float16 caption embedding, so training reads them instead of
running the encoder. Captions that were changed to be stored (cut at ``MAX_CAPTION_CHARS``, or
not UTF-8) are counted in the report and named in a warning.

Each video clip keeps the sound of its time span (``audio_rate`` Hz, ``audio_channels``
channels; ``audio_rate=None`` drops sound), and its record says ``"sound"``, ``"silent"`` (peak
below -60 dBFS: a muted or zero-filled track) or ``"none"`` (no audio track); the report counts
the videos of each kind and names the silent and soundless ones.

The settings that shape clips (``max_seconds``, ``fps``, ``max_area``, ``audio_rate``,
``audio_channels``) are kept in the store (``extra[PREPARE_KEY]``, see
:mod:`sora_jax.data.clip_store`); a later run into the same store with others, or another text
encoder or token limit, is refused: the store would hold clips of two kinds. ``min_side`` and
``max_input_pixels`` only choose sources and may change between runs.

Bad input never stops a run: each source that cannot be used is skipped and listed with a
reason (see ``REASONS``). Decoding runs in ``workers`` spawned processes, one file per process
at a time, so a decoder crash (even a segfault) or hang in one file fails only that file; the
dead or stuck process is replaced. Workers write decoded clips to a local scratch folder and the
parent process alone appends them to the store, each source's clips and its done mark in one
atomic group, so a source is either completely in the store (and skipped by later runs) or not
at all. The index is committed after the first source, then every 3 s while sources come in,
and when the run is stopped by SIGINT or SIGTERM (within half a second it commits the sources
already stored and exits, leaving those still decoding to the next run; a second signal stops it
at once), so a killed run (even by SIGKILL) loses only the last few seconds of work. Failed
sources are retried by later runs. A report is written to ``<output>/prepare_report.json``.

Many workers can prepare one dataset together, each run given its ``shard`` (see
:mod:`sora_jax.data.shards`): the output is then a sharded dataset's root, and the run takes only
the sources whose key falls in its shard and writes them, as above, into its shard's own store
(``<output>/shard-00003-of-00016/``, with its own report). A root is written either by one worker
or sharded, never both; every worker of a root must use the same shard count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sora_jax.data.clip_filters import DEFAULT_SCENE_THRESHOLD, flagged, setting_changes
from sora_jax.data.clip_shaping import ClipSettings, DecodedSource, decode_source
from sora_jax.data.clip_store import AUDIO_STATES, METADATA_KEY, PREPARE_KEY, ClipStore
from sora_jax.data.isolated_pool import IsolatedPool, call_task
from sora_jax.data.run_control import StopOnSignal, logs_above_progress, new_scratch, progress_bar
from sora_jax.data.shards import DATASET_KEY, Shard, claim_dataset, dataset_shards, shard_path
from sora_jax.data.source_list import CAPTION_CHANGES, Source, clean_caption, find_sources
from sora_jax.errors import ConfigError
from sora_jax.paths import cannot_write_in

log = logging.getLogger(__name__)

REPORT_KEY = "prepare_report.json"
REASONS = {
    "missing_caption": "no sidecar .txt / empty CSV text, and no caption_default",
    "missing_file": "a CSV row names a file that does not exist",
    "duplicate": "a CSV row repeats an earlier row's path",
    "empty_file": "zero bytes",
    "unreadable": "the file (or its sidecar .txt) cannot be opened (permissions, I/O error)",
    "decode_error": "FFmpeg cannot demux or decode it or its sound (corrupt, truncated, no video stream)",
    "no_frames": "opens but yields no decodable frame",
    "short_scenes": "scene cuts leave no scene of at least MIN_SCENE_SECONDS (sora_jax.data.clip_filters)",
    "unknown_fps": "fps=None and the file reports no frame rate",
    "too_small": "a side below min_side, or under 8 pixels after scaling to max_area",
    "too_large": "more than max_input_pixels pixels per frame",
    "worker_crash": "the decoding process died (segfault, out of memory)",
    "timeout": "decoding took longer than file_timeout",
    "partial_in_store": "the store holds clips of this source but no done mark (written by other means)",
    "internal_error": "an unexpected exception while decoding",
}

# Work a SIGKILL can lose: the sources ingested in the last this many seconds, plus those in hand.
_COMMIT_SECONDS = 3.0
_COMMIT_SOURCES = 256  # Also commit after this many, so one commit stays a small write.
_TICK_SECONDS = 0.5  # How often a run waiting on decoders looks at the clock and at signals.
# Every commit is an index segment that each open of the store reads: merge them into one
# compaction while a run goes on, and at the end of a run when there are more than a few. A
# compaction copies the whole index (~36 s at 10M clips), so compacting every N segments would make
# a long ingest's compaction work grow with the square of its size: while running, compact once
# there are _COMPACT_RUNNING segments AND the entries since the last compaction reach
# _COMPACT_GROWTH of the clips it holds. The compactions then grow geometrically and cost at most
# (1 + g) / g = 9 times one copy of the final index in all, while a reader (or a resumed run)
# parses at most ~1/8 of the store's entries beyond the compaction.
_COMPACT_RUNNING = 512
_COMPACT_GROWTH = 0.125
_COMPACT_SEGMENTS = 32
# Entries a clip store holds at its root (anything else means the folder is something else).
_STORE_NAMES = {METADATA_KEY, REPORT_KEY, "data", "captions", "audio", "index"}
_STORE_ARRAYS = ("index", "data", "captions", "audio")
# Entries of a sharded dataset's root; "<key>.__lock" is tensorstore's, while a worker writes that key.
_DATASET_NAME = re.compile(rf"shard-\d{{5}}-of-\d{{5}}|{re.escape(DATASET_KEY)}(\.__lock)?")
# Sample rates prepare takes (Hz): telephone-band speech up to studio audio.
_AUDIO_RATES = (1000, 192_000)


@dataclasses.dataclass
class PrepareReport:
    """What a :func:`prepare` run did. Counts are for this run only.

    ``inputs_seen``: media files found (folder, single file) or CSV rows. ``sources_done``: sources ingested
    by this run. ``skipped_done``: sources already done by an earlier run. ``failures``:
    ``{reason: count}``; ``failed``: ``{"path", "reason", "detail"}`` per skipped source, sorted
    by path, ``path`` relative to the input folder (or as in the CSV). ``caption_changes``:
    ``{change: count}`` (see ``CAPTION_CHANGES``) over the sources ingested by this run;
    ``captions_changed``: ``{"path", "change", "detail"}`` for each, sorted by path. ``audio``:
    ``{"sound" | "silent" | "none": count}`` over the videos ingested by this run with sound on
    (a video is ``"sound"`` if any of its clips is, ``"silent"`` if it has a track but no clip
    reaches -60 dBFS, ``"none"`` without a track); ``without_sound``: ``{"path", "audio"}`` for
    each silent or soundless one, sorted by path. ``scene_cuts``: cuts found in the videos
    ingested; ``short_scenes``: scenes dropped for being shorter than ``MIN_SCENE_SECONDS`` next to
    a cut; ``letterboxed``: clips whose bars were cropped; ``flagged``: ``{name: count}`` of clips
    under the thresholds of :data:`~sora_jax.data.clip_filters.FLAGS` (stored all the same:
    training selects by the scores). ``shard``: for a worker of a sharded dataset,
    ``{"index", "count", "sources", "of"}``: its shard, and how many of the input's sources it took.
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
    caption_changes: dict[str, int] = dataclasses.field(default_factory=dict)
    captions_changed: list[dict[str, str]] = dataclasses.field(default_factory=list)
    audio: dict[str, int] = dataclasses.field(default_factory=dict)
    without_sound: list[dict[str, str]] = dataclasses.field(default_factory=list)
    scene_cuts: int = 0
    short_scenes: int = 0
    letterboxed: int = 0
    flagged: dict[str, int] = dataclasses.field(default_factory=dict)
    shard: dict[str, int] | None = None
    elapsed_s: float = 0.0

    def fail(self, path: str, reason: str, detail: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.failed.append({"path": path, "reason": reason, "detail": detail})
        log.info("skipped %s: %s (%s)", path, reason, detail)

    def caption_changed(self, path: str, change: str, detail: str) -> None:
        self.caption_changes[change] = self.caption_changes.get(change, 0) + 1
        self.captions_changed.append({"path": path, "change": change, "detail": detail})

    def heard(self, path: str, state: str) -> None:
        self.audio[state] = self.audio.get(state, 0) + 1
        if state != "sound":
            self.without_sound.append({"path": path, "audio": state})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, ensure_ascii=False)


def prepare(
    input: str | os.PathLike,
    output: str | os.PathLike,
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
    audio_rate: int | None = 16000,
    audio_channels: int = 1,
    scene_threshold: float | None = DEFAULT_SCENE_THRESHOLD,
    letterbox_crop: bool = True,
    progress: bool = True,
    shard: Shard | None = None,
) -> PrepareReport:
    """Decodes the videos/images under ``input`` into uint8 clips in the store at ``output``.

    ``input``: a folder, a video or image file, or an Open-Sora CSV (see
    :mod:`sora_jax.data.source_list`);
    ``output``: a clip store path or URL, created if absent (an existing one must hold uint8,
    C=3 clips made with the same clip and sound settings and text encoder). ``max_seconds``: longest clip
    (s). ``fps``: target frames/s (None keeps every frame). ``max_area``: most pixels per output
    frame. ``min_side``: smallest usable source side (px). ``max_input_pixels``: largest usable
    source frame (px), a guard against decompression bombs. ``workers``: decoding processes (0
    decodes in this process: no crash isolation, for debugging). ``caption_default``: caption for
    sources without one (None skips them). ``file_timeout``: seconds one file may take to decode
    before its process is killed (None: no limit; ignored with ``workers=0``). ``text_encoder``:
    a frozen encoder's directory, to store caption embeddings of at most ``caption_tokens``
    tokens. ``audio_rate``: sample rate (Hz) of the sound kept with each video clip (None: no
    sound); ``audio_channels``: 1 (mono) or 2 (stereo). ``scene_threshold``: split videos at
    scene cuts found at this ContentDetector threshold (None: do not split); ``letterbox_crop``:
    crop dark bars from clips (see :mod:`sora_jax.data.clip_filters`). ``progress``: a progress line on stderr
    (sources done of those to do, clips written), redrawn every 0.5 s on a terminal and every
    30 s into a file. ``shard``: this worker's shard of a sharded dataset at ``output`` (None: the
    output is one store, written by this run alone).

    Sources already marked done in the store are skipped, so an interrupted run resumes where
    it stopped. Every mistake in the arguments, the input (a missing path, a CSV that cannot be
    read as one) or the output (a file, a read-only place, a folder that is not a clip store, a
    store of other settings) raises :class:`ConfigError` before anything is decoded or written;
    per-source problems are only reported. SIGINT raises KeyboardInterrupt and SIGTERM
    SystemExit(143), after committing every source decoded so far (only when called from the
    main thread; elsewhere signals keep their handlers).
    """
    output = os.fspath(output)
    settings = ClipSettings(
        float(max_seconds),
        None if fps is None else float(fps),
        max_area,
        min_side,
        max_input_pixels,
        audio_rate,
        audio_channels,
        None if scene_threshold is None else float(scene_threshold),
        bool(letterbox_crop),
    )
    _check_arguments(settings, workers, file_timeout, caption_tokens, caption_default)
    started = time.monotonic()
    root, output = output, _shard_output(output, shard)
    _check_output(output)
    report = PrepareReport(input=os.fspath(input), output=output)
    found = find_sources(Path(input))
    report.inputs_seen = found.inputs_seen
    if shard is not None:
        of = len(found.sources)
        found.sources = [source for source in found.sources if shard.owns(source.key)]
        found.rejected = [row for row in found.rejected if shard.owns(row[0])]
        report.shard = {"index": shard.index, "count": shard.count, "sources": len(found.sources), "of": of}
        log.info(
            "shard %d of %d (%s): %d of %d sources",
            shard.index,
            shard.count,
            shard.name,
            len(found.sources),
            of,
        )
    for key, reason, detail in found.rejected:
        report.fail(key, reason, detail)
    existing = _open_existing(output)
    if existing is not None:
        _check_resumable(existing, output, settings, text_encoder, caption_tokens)
    embedder = None
    if text_encoder is not None:  # JAX loads only where captions are embedded, never in decoders.
        from sora_jax.text.embedder import CaptionEmbedder

        try:
            embedder = CaptionEmbedder(text_encoder, caption_tokens)
        except (OSError, ValueError) as error:
            raise ConfigError(f"text encoder {os.fspath(text_encoder)!r}: {error}") from None
    if shard is not None:  # Everything is checked: the root becomes (or stays) a sharded dataset.
        claim_dataset(root, shard.count)
    store = _open_store(output, existing, settings, embedder)

    done = store.sources_done()
    # From the index's per-source summary and the later records: never every clip's row.
    partial = store.sources() - done
    todo: list[Source] = []
    for source in found.sources:
        if source.key in done:
            report.skipped_done += 1
        elif source.key in partial:
            report.fail(source.key, "partial_in_store", "clips present without a done mark; not re-adding")
        elif source.problem is not None:
            report.fail(source.key, *source.problem)
        elif source.caption is None and caption_default is None:
            report.fail(source.key, "missing_caption", "no caption file or text")
        elif source.caption is None:
            caption, changes = clean_caption(caption_default)
            todo.append(dataclasses.replace(source, caption=caption, caption_changes=tuple(changes)))
        else:
            todo.append(source)

    stop = StopOnSignal()
    bar = progress_bar(len(todo), progress)
    stop.install()
    try:
        with logs_above_progress(progress):
            _ingest_all(store, todo, settings, workers, file_timeout, report, embedder, bar, stop)
    finally:
        bar.close()
        try:
            # Staged entries are whole sources (atomic groups), so committing them is always safe.
            store.flush()
        finally:
            stop.uninstall()
    if stop.signum is not None:
        log.warning(
            "prepare stopped by %s after %d sources; run it again to resume",
            signal.Signals(stop.signum).name,
            report.sources_done,
        )
        raise KeyboardInterrupt if stop.signum == signal.SIGINT else SystemExit(128 + stop.signum)

    report.failed.sort(key=lambda f: (f["path"], f["reason"]))
    report.captions_changed.sort(key=lambda c: (c["path"], c["change"]))
    report.without_sound.sort(key=lambda c: c["path"])
    report.elapsed_s = round(time.monotonic() - started, 3)
    store.kvstore.write(REPORT_KEY, report.to_json()).result()
    log.info(
        "prepare %s -> %s: %d sources done, %d already done, %d clips, %d frames, failures %s%s",
        report.input,
        report.output,
        report.sources_done,
        report.skipped_done,
        report.clips_written,
        report.frames_written,
        report.failures,
        f", audio {report.audio}" if report.audio else "",
    )
    if report.clips_written:
        log.info(
            "%d scene cuts, %d short scenes dropped, %d clips with bars cropped; clips stored that "
            "training can leave out by their scores (data.min_brightness, ...): %s",
            report.scene_cuts,
            report.short_scenes,
            report.letterboxed,
            report.flagged or "none",
        )
    for change, count in report.caption_changes.items():
        first = next(c for c in report.captions_changed if c["change"] == change)
        log.warning(
            "%d caption%s stored changed (%s), first %s (%s); all are listed in %s",
            count,
            "s" if count > 1 else "",
            CAPTION_CHANGES[change],
            first["path"],
            first["detail"],
            REPORT_KEY,
        )
    return report


def _ingest_all(
    store: ClipStore,
    todo: list[Source],
    settings: ClipSettings,
    workers: int,
    file_timeout: float | None,
    report: PrepareReport,
    embedder: Any,
    bar: tqdm,
    stop: StopOnSignal,
) -> None:
    """Decodes ``todo`` and appends each source whole, committing as the module docstring says."""
    scratch = new_scratch()
    pool = None
    try:
        pool = IsolatedPool(workers, file_timeout) if workers > 0 and todo else None
        tasks = (
            (i, decode_source, (s.path, os.path.join(scratch, str(i)), settings, s.fps_hint))
            for i, s in enumerate(todo)
        )
        if pool:
            results = pool.run(tasks, tick=_TICK_SECONDS)
        else:
            results = ((i, *call_task(fn, args)) for i, fn, args in tasks)
        staged, last_commit = 0, -math.inf  # The first source commits at once.
        for result in results:
            if result is not None:  # None: a tick while decoders work.
                i, ok, value = result
                source = todo[i]
                try:
                    if ok:
                        _ingest(store, source, value, report, embedder)
                        staged += 1
                    else:
                        report.fail(source.key, *value)
                finally:
                    shutil.rmtree(os.path.join(scratch, str(i)), ignore_errors=True)
                failed = sum(report.failures.values())
                bar.set_postfix_str(f"{report.clips_written} clips, {failed} skipped", refresh=False)
                bar.update(1)
            now = time.monotonic()
            if staged and (now - last_commit >= _COMMIT_SECONDS or staged >= _COMMIT_SOURCES):
                store.flush()
                store.compact(min_segments=_COMPACT_RUNNING, min_growth=_COMPACT_GROWTH)
                staged, last_commit = 0, now
            if stop.signum is not None:
                return
        store.compact(min_segments=_COMPACT_SEGMENTS)
    finally:
        if pool:
            pool.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _ingest(
    store: ClipStore,
    source: Source,
    decoded: DecodedSource,
    report: PrepareReport,
    embedder: Any = None,
) -> None:
    """Appends one source's spooled clips (with their sound, scores and hash) and its done mark as
    one atomic group."""
    fps, clips = decoded.fps, decoded.clips
    frames_written = 0
    # One caption per source: encoded once, stored with each of its clips.
    embedding = embedder(source.caption) if embedder is not None else None
    heard = set()
    with store.atomic():
        for k, clip in enumerate(clips):
            frames = np.load(clip.file)
            clip_id = f"{source.key}#{k}"
            store.append(
                frames,
                clip_id=clip_id,
                fps=fps,
                caption=source.caption,
                source=source.key,
                start=clip.start,
                caption_embedding=embedding,
                audio=None if clip.sound is None else np.load(clip.sound),
                scores=clip.scores,
                phash=clip.phash,
            )
            frames_written += frames.shape[0]
            heard.add(store.record(clip_id).audio)
        store.mark_done(source.key)
    if store.audio_sample_rate and fps > 0:  # Stills have no sound to count.
        report.heard(source.key, next(state for state in AUDIO_STATES if state in heard))
    report.sources_done += 1
    report.clips_written += len(clips)
    report.frames_written += frames_written
    report.scene_cuts += decoded.scene_cuts
    report.short_scenes += decoded.short_scenes
    report.letterboxed += sum(clip.cropped for clip in clips)
    for name in (name for clip in clips for name in flagged(clip.scores)):
        report.flagged[name] = report.flagged.get(name, 0) + 1
    for change, detail in source.caption_changes:
        report.caption_changed(source.key, change, detail)


# -- checks before any work ------------------------------------------------------------------


def _check_arguments(
    settings: ClipSettings,
    workers: int,
    file_timeout: float | None,
    caption_tokens: int,
    caption_default: str | None,
) -> None:
    if not (settings.max_seconds > 0 and math.isfinite(settings.max_seconds)):
        raise ConfigError(f"max_seconds must be a positive number of seconds, got {settings.max_seconds}")
    if settings.fps is not None and not (settings.fps > 0 and math.isfinite(settings.fps)):
        raise ConfigError(f"fps must be positive or None (keep every frame), got {settings.fps}")
    if settings.max_area < 64:
        raise ConfigError(f"max_area must be >= 64 (one 8x8 frame), got {settings.max_area}")
    if settings.min_side < 1 or settings.max_input_pixels < 1:
        raise ConfigError(
            "min_side and max_input_pixels must be >= 1, "
            f"got {settings.min_side}, {settings.max_input_pixels}"
        )
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    if file_timeout is not None and not file_timeout > 0:
        raise ConfigError(f"file_timeout must be positive or None, got {file_timeout}")
    if caption_tokens < 1:
        raise ConfigError(f"caption_tokens must be >= 1, got {caption_tokens}")
    if caption_default is not None and not caption_default.strip():
        raise ConfigError("caption_default is empty: give a caption, or None to skip uncaptioned sources")
    low, high = _AUDIO_RATES
    rate = settings.audio_rate
    if rate is not None and not (isinstance(rate, int) and low <= rate <= high):
        raise ConfigError(
            f"audio_rate must be an int from {low} to {high} Hz, or None (no sound); got {rate}"
        )
    if settings.audio_channels not in (1, 2):
        raise ConfigError(f"audio_channels must be 1 (mono) or 2 (stereo), got {settings.audio_channels}")
    threshold = settings.scene_threshold
    if threshold is not None and not (threshold > 0 and math.isfinite(threshold)):
        raise ConfigError(f"scene_threshold must be positive, or None (no scene cuts); got {threshold}")


def _shard_output(output: str, shard: Shard | None) -> str:
    """The store this run writes: ``output`` itself, or ``shard``'s store under the sharded root
    ``output``. Refuses a run sharded unlike what ``output`` holds."""
    held = dataset_shards(output)
    if shard is None:
        if held is not None:
            raise ConfigError(
                f"output {output!r} is a dataset of {held} shards: prepare into it with --shard I "
                f"--num-shards {held} (one worker a shard), or give a new --output"
            )
        return output
    if held is not None and held != shard.count:
        raise ConfigError(
            f"output {output!r} is a dataset of {held} shards, not {shard.count}: every worker must "
            f"pass --num-shards {held}, or give a new --output"
        )
    if _open_existing(output) is not None:
        raise ConfigError(
            f"output {output!r} is a clip store written by one worker, not a sharded dataset: drop "
            "--shard/--num-shards (and any SLURM array, Indexed Job or GKE TPU shard) to add to it, "
            "or give a new --output"
        )
    path = Path(output).absolute()
    if "://" not in output and path.is_dir():
        names = {name for name in os.listdir(path) if not name.startswith(".")}
        if any(not _DATASET_NAME.fullmatch(name) for name in names):
            raise ConfigError(
                f"output {output!r} is a folder of other files, not a sharded dataset: "
                "give a new or empty --output"
            )
    return shard_path(output, shard)


def _check_output(output: str) -> None:
    """Refuses a local ``output`` that is a file, read-only, or a folder holding something else."""
    if "://" in output:
        return  # A bucket: tensorstore reports what is wrong when the store is opened.
    path = Path(output).absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output {output!r} is a file; a clip store is a folder: give a new --output")
    nearest = path  # The store's folder, or the nearest folder above that exists (it goes there).
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise ConfigError(f"output {output!r} cannot be created: {os.fspath(nearest)!r} is a file")
    if nearest != path:
        writable = [nearest]
    else:
        names = {name for name in os.listdir(path) if not name.startswith(".")}
        if METADATA_KEY not in names and names - _STORE_NAMES:
            raise ConfigError(
                f"output {output!r} is a folder of other files, not a clip store: "
                "give a new or empty --output"
            )
        writable = [path] + [path / name for name in _STORE_ARRAYS if (path / name).is_dir()]
    for folder in writable:
        refused = cannot_write_in(folder)
        if refused:
            raise ConfigError(
                f"output {output!r} is not writable ({os.fspath(folder)!r}: {refused}): "
                "give a --output you can write to"
            )


def _open_existing(output: str) -> ClipStore | None:
    try:
        return ClipStore.open(output)
    except FileNotFoundError:
        return None
    except ValueError as error:  # Not a clip store, or a version this code cannot extend.
        raise ConfigError(f"output {output!r}: {error}") from None


def _check_resumable(
    store: ClipStore,
    output: str,
    settings: ClipSettings,
    text_encoder: str | os.PathLike | None,
    caption_tokens: int,
) -> None:
    """Refuses to add to ``store`` clips or caption embeddings unlike those it holds."""
    if store.dtype != np.uint8 or store.channels != 3:
        raise ConfigError(
            f"output {output!r} holds {store.dtype.name} clips with C={store.channels}, not pixels: "
            "give a new --output"
        )
    clip_changes, caption_changes = [], []
    stored = store.extra.get(PREPARE_KEY)
    if stored is None and len(store):
        log.warning("%s does not say which settings made its clips; assuming these", output)
    elif stored is not None and len(store):  # An empty store takes the settings of this run.
        asked = settings.shaping()
        for key in ("max_seconds", "fps", "max_area"):
            if stored.get(key) != asked[key]:
                clip_changes.append(f"{_flag(key)} {_shown(stored.get(key))} -> {_shown(asked[key])}")
        clip_changes += _sound_changes(stored, asked)
        clip_changes += setting_changes(stored, asked)
    held_encoder = store.caption_encoder.get("name") if store.caption_dim else None
    asked_encoder = Path(text_encoder).resolve().name if text_encoder is not None else None
    held_tokens = store.caption_encoder.get("max_tokens")
    if held_encoder != asked_encoder:
        caption_changes.append(f"--text-encoder {held_encoder or 'none'} -> {asked_encoder or 'none'}")
    elif asked_encoder is not None and held_tokens != caption_tokens:
        caption_changes.append(f"--caption-tokens {held_tokens} -> {caption_tokens}")
    held_sound = (store.audio_sample_rate, store.audio_channels)
    asked_sound = (settings.audio_rate or 0, settings.audio_channels if settings.audio_rate else 0)
    if not clip_changes and held_sound != asked_sound:  # An empty store, or one made by other means.
        raise ConfigError(
            f"output {output!r} keeps {_sound_shown(*held_sound)}, not {_sound_shown(*asked_sound)}: "
            "rerun with its audio flags, or give a new --output"
        )
    if clip_changes or caption_changes:
        held = [
            kind
            for kind, changes in (("clips", clip_changes), ("caption embeddings", caption_changes))
            if changes
        ]
        raise ConfigError(
            f"output {output!r} holds {' and '.join(held)} made with other settings "
            f"(stored -> asked: {', '.join(clip_changes + caption_changes)}): rerun with the stored "
            "ones to resume it, or give a new --output"
        )


def _sound_changes(stored: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """The audio flags that differ, as ``stored -> asked``; a store kept before sound existed
    holds no ``audio_*`` keys and reads as made with ``--no-audio``."""
    held_rate, held_channels = stored.get("audio_rate"), stored.get("audio_channels")
    rate, channels = asked["audio_rate"], asked["audio_channels"]
    if (held_rate is None) != (rate is None):
        shown = [
            f"--audio-rate {r} --audio-channels {c}" if r else "--no-audio"
            for r, c in ((held_rate, held_channels), (rate, channels))
        ]
        return [f"{shown[0]} -> {shown[1]}"]
    changes = []
    if held_rate != rate:
        changes.append(f"--audio-rate {held_rate} -> {rate}")
    if held_channels != channels:
        changes.append(f"--audio-channels {held_channels} -> {channels}")
    return changes


def _sound_shown(rate: int, channels: int) -> str:
    return f"sound at {rate} Hz x{channels}" if rate else "no sound"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _shown(value: Any) -> str:
    """A setting as the command line takes it (``--fps 0`` keeps every frame)."""
    if value is None:
        return "0"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _open_store(output: str, existing: ClipStore | None, settings: ClipSettings, embedder: Any) -> ClipStore:
    """``existing`` (its settings set if it holds no clip yet) or a new store at ``output``."""
    if existing is None:
        captions = {}
        if embedder is not None:
            captions = {"caption_dim": embedder.dim, "caption_encoder": embedder.description}
        try:
            return ClipStore.create(
                output,
                dtype="uint8",
                channels=3,
                extra={PREPARE_KEY: settings.shaping()},
                audio_sample_rate=settings.audio_rate or 0,
                audio_channels=settings.audio_channels,
                **captions,
            )
        except FileExistsError as error:  # Half-created, or created by another process meanwhile.
            raise ConfigError(str(error)) from None
    wanted = {"dim": embedder.dim, "encoder": embedder.description} if embedder else {"dim": 0, "encoder": {}}
    held = {"dim": existing.caption_dim, "encoder": existing.caption_encoder}
    if wanted != held:  # Same directory name, another model.
        raise ConfigError(
            f"output {output!r} holds caption embeddings {held}, not {wanted}: "
            "give a new --output to change the text encoder"
        )
    if not len(existing) and existing.extra.get(PREPARE_KEY) != settings.shaping():
        existing.extra[PREPARE_KEY] = settings.shaping()
        existing.flush()
    return existing
