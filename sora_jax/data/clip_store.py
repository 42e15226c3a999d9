"""A store of variable-shape clips (pixels or latents) on tensorstore, local or remote.

Layout under the store's root (a local directory or any tensorstore kvstore URL such as
``gs://bucket/store``; every key is read and written through tensorstore, never ``os``)::

    clip_store.json             {"format", "version", "dtype", "channels", "chunk_elements", "extra",
                                 "captions" (only in a store with caption embeddings),
                                 "audio" (only in a store with sound)}
    data/                       zarr v3 array, 1-D, the store's dtype, chunks of ~4 MiB, zstd
    captions/                   (optional) zarr v3 array, 1-D: caption embeddings, the same way
    audio/                      (optional) zarr v3 array, 1-D int16: clips' sound, the same way
    index/000000000009.jsonl    index segment: one JSON object per line, written once
    index/000000000007.columns.json   columnar compaction of segments <= 7: its manifest,
    index/000000000007.columns-*      and its objects (see "The index" below)

Each clip is the C-order ``[T, H, W, C]`` array flattened into the contiguous element range
``[offset, offset + T*H*W*C)`` of ``data``, so clips of any shape share one array, reading a
clip is one tensorstore read, and appending writes only past the end (only the partly filled
last chunk is rewritten, and a kvstore writes a chunk atomically, so committed bytes are never
lost). ``data`` grows by resizing its zarr shape, never by moving data. Pixels are ``uint8``
with ``C == 3``; latents are ``float16``/``float32`` with any ``C``. The dtype and channel
count are fixed when the store is created.

A store may also hold each clip's caption embedding: a frozen text encoder's hidden states of the
caption's real tokens, ``[L, D]`` (``L`` varies by caption, ``D`` is fixed per store), computed
once when the store is prepared so training never runs the encoder. They lie in ``captions/`` as
the clips lie in ``data/``; ``clip_store.json`` names their width, dtype and encoder under
``"captions"``.

A store may also hold each clip's sound: the audio of exactly the clip's time span (from its
``start`` for ``T / fps`` s, ``round(T / fps * sample_rate)`` samples), int16 samples of
``channels`` interleaved channels (mono or stereo) at one sample rate for the whole store, named
with the encoding under ``"audio"`` in ``clip_store.json``. Each clip's record says what it has
(:data:`AUDIO_STATES`): ``"sound"``, ``"silent"`` (stored, but its peak is below
:data:`SILENCE_DBFS`) or ``"none"`` (its source has no audio track; nothing stored). Stores made
before sound existed read as ``"none"`` throughout.

``"extra"`` is JSON metadata about the store as a whole, free for its writer to fill (see
:attr:`ClipStore.extra`); the keys the library itself writes and reads are :data:`AUTOENCODER_KEY`,
:data:`STATS_KEY` and :data:`PREPARE_KEY`. An encoded latent store holds the first two (the
statistics once its encode has finished); a pixel store made by ``prepare`` holds the third.

The index
---------
Index entries are ``{"type": "clip", "id", "shape", "fps", "caption", "source", "start",
"offset"}`` (plus ``"caption_offset"`` and ``"caption_tokens"`` in a store with caption
embeddings, ``"audio"``, ``"audio_offset"``, ``"audio_samples"`` for a clip with stored sound,
``"scores"`` and ``"phash"`` when measured), ``{"type": "caption", "id", "caption"[,
"caption_offset", "caption_tokens"]}`` (a new caption for an earlier clip: later ones win) and
``{"type": "done", "source"}``. A clip's position is its place in entry order, forever.
:meth:`ClipStore.append` writes the clip's data at once but only stages its entry;
:meth:`ClipStore.flush` writes all staged entries as one new segment, a single atomic object
write. So an entry can only exist for data that was completely written (clip, caption embedding
and sound alike): a crash before the flush loses the staged clips (their space is reused by the
next writer) but never leaves an entry pointing at missing data.

:meth:`ClipStore.compact` rewrites everything up to the last segment ``N`` as one columnar
compaction (see :mod:`sora_jax.data.clip_index`): opening a store of millions of clips reads its
small manifest, and a column or a clip's row only when first needed. Segments written after the
compaction (``N+1.jsonl`` ...) are read whole. Stores compacted before the columnar layout have
``N.all.jsonl``, every entry as JSON lines; they still open (every entry parsed), and their next
compaction converts them.

Concurrency: one writer at a time. Ingest decodes in worker processes that return frames to one
parent process, and only that parent opens the store for writing, so no locking is needed.
Segment writes are conditional on the key being absent, so a second writer that does appear
fails loudly instead of silently replacing entries. Any number of readers may open the store;
a reader sees the entries flushed before it opened it (open it again to see later ones).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import operator
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorstore as ts

from sora_jax.data import clip_index
from sora_jax.data.clip_index import (
    MANIFEST,
    ColumnIndex,
    ColumnWriter,
    entry_line,
    manifest_key,
    phash_values,
    row_facts,
)

FORMAT = "sora_jax.clip_store"
VERSION = 1
DTYPES = ("uint8", "float16", "float32")
METADATA_KEY = "clip_store.json"
DEFAULT_CHUNK_BYTES = 4 << 20  # Big enough for cheap object-store requests, small enough to read.

# Schema of ``ClipStore.extra``: the keys the library writes and reads. Both are written by latent
# encoding (sora_jax.data.encode); caption embeddings are described by ``"captions"`` instead.
#
# The autoencoder whose latents the store holds, as ``TrainedAutoencoder.describe()`` gives it:
# ``{"name", "step", "temporal_factor", "spatial_factor", "latent_channels"}``. Written when the
# store is created: a resumed encode must match it, and a latent DiT run checks ``"name"``
# against its ``model.autoencoder``, since latents decode only with the autoencoder that made them.
AUTOENCODER_KEY = "autoencoder"
# Per-channel latent statistics ``{"mean": [C floats], "std": [C floats], "clips": n}`` over ``n``
# clips spread through the store. Written last, when an encode finishes, so its absence means an
# unfinished encode. Training normalises latents with them and sampling undoes it.
STATS_KEY = "latent_stats"
# The settings that shaped a prepared pixel store's clips: ``{"max_seconds", "fps", "max_area"}``
# (``fps`` null: every source frame kept), as ``sora_jax.data.prepare`` took them. A later prepare
# into the store must use the same ones, or the store would hold clips of two kinds.
PREPARE_KEY = "prepare"

# What a clip's record says of its sound. "silent": stored, with every sample's magnitude below
# SILENCE_DBFS (a muted or zero-filled track: a real room recorded by any microphone is 20-30 dB
# louder, while 16-bit dither and codec noise in silence lie near -90 dBFS).
AUDIO_STATES = ("sound", "silent", "none")
SILENCE_DBFS = -60.0
_PCM_SCALE = 32767  # Full scale of the int16 samples: x in [-1, 1] is stored as round(x * 32767).
# Largest int16 magnitude that is still silent: 10 ** (-60 / 20) * 32767 = 32.8.
_SILENT_PCM = math.floor(10 ** (SILENCE_DBFS / 20) * _PCM_SCALE)

# A key's generation when it does not exist: a write conditioned on it only creates.
_NO_VALUE = b"\x02"
_SEGMENT = re.compile(r"^(\d{12})\.jsonl$")
_LEGACY = re.compile(r"^(\d{12})\.all\.jsonl$")  # The whole index as JSON lines: older stores' compaction.
_INDEX_OBJECT = re.compile(r"^(\d{12})\.(?:jsonl|all\.jsonl|columns\.json|columns-.+)$")
_GROWTH = 1.25  # Geometric growth keeps zarr metadata rewrites O(log size).


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One committed clip: where its data lies and what it shows.

    ``shape`` is ``(T, H, W, C)``; ``fps`` frames/s (0.0 for a still image); ``start`` the
    time (s) in ``source`` of the clip's first frame; ``offset`` the element (not byte) index of
    the clip's first value in the store's flat data array. ``audio`` is one of
    :data:`AUDIO_STATES`; a clip with stored sound has ``audio_samples`` samples (each of the
    store's audio channels) from element ``audio_offset`` of ``audio/``.
    """

    clip_id: str
    shape: tuple[int, int, int, int]
    fps: float
    caption: str
    source: str
    start: float
    offset: int
    # Where the caption embedding lies in ``captions/`` (elements) and its token count L; 0 tokens
    # in a store without caption embeddings.
    caption_offset: int = 0
    caption_tokens: int = 0
    audio: str = "none"
    audio_offset: int = 0
    audio_samples: int = 0
    # Per-clip measurements made at ingest (motion, brightness, ...), by name; see
    # sora_jax.data.clip_filters for the names prepare writes. Empty for clips made without them.
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    # A 64-bit perceptual hash of the clip's look, 16 hex digits ("" when not computed): clips
    # whose hashes differ in few bits are near-duplicates.
    phash: str = ""

    @property
    def num_frames(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        """Number of elements, ``T * H * W * C``."""
        return math.prod(self.shape)

    def to_entry(self) -> dict[str, Any]:
        entry = {
            "type": "clip",
            "id": self.clip_id,
            "shape": list(self.shape),
            "fps": self.fps,
            "caption": self.caption,
            "source": self.source,
            "start": self.start,
            "offset": self.offset,
        }
        if self.caption_tokens:
            entry |= {"caption_offset": self.caption_offset, "caption_tokens": self.caption_tokens}
        if self.audio != "none":
            entry |= {
                "audio": self.audio,
                "audio_offset": self.audio_offset,
                "audio_samples": self.audio_samples,
            }
        if self.scores:
            entry["scores"] = dict(self.scores)
        if self.phash:
            entry["phash"] = self.phash
        return entry

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> ClipRecord:
        shape = tuple(int(n) for n in entry["shape"])
        if len(shape) != 4:
            raise ValueError(f"clip entry {entry.get('id')!r} has shape {shape}, expected 4 dims")
        audio = str(entry.get("audio", "none"))
        if audio not in AUDIO_STATES:
            raise ValueError(f"clip entry {entry.get('id')!r} has audio {audio!r}, not one of {AUDIO_STATES}")
        return cls(
            clip_id=str(entry["id"]),
            shape=shape,  # type: ignore[arg-type]  # Length checked above.
            fps=float(entry["fps"]),
            caption=str(entry["caption"]),
            source=str(entry["source"]),
            start=float(entry["start"]),
            offset=int(entry["offset"]),
            caption_offset=int(entry.get("caption_offset", 0)),
            caption_tokens=int(entry.get("caption_tokens", 0)),
            audio=audio,
            audio_offset=int(entry.get("audio_offset", 0)),
            audio_samples=int(entry.get("audio_samples", 0)),
            scores={str(k): float(v) for k, v in entry.get("scores", {}).items()},
            phash=str(entry.get("phash", "")),
        )


def _root_spec(path: str | os.PathLike) -> ts.KvStore.Spec:
    """A kvstore spec for the store's root directory (always ending in "/")."""
    path = os.fspath(path)
    if "://" in path:
        return ts.KvStore.Spec(path if path.endswith("/") else path + "/")
    # A spec rather than a "file://" URL: local paths may hold characters URLs must escape.
    return ts.KvStore.Spec({"driver": "file", "path": os.path.abspath(path) + "/"})


def _flat_array_spec(
    kvstore: ts.KvStore.Spec, dtype: str, chunk_elements: int, compress: bool
) -> dict[str, Any]:
    """A new, empty 1-D zarr v3 array that grows by resizing (clip data, caption embeddings)."""
    codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if compress:
        codecs.append({"name": "zstd", "configuration": {"level": 3}})
    return {
        "driver": "zarr3",
        "kvstore": kvstore.to_json(),
        "metadata": {
            "shape": [0],
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_elements]}},
            "chunk_key_encoding": {"name": "default"},
            "fill_value": 0,
            "codecs": codecs,
        },
    }


def _write_flat(
    array: ts.TensorStore, offset: int, values: np.ndarray, chunk_elements: int
) -> ts.TensorStore:
    """Write ``values`` (flattened) at ``offset``, growing ``array`` first if needed; returns the
    (possibly resized) array handle."""
    size = values.size
    if offset + size > array.shape[0]:
        # Grow by whole chunks (unwritten chunks cost nothing) and geometrically.
        want = max(offset + size, math.ceil(array.shape[0] * _GROWTH))
        want = -(-want // chunk_elements) * chunk_elements
        array = array.resize(exclusive_max=[want], expand_only=True).result()
    array[offset : offset + size].write(values.reshape(-1)).result()
    return array


def _read_flat(array: ts.TensorStore, offset: int, size: int) -> tuple[np.ndarray, ts.TensorStore]:
    """``size`` elements from ``offset``, and the array handle (reopened if a writer grew it)."""
    if offset + size > array.shape[0]:
        array = ts.open(array.spec(minimal_spec=True), open=True).result()
    return array[offset : offset + size].read().result(), array


def _encode_lines(entries: list[dict[str, Any]]) -> bytes:
    return "".join(entry_line(e) + "\n" for e in entries).encode()


class ClipStore:
    """Clips of one dtype and channel count, each a ``[T, H, W, C]`` array with its own T, H, W.

    Open with :meth:`create` or :meth:`open`. In the process that writes, ``len``,
    :attr:`records`, :meth:`has`, :meth:`read` and :meth:`sources_done` include staged (not yet
    flushed) entries; other processes, and stores opened later, see them only after
    :meth:`flush`. Not thread-safe for writing. Pickling gives a fresh reader of the flushed
    state (so a store can be handed to data-loader worker processes).
    """

    def __init__(
        self,
        path: str,
        root: ts.KvStore,
        metadata: dict[str, Any],
        data: ts.TensorStore,
        captions: ts.TensorStore | None = None,
        audio: ts.TensorStore | None = None,
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._path = path
        self._root = root
        self._index = root / "index/"
        self._data = data
        self._captions = captions
        caption_meta = metadata.get("captions") or {}
        # Caption embeddings: their width D (0: the store has none), dtype and encoder.
        self.caption_dim = int(caption_meta.get("dim", 0))
        self.caption_dtype = np.dtype(caption_meta.get("dtype", "float16"))
        self.caption_encoder: dict[str, Any] = dict(caption_meta.get("encoder", {}))
        self._caption_chunk = int(caption_meta.get("chunk_elements", 1))
        self._audio = audio
        audio_meta = metadata.get("audio") or {}
        # The sound's sample rate (0: the store keeps no sound) and channel count.
        self.audio_sample_rate = int(audio_meta.get("sample_rate", 0))
        self.audio_channels = int(audio_meta.get("channels", 0))
        self._audio_chunk = int(audio_meta.get("chunk_elements", 1))
        self.dtype = np.dtype(metadata["dtype"])
        self.channels = int(metadata["channels"])
        self.chunk_elements = int(metadata["chunk_elements"])
        self.extra: dict[str, Any] = dict(metadata.get("extra", {}))
        self._saved_extra = json.dumps(self.extra, sort_keys=True)
        # The index: the clips of the columnar compaction, read lazily, then every later clip as a
        # record in memory (from segments, an older store's JSON-lines compaction, appends).
        self._base: ColumnIndex | None = None
        self._tail: list[ClipRecord] = []
        self._tail_ids: dict[str, int] = {}  # Clip id -> position, for the clips in _tail.
        # Caption entries for clips of the compaction, by position: their rows hold older captions.
        self._base_captions: dict[int, dict[str, Any]] = {}
        # Sources marked done; the compaction's list is added when first needed.
        self._done: set[str] = set()
        self._base_done_read = False
        self._pending: list[dict[str, Any]] = []  # Staged entries, in order.
        # What each recaption replaced, (position, record or caption entry or None), so an
        # atomic() group can undo its own.
        self._replaced: list[tuple[int, Any]] = []
        self._in_atomic = False
        self._seq = 0  # Highest index segment number seen or written.
        self._live_segments = 0  # Segment objects a reader has to read (for compaction).
        self._tail_entries = 0  # Entries of those segments (or of an older JSON-lines compaction).
        self._end = 0  # First element past all committed and staged data.
        self._caption_end = 0  # The same in the caption embeddings.
        self._audio_end = 0  # The same in the sound.
        self._load_index()

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        dtype: str | np.dtype = "uint8",
        channels: int = 3,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        compress: bool = True,
        extra: dict[str, Any] | None = None,
        exist_ok: bool = False,
        caption_dim: int = 0,
        caption_dtype: str | np.dtype = "float16",
        caption_encoder: dict[str, Any] | None = None,
        audio_sample_rate: int = 0,
        audio_channels: int = 1,
    ) -> ClipStore:
        """Creates an empty store at ``path`` (a local directory or a kvstore URL).

        ``dtype`` is one of ``uint8`` (pixels), ``float16``, ``float32`` (latents); ``channels``
        the last axis of every clip. ``chunk_bytes`` sets the zarr chunk (rounded to whole
        elements); ``compress`` adds zstd (level 3) to each chunk. ``extra`` seeds
        :attr:`extra`. With ``exist_ok``, an existing store with the same dtype and channels is
        opened instead (a different one raises ValueError); otherwise an existing store raises
        FileExistsError.

        ``caption_dim > 0`` makes a store whose every clip carries a caption embedding ``[L,
        caption_dim]`` in ``caption_dtype`` (``float16`` or ``float32``); ``caption_encoder``
        describes the encoder that made them (kept in the metadata; an existing store opened with
        ``exist_ok`` must have the same width and encoder).

        ``audio_sample_rate > 0`` makes a store that keeps each clip's sound (when it has one) at
        that rate (Hz), with ``audio_channels`` channels (1 or 2); an existing store opened with
        ``exist_ok`` must keep the same (a store without sound has rate 0).
        """
        name = np.dtype(dtype).name
        caption_name = np.dtype(caption_dtype).name
        if not (isinstance(caption_dim, int) and caption_dim >= 0):
            raise ValueError(f"caption_dim must be an int >= 0, got {caption_dim!r}")
        if caption_dim and caption_name not in ("float16", "float32"):
            raise ValueError(f"caption_dtype must be float16 or float32, got {caption_name!r}")
        if name not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
        if not (isinstance(channels, int) and channels >= 1):
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        if not (isinstance(audio_sample_rate, int) and audio_sample_rate >= 0):
            raise ValueError(f"audio_sample_rate must be an int >= 0, got {audio_sample_rate!r}")
        if audio_channels not in (1, 2):
            raise ValueError(f"audio_channels must be 1 or 2, got {audio_channels!r}")
        spec = _root_spec(path)
        root = ts.KvStore.open(spec).result()
        if root.read(METADATA_KEY).result().state == "value":
            if not exist_ok:
                raise FileExistsError(f"a clip store already exists at {os.fspath(path)!r}")
            store = cls.open(path)
            if store.dtype.name != name or store.channels != channels:
                raise ValueError(
                    f"existing store at {os.fspath(path)!r} holds {store.dtype.name} clips with "
                    f"C={store.channels}, not {name} with C={channels}"
                )
            wanted = {"dim": caption_dim, "encoder": dict(caption_encoder or {})}
            held = {"dim": store.caption_dim, "encoder": store.caption_encoder}
            if wanted != held:
                raise ValueError(
                    f"existing store at {os.fspath(path)!r} holds caption embeddings {held}, "
                    f"not {wanted}: prepare into a new store to change the text encoder"
                )
            wanted_audio = (audio_sample_rate, audio_channels if audio_sample_rate else 0)
            held_audio = (store.audio_sample_rate, store.audio_channels)
            if wanted_audio != held_audio:
                raise ValueError(
                    f"existing store at {os.fspath(path)!r} holds {_sound_format(*held_audio)}, "
                    f"not {_sound_format(*wanted_audio)}: use a new store to change it"
                )
            return store
        chunk_elements = max(1, chunk_bytes // np.dtype(name).itemsize)
        arrays = {"data/": (name, chunk_elements)}
        caption_meta = None
        if caption_dim:
            caption_chunk = max(1, chunk_bytes // np.dtype(caption_name).itemsize)
            arrays["captions/"] = (caption_name, caption_chunk)
            caption_meta = {
                "dim": caption_dim,
                "dtype": caption_name,
                "chunk_elements": caption_chunk,
                "encoder": dict(caption_encoder or {}),
            }
        audio_meta = None
        if audio_sample_rate:
            audio_chunk = max(1, chunk_bytes // 2)
            arrays["audio/"] = ("int16", audio_chunk)
            audio_meta = {
                "sample_rate": audio_sample_rate,
                "channels": audio_channels,
                "dtype": "int16",
                "scale": _PCM_SCALE,
                "chunk_elements": audio_chunk,
            }
        opened = {}
        for key, (array_dtype, chunks) in arrays.items():
            try:
                opened[key] = ts.open(
                    _flat_array_spec(spec / key, array_dtype, chunks, compress), create=True
                ).result()
            except ValueError as e:  # ALREADY_EXISTS: an earlier create died before its metadata.
                raise FileExistsError(
                    f"{os.fspath(path)!r} holds a {key} array but no {METADATA_KEY}: an interrupted "
                    "create or not a clip store; remove it first"
                ) from e
        metadata = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": name,
            "channels": channels,
            "chunk_elements": chunk_elements,
            "extra": dict(extra or {}),
        }
        if caption_meta:
            metadata["captions"] = caption_meta
        if audio_meta:
            metadata["audio"] = audio_meta
        # Written last, and only if absent: a directory is a store once this key exists.
        stamp = root.write(METADATA_KEY, json.dumps(metadata, indent=1), if_equal=_NO_VALUE).result()
        if not stamp.generation:
            raise FileExistsError(f"another process created a clip store at {os.fspath(path)!r}")
        return cls(
            _display_path(path),
            root,
            metadata,
            opened["data/"],
            opened.get("captions/"),
            opened.get("audio/"),
        )

    @classmethod
    def open(cls, path: str | os.PathLike) -> ClipStore:
        """Opens the store at ``path``, loading its committed index.

        Raises FileNotFoundError if ``path`` holds no clip store, ValueError if its metadata is
        not a clip store's of a supported version.
        """
        spec = _root_spec(path)
        root = ts.KvStore.open(spec).result()
        result = root.read(METADATA_KEY).result()
        if result.state != "value":
            raise FileNotFoundError(f"no clip store at {os.fspath(path)!r} (missing {METADATA_KEY})")
        try:
            metadata = json.loads(result.value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{os.fspath(path)!r}: {METADATA_KEY} is not valid JSON: {e}") from e
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a clip store ({METADATA_KEY} has another format)")
        if metadata.get("version") != VERSION:
            raise ValueError(f"clip store version {metadata.get('version')} unsupported (want {VERSION})")
        data = ts.open({"driver": "zarr3", "kvstore": (spec / "data/").to_json()}, open=True).result()
        if data.dtype.numpy_dtype != np.dtype(metadata["dtype"]) or data.rank != 1:
            raise ValueError(f"{os.fspath(path)!r}: data array does not match {METADATA_KEY}")
        captions = None
        if metadata.get("captions"):
            captions = ts.open(
                {"driver": "zarr3", "kvstore": (spec / "captions/").to_json()}, open=True
            ).result()
        audio = None
        if metadata.get("audio"):
            audio = ts.open({"driver": "zarr3", "kvstore": (spec / "audio/").to_json()}, open=True).result()
        return cls(_display_path(path), root, metadata, data, captions, audio)

    def __reduce__(self) -> tuple:
        return (ClipStore.open, (self._path,))

    def __enter__(self) -> ClipStore:
        return self

    def __exit__(self, *exc: object) -> None:
        # Staged entries describe completely written clips, so committing them is safe even
        # when the block failed; only atomic() blocks drop entries.
        self.flush()

    def __repr__(self) -> str:
        return (
            f"ClipStore({self._path!r}, dtype={self.dtype.name}, channels={self.channels}, clips={len(self)})"
        )

    # -- index ------------------------------------------------------------------------------

    def _load_index(self) -> None:
        # A compaction may delete objects between our listing and our reads; list again then.
        for _ in range(5):
            keys = [k.decode() for k in self._index.list().result()]
            columnar = max((int(m[1]) for k in keys if (m := MANIFEST.match(k))), default=0)
            legacy = max((int(m[1]) for k in keys if (m := _LEGACY.match(k))), default=0)
            compacted = max(columnar, legacy)
            live = [(seq, k) for k in keys if (m := _SEGMENT.match(k)) and (seq := int(m[1])) > compacted]
            live.sort()
            if columnar and columnar >= legacy:  # A store converted at one seq has both: the columns win.
                live.insert(0, (columnar, manifest_key(columnar)))
            elif legacy:
                live.insert(0, (legacy, f"{legacy:012d}.all.jsonl"))
            futures = [self._index.read(k) for _, k in live]
            results = [f.result() for f in futures]
            if all(r.state == "value" for r in results):
                break
        else:
            raise RuntimeError(f"index of {self._path!r} kept changing while being read")
        self._seq = max((int(m[1]) for k in keys if (m := _INDEX_OBJECT.match(k))), default=0)
        self._live_segments = len(live)
        for (seq, key), result in zip(live, results, strict=True):
            if MANIFEST.match(key):
                try:
                    self._base = ColumnIndex(self._index, seq, json.loads(result.value), self._path)
                    ends = self._base.ends
                    self._end, self._caption_end, self._audio_end = (
                        ends["data"],
                        ends["captions"],
                        ends["audio"],
                    )
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{self._path!r}: bad index manifest index/{key}: {e}") from e
                continue
            # Only "\n" ends an entry: str.splitlines would also split at U+2028 and the other
            # separators that json.dumps(ensure_ascii=False) leaves raw inside a caption.
            for n, line in enumerate(result.value.split(b"\n")):
                if not line.strip():
                    continue
                try:
                    self._apply(json.loads(line))
                    self._tail_entries += 1
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{self._path!r}: bad index entry at index/{key}:{n + 1}: {e}") from e
        self._replaced.clear()

    def _apply(self, entry: dict[str, Any]) -> None:
        if entry["type"] == "clip":
            record = ClipRecord.from_entry(entry)
            if self.has(record.clip_id):
                raise ValueError(f"duplicate clip id {record.clip_id!r}")
            self._add(record)
        elif entry["type"] == "caption":
            self._recaption(entry)
        elif entry["type"] == "done":
            self._done.add(str(entry["source"]))
        else:
            raise ValueError(f"unknown entry type {entry['type']!r}")

    def _add(self, record: ClipRecord) -> None:
        self._tail_ids[record.clip_id] = len(self)
        self._tail.append(record)
        self._end = max(self._end, record.offset + record.size)
        caption_end = record.caption_offset + record.caption_tokens * self.caption_dim
        self._caption_end = max(self._caption_end, caption_end)
        audio_end = record.audio_offset + record.audio_samples * self.audio_channels
        self._audio_end = max(self._audio_end, audio_end)

    def _recaption(self, entry: dict[str, Any]) -> None:
        """Applies a caption entry to the clip it names, keeping what it replaced for atomic()."""
        clip_id, caption = entry["id"], entry["caption"]
        if not isinstance(clip_id, str) or not isinstance(caption, str):
            raise ValueError(f"caption entry {entry} needs a str id and caption")
        position = self._position(clip_id)
        if position is None:
            raise ValueError(f"caption entry for unknown clip id {clip_id!r}")
        change = {
            "caption": caption,
            "caption_offset": int(entry.get("caption_offset", 0)),
            "caption_tokens": int(entry.get("caption_tokens", 0)),
        }
        if position < self._base_len:
            self._replaced.append((position, self._base_captions.get(position)))
            self._base_captions[position] = change
        else:
            old = self._tail[position - self._base_len]
            self._replaced.append((position, old))
            self._tail[position - self._base_len] = dataclasses.replace(old, **change)
        caption_end = change["caption_offset"] + change["caption_tokens"] * self.caption_dim
        self._caption_end = max(self._caption_end, caption_end)

    def _undo_recaptions(self, keep: int) -> None:
        """Restores what the recaptions after the first ``keep`` replaced, newest first."""
        for position, old in reversed(self._replaced[keep:]):
            if position >= self._base_len:
                self._tail[position - self._base_len] = old
            elif old is None:
                del self._base_captions[position]
            else:
                self._base_captions[position] = old
        del self._replaced[keep:]

    def flush(self) -> None:
        """Commits staged entries (one atomic segment write) and any change to :attr:`extra`.

        Call it outside :meth:`atomic` blocks. Raises RuntimeError if another writer has written
        the same segment (two writers on one store is unsupported).
        """
        if self._in_atomic:
            raise RuntimeError("flush() inside atomic() would commit a partial group")
        extra = json.dumps(self.extra, sort_keys=True)  # Also checks it is JSON-serializable.
        if self._pending:
            key = f"{self._seq + 1:012d}.jsonl"
            stamp = self._index.write(key, _encode_lines(self._pending), if_equal=_NO_VALUE).result()
            if not stamp.generation:
                raise RuntimeError(
                    f"index/{key} of {self._path!r} already exists: another process is writing"
                )
            self._seq += 1
            self._live_segments += 1
            self._tail_entries += len(self._pending)
            self._pending.clear()
            self._replaced.clear()
        if extra != self._saved_extra:
            metadata = json.loads(self._root.read(METADATA_KEY).result().value)
            metadata["extra"] = self.extra
            self._root.write(METADATA_KEY, json.dumps(metadata, indent=1)).result()
            self._saved_extra = extra

    def close(self) -> None:
        """Flushes; the store stays usable."""
        self.flush()

    def compact(self, min_segments: int = 2, min_growth: float = 0.0) -> bool:
        """Flushes, then rewrites the index as one columnar compaction if it spans ``>=
        min_segments`` objects (segments, plus the previous compaction) and the entries written
        since the previous compaction number at least ``min_growth`` times its clips. Returns
        whether it compacted.

        Opening a store reads every live segment whole, but a compaction only by its manifest,
        so a long ingest (a segment per flush) should compact at the end; caption entries are
        folded into the clips' rows. The compaction is complete before older objects are
        deleted, so a crash at any point leaves a complete index. Its cost grows with the whole
        store (every row is copied), not with what changed: a writer that compacts as it goes
        passes ``min_growth`` so that the compactions' sizes grow geometrically, and their total
        cost stays within ``(1 + min_growth) / min_growth`` times one of the final index.
        """
        self.flush()
        if self._live_segments < max(min_segments, 1):
            return False
        if self._live_segments == 1 and self._base is not None:
            return False  # One columnar compaction already: nothing to fold.
        if self._tail_entries < min_growth * self._base_len:
            return False
        writer = ColumnWriter(self._index, self._seq)
        base = self._base
        if base is not None:
            shapes, hashes = base.column("shape"), base.hashes()
            scores = {name: base.score(name) for name in base.score_names}
            # A compaction made before the hash and source objects: read from the rows copied.
            facts = base.has_facts()
            if facts:
                phashes, known = base.phashes()
                writer.sources.update(base.source_counts())
            changes: dict[int, list[int]] = {}  # Recaptioned positions by part.
            for position in self._base_captions:
                changes.setdefault(position // base.rows_per_part, []).append(position)
            for part in range(base.parts):
                lines = base.part_lines(part)
                first = part * base.rows_per_part
                last = first + len(lines)
                for position in changes.get(part, []):
                    record = ClipRecord.from_entry(json.loads(lines[position - first]))
                    change = self._base_captions[position]
                    lines[position - first] = entry_line(
                        dataclasses.replace(record, **change).to_entry()
                    ).encode()
                if facts:
                    part_phashes = (phashes[first:last], known[first:last])
                else:
                    part_hashes, part_known, part_sources = row_facts(lines)
                    part_phashes = (part_hashes, part_known)
                    writer.sources.update(part_sources)
                writer.add(
                    lines,
                    hashes[first:last],
                    shapes[first:last],
                    {name: values[first:last] for name, values in scores.items()},
                    part_phashes,
                )
        step = clip_index.ROWS_PER_PART  # Bounds the rows in memory as text at once.
        for first in range(0, len(self._tail), step):
            writer.add_records(self._tail[first : first + step])
        ends = {"data": self._end, "captions": self._caption_end, "audio": self._audio_end}
        manifest = writer.commit(self._all_done(), ends)
        # Segments, older compactions, and objects of one that died before its manifest.
        stale = [k.decode() for k in self._index.list().result()]
        stale = [k for k in stale if _INDEX_OBJECT.match(k) and k not in writer.keys]
        for future in [self._index.write(k, None) for k in stale]:
            future.result()
        self._base = ColumnIndex(self._index, self._seq, manifest, self._path)
        self._tail, self._tail_ids, self._base_captions = [], {}, {}
        self._live_segments, self._tail_entries = 1, 0
        return True

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Groups appends, recaptions and marks: if the block raises, everything it staged is dropped.

        Entries are committed by a later :meth:`flush`, all or none. Use it to add a source's
        clips and its done mark so an interruption never commits part of a source.
        """
        if self._in_atomic:
            raise RuntimeError("atomic() blocks do not nest")
        n_pending, n_tail, n_replaced = len(self._pending), len(self._tail), len(self._replaced)
        end, caption_end, audio_end = self._end, self._caption_end, self._audio_end
        self._in_atomic = True
        try:
            yield
        except BaseException:
            self._undo_recaptions(n_replaced)
            for entry in self._pending[n_pending:]:
                if entry["type"] == "clip":
                    del self._tail_ids[entry["id"]]
                elif entry["type"] == "done":
                    self._done.discard(entry["source"])
            del self._pending[n_pending:]
            del self._tail[n_tail:]
            # The dropped clips' space is reused by the next append.
            self._end, self._caption_end, self._audio_end = end, caption_end, audio_end
            raise
        finally:
            self._in_atomic = False

    # -- writing ----------------------------------------------------------------------------

    def append(
        self,
        frames: np.ndarray,
        *,
        clip_id: str,
        fps: float,
        caption: str,
        source: str,
        start: float,
        caption_embedding: np.ndarray | None = None,
        audio: np.ndarray | None = None,
        scores: dict[str, float] | None = None,
        phash: str = "",
    ) -> None:
        """Writes ``frames`` (``[T, H, W, C]``, the store's dtype and C) and stages its entry.

        The data is written before this returns; the entry becomes durable at the next
        :meth:`flush`. ``fps`` is frames/s (>= 0, 0 for stills), ``start`` seconds into
        ``source``. Raises ValueError naming the problem for a duplicate ``clip_id``, a wrong
        dtype (no implicit casts), rank or channel count, an empty clip, non-finite latents,
        or a non-finite ``fps``/``start``. A store with caption embeddings needs
        ``caption_embedding``, ``[L, caption_dim]`` with L >= 1 and finite values (cast to the
        store's caption dtype); one without refuses it.

        ``audio``: the clip's sound, float ``[samples, audio_channels]`` in [-1, 1] (clipped) at
        the store's :attr:`audio_sample_rate`, or None for a clip whose source has no audio track
        (its record says ``"none"``). In a pixel store it must be exactly the clip's time span,
        ``round(T / fps * audio_sample_rate)`` samples; a latent store keeps the sound of the
        video its latents encode, as the pixel store held it. A store without sound, and a
        still image (``fps == 0``), refuse it. The record says ``"silent"`` when no stored sample
        reaches :data:`SILENCE_DBFS`, else ``"sound"``.

        ``scores``: the clip's measurements by name (finite numbers), kept in its record;
        ``phash``: its 64-bit perceptual hash as 16 hex digits (or "").
        """
        if not isinstance(clip_id, str) or not clip_id:
            raise ValueError(f"clip_id must be a non-empty str, got {clip_id!r}")
        if self.has(clip_id):
            raise ValueError(f"duplicate clip id {clip_id!r}")
        if not isinstance(frames, np.ndarray):
            raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
        if frames.dtype != self.dtype:
            raise ValueError(
                f"clip {clip_id!r}: dtype {frames.dtype} does not match the store's {self.dtype}"
            )
        if frames.ndim != 4:
            raise ValueError(f"clip {clip_id!r}: frames must be [T, H, W, C], got shape {frames.shape}")
        if frames.shape[-1] != self.channels:
            raise ValueError(
                f"clip {clip_id!r}: {frames.shape[-1]} channels, the store holds C={self.channels}"
            )
        if frames.size == 0:
            raise ValueError(f"clip {clip_id!r}: empty clip, shape {frames.shape}")
        if frames.dtype.kind == "f" and not np.isfinite(frames).all():
            raise ValueError(f"clip {clip_id!r}: frames contain NaN or inf")
        if not (math.isfinite(fps) and fps >= 0):
            raise ValueError(f"clip {clip_id!r}: fps must be finite and >= 0, got {fps}")
        if not math.isfinite(start):
            raise ValueError(f"clip {clip_id!r}: start must be finite, got {start}")
        for name, value in (("caption", caption), ("source", source)):
            if not isinstance(value, str):
                raise ValueError(f"clip {clip_id!r}: {name} must be a str, got {type(value).__name__}")

        scores = dict(scores or {})
        for name, value in scores.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"clip {clip_id!r}: score names must be non-empty str, got {name!r}")
            if not (isinstance(value, int | float | np.number) and math.isfinite(value)):
                raise ValueError(f"clip {clip_id!r}: score {name!r} must be a finite number, got {value!r}")
        if phash and not re.fullmatch(r"[0-9a-f]{16}", phash):
            raise ValueError(f"clip {clip_id!r}: phash must be 16 lowercase hex digits, got {phash!r}")
        embedding = self._check_caption_embedding(clip_id, caption_embedding)
        pcm = self._check_audio(clip_id, audio, frames.shape[0], fps)

        offset = self._end
        self._data = _write_flat(self._data, offset, frames, self.chunk_elements)
        caption_offset = self._caption_end
        if embedding is not None:
            self._captions = _write_flat(self._captions, caption_offset, embedding, self._caption_chunk)
        audio_offset, sound = self._audio_end, "none"
        if pcm is not None:
            self._audio = _write_flat(self._audio, audio_offset, pcm, self._audio_chunk)
            sound = "silent" if int(np.abs(pcm, dtype=np.int32).max(initial=0)) <= _SILENT_PCM else "sound"
        record = ClipRecord(
            clip_id=clip_id,
            shape=tuple(int(n) for n in frames.shape),  # type: ignore[arg-type]
            fps=float(fps),
            caption=caption,
            source=source,
            start=float(start),
            offset=offset,
            caption_offset=caption_offset if embedding is not None else 0,
            caption_tokens=len(embedding) if embedding is not None else 0,
            audio=sound,
            audio_offset=audio_offset if pcm is not None else 0,
            audio_samples=len(pcm) if pcm is not None else 0,
            scores={name: float(value) for name, value in scores.items()},
            phash=phash,
        )
        self._add(record)
        self._pending.append(record.to_entry())

    def _check_audio(
        self, clip_id: str, audio: np.ndarray | None, frames: int, fps: float
    ) -> np.ndarray | None:
        """The clip's sound as int16 ``[samples, audio_channels]``, after checking it fits."""
        if audio is None:
            return None
        if not self.audio_sample_rate:
            raise ValueError(f"clip {clip_id!r}: this store keeps no sound (made without audio)")
        if fps == 0:
            raise ValueError(f"clip {clip_id!r}: a still image (fps 0) has no sound")
        audio = np.asarray(audio)
        if audio.dtype.kind != "f" or audio.ndim != 2 or audio.shape[1] != self.audio_channels:
            raise ValueError(
                f"clip {clip_id!r}: audio must be float [samples, {self.audio_channels}], "
                f"got {audio.dtype} {audio.shape}"
            )
        if not np.isfinite(audio).all():
            raise ValueError(f"clip {clip_id!r}: audio contains NaN or inf")
        expected = round(frames / fps * self.audio_sample_rate)
        if self.dtype == np.uint8 and len(audio) != expected:
            raise ValueError(
                f"clip {clip_id!r}: {len(audio)} audio samples, but {frames} frames at {fps:g} fps "
                f"last {expected} samples at {self.audio_sample_rate} Hz"
            )
        return np.round(np.clip(audio, -1.0, 1.0) * _PCM_SCALE).astype(np.int16)

    def _check_caption_embedding(self, clip_id: str, embedding: np.ndarray | None) -> np.ndarray | None:
        """The embedding in the store's caption dtype, after checking it fits this store."""
        if not self.caption_dim:
            if embedding is not None:
                raise ValueError(f"clip {clip_id!r}: this store holds no caption embeddings")
            return None
        if embedding is None:
            raise ValueError(
                f"clip {clip_id!r}: this store holds a caption embedding for every clip "
                f"([L, {self.caption_dim}]); none was given"
            )
        embedding = np.asarray(embedding)
        if embedding.ndim != 2 or embedding.shape[1] != self.caption_dim or len(embedding) < 1:
            raise ValueError(
                f"clip {clip_id!r}: caption embedding must be [L >= 1, {self.caption_dim}], "
                f"got shape {embedding.shape}"
            )
        if embedding.dtype.kind != "f" or not np.isfinite(embedding).all():
            raise ValueError(f"clip {clip_id!r}: caption embedding must be finite floats")
        with np.errstate(over="ignore"):  # Overflow is reported below, by name.
            converted = embedding.astype(self.caption_dtype)
        if not np.isfinite(converted).all():
            raise ValueError(f"clip {clip_id!r}: caption embedding overflows {self.caption_dtype}")
        return converted

    def recaption(self, clip_id: str, caption: str, caption_embedding: np.ndarray | None = None) -> None:
        """Stages a new caption for the committed or staged clip ``clip_id``; later ones win.

        The clip's pixels and sound stay where they are: only its caption (and, in a store with
        caption embeddings, its embedding, required exactly there and checked as :meth:`append`
        checks it) changes. The embedding is written to ``captions/`` at once (the old one's
        space is not reused) and the entry ``{"type": "caption", "id", "caption"}`` (plus
        ``"caption_offset"``, ``"caption_tokens"``) is committed by the next :meth:`flush`,
        inside an :meth:`atomic` group like any other. Raises ValueError naming the problem for
        an unknown clip id, a caption that is not a str or a wrong embedding.
        """
        if not (isinstance(clip_id, str) and self.has(clip_id)):
            raise ValueError(f"no clip {clip_id!r} in {self._path!r} to recaption")
        if not isinstance(caption, str):
            raise ValueError(f"clip {clip_id!r}: caption must be a str, got {type(caption).__name__}")
        embedding = self._check_caption_embedding(clip_id, caption_embedding)
        entry: dict[str, Any] = {"type": "caption", "id": clip_id, "caption": caption}
        if embedding is not None:
            self._captions = _write_flat(self._captions, self._caption_end, embedding, self._caption_chunk)
            entry |= {"caption_offset": self._caption_end, "caption_tokens": len(embedding)}
            self._caption_end += embedding.size
        self._recaption(entry)
        self._pending.append(entry)

    def mark_done(self, source: str) -> None:
        """Stages a mark that ``source`` is fully ingested; committed by the next :meth:`flush`.

        Entries commit in order, so a mark staged after a source's clips never becomes visible
        without them. Marking a source twice is a no-op.
        """
        if not isinstance(source, str):
            raise ValueError(f"source must be a str, got {type(source).__name__}")
        if source not in self._all_done():
            self._done.add(source)
            self._pending.append({"type": "done", "source": source})

    # -- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._base_len + len(self._tail)

    @property
    def _base_len(self) -> int:
        return self._base.limit if self._base is not None else 0

    @property
    def path(self) -> str:
        """The store's location: an absolute local path or the URL it was opened with."""
        return self._path

    @property
    def kvstore(self) -> ts.KvStore:
        """The root kvstore, for side files (reports) that must live next to the store."""
        return self._root

    @property
    def records(self) -> list[ClipRecord]:
        """All clips in position order (a new list each call): every record in memory at once,
        for small stores; code that may meet large ones uses :meth:`record`, :attr:`shapes`
        and :meth:`scores`."""
        return list(self.iter_records())

    @property
    def shapes(self) -> np.ndarray:
        """Every clip's ``(T, H, W, C)`` in position order: int64 ``[len(self), 4]``.

        What a data pipeline needs of every clip to choose shapes and pack rows; the rest of a
        record is read with :meth:`record` for the clips it draws.
        """
        shapes = np.empty((len(self), 4), np.int64)  # Filled in place: no second copy of N rows.
        if self._base is not None:
            shapes[: self._base_len] = self._base.column("shape")
        shapes[self._base_len :] = np.asarray([r.shape for r in self._tail], np.int64).reshape(-1, 4)
        return shapes

    def scores(self, name: str) -> np.ndarray:
        """Every clip's score ``name`` in position order: float64 ``[len(self)]``, NaN for clips
        without it (made before the score existed)."""
        scores = np.full(len(self), math.nan)
        base = self._base.score(name) if self._base is not None else None
        if base is not None:
            scores[: self._base_len] = base
        scores[self._base_len :] = [r.scores.get(name, math.nan) for r in self._tail]
        return scores

    def score_names(self) -> set[str]:
        """The names of the scores any clip has."""
        names = {name for r in self._tail for name in r.scores}
        return names | set(self._base.score_names if self._base is not None else ())

    def phashes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every clip's perceptual hash in position order, uint64 ``[len(self)]``, and bool
        ``[len(self)]``: which clips have one (a clip without, made before hashes were measured,
        has 0 in the first array, which is also a real hash's value: read the second).

        The compaction's clips come from two small objects read once (a compaction made before
        them has its rows read once, a part at a time, and says so in the log); later clips from
        their records in memory.
        """
        hashes, known = np.zeros(len(self), np.uint64), np.zeros(len(self), bool)
        if self._base is not None:
            hashes[: self._base_len], known[: self._base_len] = self._base.phashes()
        hashes[self._base_len :], known[self._base_len :] = phash_values([r.phash for r in self._tail])
        return hashes, known

    def sources(self) -> set[str]:
        """The sources that have clips in the store (a new set): of the compaction from one
        object of its source names, read once (written by :meth:`compact` with each source's
        clip count); of later clips from their records. Unlike :attr:`records`, it never reads
        every clip's row."""
        found = set(self._base.source_counts()) if self._base is not None else set()
        return found | {r.source for r in self._tail}

    def iter_records(self) -> Iterator[ClipRecord]:
        """Every clip's record in position order, as :meth:`record` gives them, reading the
        compaction's rows a part (65,536 clips) at a time: one read a part rather than one a
        clip, and memory for one part. Sees the clips the store held when iteration began."""
        count = len(self)
        if self._base is not None:
            for part in range(self._base.parts):
                first = part * self._base.rows_per_part
                for position, line in enumerate(self._base.part_lines(part), first):
                    record = ClipRecord.from_entry(json.loads(line))
                    change = self._base_captions.get(position)
                    yield dataclasses.replace(record, **change) if change else record
        yield from self._tail[: count - self._base_len]

    def record(self, key: int | str) -> ClipRecord:
        """The record at position ``key`` (negative counts from the end) or with id ``key``.

        Raises KeyError for an unknown id and IndexError for a position out of range. A clip
        of the columnar compaction costs one byte-range read of its row.
        """
        if isinstance(key, str):
            position = self._position(key)
            if position is None:
                raise KeyError(f"no clip {key!r} in {self._path!r}")
        else:
            position = operator.index(key)
            if position < 0:
                position += len(self)
            if not 0 <= position < len(self):
                raise IndexError(f"clip position {key} out of range: {self._path!r} holds {len(self)} clips")
        if position >= self._base_len:
            return self._tail[position - self._base_len]
        record = ClipRecord.from_entry(self._base.entry(position))  # type: ignore[union-attr]
        change = self._base_captions.get(position)
        return dataclasses.replace(record, **change) if change else record

    def _position(self, clip_id: str) -> int | None:
        position = self._tail_ids.get(clip_id)
        if position is None and self._base is not None and isinstance(clip_id, str):
            position = self._base.find(clip_id)
        return position

    def has(self, clip_id: str) -> bool:
        return self._position(clip_id) is not None

    def _all_done(self) -> set[str]:
        if not self._base_done_read:
            if self._base is not None:
                self._done.update(self._base.done())
            self._base_done_read = True
        return self._done

    def sources_done(self) -> set[str]:
        """Sources marked done (a copy)."""
        return set(self._all_done())

    def read(self, key: int | str) -> np.ndarray:
        """The clip at position ``key`` or with id ``key``: ``[T, H, W, C]`` in the store's dtype.

        One tensorstore read of the clip's element range. Raises KeyError for an unknown id and
        IndexError for a position out of range.
        """
        record = self.record(key)
        # A writer may have grown the array after this handle was opened: it is then reopened.
        flat, self._data = _read_flat(self._data, record.offset, record.size)
        return flat.reshape(record.shape)

    def read_audio(self, key: int | str) -> np.ndarray | None:
        """The sound of the clip at position ``key`` or with id ``key``: float32 ``[samples,
        audio_channels]`` in [-1, 1] at :attr:`audio_sample_rate`, or None when its record says
        ``"none"`` (no audio track, or a store without sound). A ``"silent"`` clip gives its
        stored (near-zero) samples."""
        record = self.record(key)
        if record.audio == "none" or self._audio is None:
            return None
        size = record.audio_samples * self.audio_channels
        flat, self._audio = _read_flat(self._audio, record.audio_offset, size)
        return flat.reshape(record.audio_samples, self.audio_channels).astype(np.float32) / _PCM_SCALE

    def read_caption_embedding(self, key: int | str) -> np.ndarray:
        """The caption embedding of the clip at position ``key`` or with id ``key``: ``[L,
        caption_dim]`` in :attr:`caption_dtype`. Raises ValueError for a store without them."""
        if self._captions is None:
            raise ValueError(f"{self._path!r} holds no caption embeddings (prepared without a text encoder)")
        record = self.record(key)
        size = record.caption_tokens * self.caption_dim
        flat, self._captions = _read_flat(self._captions, record.caption_offset, size)
        return flat.reshape(record.caption_tokens, self.caption_dim)


def _sound_format(sample_rate: int, channels: int) -> str:
    if not sample_rate:
        return "no sound"
    return f"sound at {sample_rate} Hz, {'mono' if channels == 1 else 'stereo'}"


def _display_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)
