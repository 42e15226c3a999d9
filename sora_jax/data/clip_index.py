"""The columnar index of a clip store (:mod:`sora_jax.data.clip_store`): how a compaction is
written and read.

:meth:`~sora_jax.data.clip_store.ClipStore.compact` rewrites every index entry up to the last
segment ``N`` as one columnar compaction, so that opening a store of millions of clips reads a few
objects, not every entry (keys under the store's ``index/``)::

    N.columns.json              manifest: clip count, rows per part, the first free element of
                                each flat array, and each object's key, dtype and shape
    N.columns-rows-000000.jsonl the clip entries of positions [0, 65536), one JSON line each,
    N.columns-rows-000001.jsonl   with later captions folded in; the next 65536; ...
    N.columns-row_ends          uint: where each row ends in its part (bytes)
    N.columns-shape             uint [N, 4]: every clip's (T, H, W, C)
    N.columns-score-00000       float64 [N] per score name (NaN: absent; names in the manifest)
    N.columns-id_hash           uint64 [N]: BLAKE2b-64 of every clip id, sorted ...
    N.columns-id_order          uint [N]:   ... and the position of each
    N.columns-phash_known       bits [N] (packed, little bit order): which clips have a perceptual hash
    N.columns-phash             uint64 [K]: the hashes of those K clips, in position order
    N.columns-sources.json      {source: clip count} of every source with clips
    N.columns-done.json         the sources marked done

Integer columns take the narrowest unsigned type that holds them, little-endian. A reader reads
only the manifest at open; a column when it first needs it (``ClipStore.shapes``,
``ClipStore.scores``, ``ClipStore.phashes``, ``ClipStore.sources``, the id lookup of
``ClipStore.has``), and a clip's record as one byte-range read of its row, so a host holds a few
bytes a clip of what it uses and never the captions of every clip. The manifest is written last
and only if absent, and older objects are deleted only after it, so a reader listing the index at
any moment finds a complete one; a reader whose compaction is later replaced follows the newer one,
which holds the same clips at the same positions.

The perceptual hashes and the per-source summary were added to the layout later, as optional
manifest keys (``"phash"``, ``"sources"``) within the same version, so older readers still read
newer compactions. A compaction made before them still opens: the first call that needs them reads
its rows once, a part at a time (and says so in the log), and the store's next compaction writes
them, from the rows it copies anyway.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import tensorstore as ts


class IndexedClip(Protocol):
    """What the index needs of a clip's record (a :class:`~sora_jax.data.clip_store.ClipRecord`;
    named structurally so that this module does not import the store that imports it)."""

    clip_id: str
    shape: tuple[int, int, int, int]
    source: str
    scores: dict[str, float]
    phash: str

    def to_entry(self) -> dict[str, Any]: ...


log = logging.getLogger("sora_jax")

INDEX_FORMAT = "sora_jax.clip_index"
INDEX_VERSION = 1
MANIFEST = re.compile(r"^(\d{12})\.columns\.json$")
# Clips a row object holds: ~20 MB of entries, a part a compaction holds in memory at once.
ROWS_PER_PART = 1 << 16
# A key's generation when it does not exist: a write conditioned on it only creates.
_NO_VALUE = b"\x02"
_T = TypeVar("_T")
_RECENT_ROWS = 64  # Rows a reader keeps after reading them (a few KiB).


def entry_line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def id_hashes(clip_ids: Iterable[str]) -> np.ndarray:
    """Each clip id's stable 64-bit hash (BLAKE2b; Python's hash() differs between processes)."""
    digests = b"".join(hashlib.blake2b(i.encode(), digest_size=8).digest() for i in clip_ids)
    return np.frombuffer(digests, "<u8")


def phash_values(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Perceptual hashes given as 16 hex digits or "" (none): uint64 ``[n]`` (0 where none) and
    bool ``[n]``, which have one."""
    known = np.fromiter((bool(text) for text in texts), bool, len(texts))
    hashes = np.fromiter((int(text, 16) if text else 0 for text in texts), np.uint64, len(texts))
    return hashes, known


def row_facts(lines: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, collections.Counter[str]]:
    """The perceptual hashes (as :func:`phash_values` gives them) and the clips per source of
    clip entries given as JSON lines: what a compaction made before their objects existed lacks."""
    entries = [json.loads(line) for line in lines]
    hashes, known = phash_values([str(e.get("phash", "")) for e in entries])
    return hashes, known, collections.Counter(str(e["source"]) for e in entries)


def _narrowest(values: np.ndarray) -> np.ndarray:
    """Non-negative integers in the narrowest little-endian unsigned type that holds them all."""
    top = int(values.max(initial=0))
    for dtype in ("<u1", "<u2", "<u4"):
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype("<u8")


class ColumnWriter:
    """Writes one columnar compaction ``index/{seq}.columns.json`` and its objects.

    Rows (the clip entries, one JSON line each) go out a part at a time as they fill, so a
    compaction holds one part of text in memory, never the whole index; the columns follow
    in :meth:`commit`, and the manifest last, only if absent: until it exists no reader knows
    the compaction, so a crash anywhere leaves the index as it was.
    """

    def __init__(self, index: ts.KvStore, seq: int) -> None:
        self._index, self._seq, self._rows_per_part = index, seq, ROWS_PER_PART
        self._prefix = _columns_prefix(seq)
        self._lines: list[bytes] = []  # Rows of the part being filled.
        self._parts = 0
        self._count = 0
        self._row_ends: list[np.ndarray] = []
        self._shapes: list[np.ndarray] = []
        self._hashes: list[np.ndarray] = []
        self._scores: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._phashes: list[np.ndarray] = []  # The hashes of the clips that have one.
        self._phash_known: list[np.ndarray] = []
        # Clips per source, of every clip added: the caller counts them (see add()).
        self.sources: collections.Counter[str] = collections.Counter()
        self._writes: list[ts.Future] = []
        self.keys: set[str] = set()  # Every object written, relative to index/.

    def add(
        self,
        rows: list[bytes],
        hashes: np.ndarray,
        shapes: np.ndarray,
        scores: dict[str, np.ndarray],
        phashes: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """Appends clips: their entries as JSON lines (no newline), id hashes (:func:`id_hashes`),
        ``[n, 4]`` shapes, by name the scores the clips have (NaN where one has not) and their
        perceptual hashes as :func:`phash_values` gives them. Their sources are counted by the
        caller into :attr:`sources` (a compaction carries the previous one's counts over)."""
        n = len(rows)
        phash, known = (np.asarray(a) for a in phashes)
        if len(hashes) != n or shapes.shape != (n, 4) or any(len(v) != n for v in scores.values()):
            raise ValueError("rows, hashes, shapes and scores must describe the same clips")
        if phash.shape != (n,) or known.shape != (n,):
            raise ValueError("rows and perceptual hashes must describe the same clips")
        for name, values in scores.items():
            self._scores.setdefault(name, []).append((self._count, np.asarray(values, "<f8")))
        self._shapes.append(_narrowest(np.asarray(shapes, np.uint64)))
        self._hashes.append(np.asarray(hashes, "<u8"))
        self._phashes.append(phash[known].astype("<u8"))
        self._phash_known.append(known.astype(bool))
        self._count += n
        self._lines.extend(rows)
        while len(self._lines) >= self._rows_per_part:
            self._write_part(self._lines[: self._rows_per_part])
            del self._lines[: self._rows_per_part]

    def add_records(self, records: Sequence[IndexedClip]) -> None:
        """Appends clips given as records, counting their sources."""
        names = {name for r in records for name in r.scores}
        self.add(
            [entry_line(r.to_entry()).encode() for r in records],
            id_hashes(r.clip_id for r in records),
            np.asarray([r.shape for r in records], np.uint64).reshape(-1, 4),
            {name: np.asarray([r.scores.get(name, math.nan) for r in records]) for name in names},
            phash_values([r.phash for r in records]),
        )
        self.sources.update(r.source for r in records)

    def _write_part(self, lines: list[bytes]) -> None:
        ends = np.cumsum(np.fromiter((len(s) + 1 for s in lines), np.uint64, len(lines)))
        self._row_ends.append(_narrowest(ends))
        self._put(_rows_key(self._parts), b"\n".join(lines) + b"\n")
        self._parts += 1

    def _put(self, key: str, value: bytes) -> None:
        if len(self._writes) >= 4:  # Bounds the parts held in memory while they are written.
            self._writes.pop(0).result()
        self._writes.append(self._index.write(self._prefix + key, value))
        self.keys.add(self._prefix + key)

    def _column(self, key: str, values: np.ndarray) -> dict[str, Any]:
        self._put(key, values.tobytes())
        return {"key": key, "dtype": values.dtype.str, "shape": list(values.shape)}

    def commit(self, done: Iterable[str], ends: dict[str, int]) -> dict[str, Any]:
        """Writes the last part, the columns, :attr:`sources` and ``done`` (the sources marked
        done), then the manifest, and returns it; ``ends`` holds the first free element of each flat array
        (``"data"``, ``"captions"``, ``"audio"``). Raises RuntimeError if the manifest already
        exists (another writer)."""
        if self._lines:
            self._write_part(self._lines)
            self._lines = []
        n = self._count
        hashes = np.concatenate([np.zeros(0, "<u8"), *self._hashes])
        order = np.argsort(hashes, kind="stable")
        columns = {
            # Each piece is already in its narrowest type: concatenating keeps the widest of them.
            "shape": self._column("shape", np.concatenate([np.zeros((0, 4), "<u1"), *self._shapes])),
            "row_ends": self._column("row_ends", np.concatenate([np.zeros(0, "<u1"), *self._row_ends])),
            "id_hash": self._column("id_hash", hashes[order]),
            "id_order": self._column("id_order", _narrowest(order)),
        }
        scores = {}
        for i, (name, pieces) in enumerate(sorted(self._scores.items())):
            values = np.full(n, np.nan, "<f8")
            for start, piece in pieces:
                values[start : start + len(piece)] = piece
            scores[name] = self._column(f"score-{i:05d}", values)
        known = np.concatenate([np.zeros(0, bool), *self._phash_known])
        phash = {
            "hashes": self._column("phash", np.concatenate([np.zeros(0, "<u8"), *self._phashes])),
            "known": self._column("phash_known", np.packbits(known, bitorder="little")),
        }
        # Sorted, for one object whatever order the clips came in.
        sources = json.dumps(dict(sorted(self.sources.items())), ensure_ascii=False).encode()
        self._put("sources.json", sources)
        done = sorted(done)
        self._put("done.json", json.dumps(done, ensure_ascii=False).encode())
        for future in self._writes:
            future.result()
        self._writes.clear()
        manifest = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "clips": n,
            "rows_per_part": self._rows_per_part,
            "parts": self._parts,
            "ends": {name: int(end) for name, end in ends.items()},
            "columns": columns,
            "scores": scores,
            "phash": phash,
            "sources": {"key": "sources.json", "count": len(self.sources)},
            "done": {"key": "done.json", "count": len(done)},
        }
        key = manifest_key(self._seq)
        stamp = self._index.write(key, json.dumps(manifest, indent=1), if_equal=_NO_VALUE).result()
        if not stamp.generation:
            raise RuntimeError(f"index/{key} already exists: another process is writing")
        self.keys.add(key)
        return manifest


class ColumnIndex:
    """The clips of a columnar compaction, read lazily: opening reads only its manifest.

    ``shape``, ``row_ends``, the id lookup and each score are read whole the first time they
    are needed (one object each, a few bytes a clip); a clip's entry is a byte-range read of its
    row. Only the first ``limit`` clips are seen (a reader keeps the snapshot it opened). If a
    later compaction removes these objects while the reader lives, it follows that compaction,
    which holds the same clips at the same positions (possibly with later captions).
    """

    def __init__(self, index: ts.KvStore, seq: int, manifest: dict[str, Any], where: str) -> None:
        self._index, self._where = index, where
        self.limit = int(manifest["clips"])
        self._use(seq, manifest)

    def _use(self, seq: int, manifest: dict[str, Any]) -> None:
        if manifest.get("format") != INDEX_FORMAT or manifest.get("version") != INDEX_VERSION:
            raise ValueError(
                f"format {manifest.get('format')!r} version {manifest.get('version')!r}, "
                f"expected {INDEX_FORMAT!r} version {INDEX_VERSION}"
            )
        if int(manifest["clips"]) < self.limit:
            raise ValueError(f"{manifest['clips']} clips, fewer than the {self.limit} this reader holds")
        self.seq, self.manifest = seq, manifest
        self._prefix = _columns_prefix(seq)
        self._rows_per_part = int(manifest["rows_per_part"])
        self._cache: dict[str, np.ndarray] = {}
        self._sources: dict[str, int] | None = None
        # The rows read last: a data loader asks for a drawn clip's record several times in a row
        # (its shape, then its frames, sound and caption embedding), one byte-range read is enough.
        self._recent_rows: collections.OrderedDict[int, tuple[int, bytes]] = collections.OrderedDict()

    @property
    def ends(self) -> dict[str, int]:
        return {name: int(end) for name, end in self.manifest["ends"].items()}

    @property
    def score_names(self) -> list[str]:
        return list(self.manifest["scores"])

    def _read(self, key: str, byte_range: slice | None = None) -> bytes:
        result = self._index.read(self._prefix + key, byte_range=byte_range).result()
        if result.state != "value":
            raise _Moved(key)
        return result.value

    def _retrying(self, compute: Callable[[], _T]) -> _T:
        """``compute()``, again on a later compaction while a compaction removes the objects."""
        for _ in range(5):
            try:
                return compute()
            except _Moved:
                self._follow()
        raise RuntimeError(f"{self._where}: the index kept changing while being read; open the store again")

    def _follow(self) -> None:
        """Moves to the newest compaction after a later one removed this one's objects."""
        manifests = [int(m[1]) for k in self._index.list().result() if (m := MANIFEST.match(k.decode()))]
        newest = max(manifests, default=0)
        if newest <= self.seq:
            raise RuntimeError(
                f"{self._where}: objects of index/{manifest_key(self.seq)} are missing and no later "
                "compaction holds its clips"
            )
        result = self._index.read(manifest_key(newest)).result()
        if result.state == "value":
            try:
                self._use(newest, json.loads(result.value))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise RuntimeError(
                    f"{self._where}: bad index manifest index/{manifest_key(newest)}: {e}"
                ) from e

    def _array(self, column: dict[str, Any]) -> np.ndarray:
        values = np.frombuffer(self._read(column["key"]), np.dtype(column["dtype"]))
        return values.reshape(column["shape"])

    def column(self, name: str) -> np.ndarray:
        """A whole column (read once, then kept), its rows limited to this reader's clips."""
        if name not in self._cache:
            values = self._retrying(lambda: self._array(self.manifest["columns"][name]))
            self._cache[name] = values if name in ("id_hash", "id_order") else values[: self.limit]
        return self._cache[name]

    def score(self, name: str) -> np.ndarray | None:
        """Score ``name`` of every clip (NaN: absent), or None when no clip has it."""
        key = f"score:{name}"
        if key not in self._cache:
            if name not in self.manifest["scores"]:
                return None
            values = self._retrying(lambda: self._array(self.manifest["scores"][name]))
            self._cache[key] = values[: self.limit]
        return self._cache[key]

    def phashes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every clip's perceptual hash, uint64 ``[limit]`` (0 where none), and bool ``[limit]``:
        which clips have one. Two small objects read once; a compaction made before they existed
        has its rows read instead (see :meth:`_scan_rows`)."""
        if "phash" not in self._cache:
            if "phash" in self.manifest:
                self._retrying(self._read_phashes)
            else:
                self._scan_rows()
        return self._cache["phash"], self._cache["phash_known"]

    def _read_phashes(self) -> None:
        described = self.manifest["phash"]
        clips = int(self.manifest["clips"])
        known = np.unpackbits(self._array(described["known"]), count=clips, bitorder="little").view(bool)
        hashes = np.zeros(clips, np.uint64)
        hashes[known] = self._array(described["hashes"])
        self._cache["phash"], self._cache["phash_known"] = hashes[: self.limit], known[: self.limit]

    def source_counts(self) -> dict[str, int]:
        """The clips of each source, of this reader's clips: one object read once. A compaction
        made before it existed, or a later one this reader followed (it may hold more clips), has
        its rows read instead (see :meth:`_scan_rows`)."""
        if self._sources is None:
            described = self.manifest.get("sources")
            if described and int(self.manifest["clips"]) == self.limit:
                counts = self._retrying(lambda: json.loads(self._read(described["key"])))
                self._sources = {str(source): int(n) for source, n in counts.items()}
            else:
                self._scan_rows()
        return self._sources  # type: ignore[return-value]  # Set by either branch.

    def _scan_rows(self) -> None:
        """Perceptual hashes and source counts from the rows themselves, a part at a time (one
        read each): for a compaction made before their objects existed."""
        log.info(
            "%s: index/%s predates its perceptual-hash and source objects: reading its %d rows "
            "once (compacting the store adds them)",
            self._where,
            manifest_key(self.seq),
            self.limit,
        )
        hashes, known, sources = [np.zeros(0, np.uint64)], [np.zeros(0, bool)], collections.Counter()
        for part in range(self.parts):
            part_hashes, part_known, part_sources = row_facts(self.part_lines(part))
            hashes.append(part_hashes)
            known.append(part_known)
            sources.update(part_sources)
        self._cache["phash"], self._cache["phash_known"] = np.concatenate(hashes), np.concatenate(known)
        self._sources = dict(sources)

    def has_facts(self) -> bool:
        """Whether the perceptual hashes and source counts come from their own objects (else a
        compaction reads them from the rows it copies)."""
        return (
            "phash" in self.manifest
            and "sources" in self.manifest
            and (int(self.manifest["clips"]) == self.limit)
        )

    def _row_range(self, position: int) -> tuple[int, int, int]:
        part, first = divmod(position, self._rows_per_part)
        ends = self.column("row_ends")
        start = int(ends[position - 1]) if first else 0
        return part, start, int(ends[position])

    def entry(self, position: int) -> dict[str, Any]:
        """The clip entry at ``position`` (``0 <= position < limit``): one byte-range read."""

        def read() -> tuple[int, bytes]:
            part, start, end = self._row_range(position)
            return part, self._read(_rows_key(part), byte_range=slice(start, end))

        # Loaders may read from several threads: no step below assumes another left the rows as
        # they were (a row dropped meanwhile is just read again).
        row = self._recent_rows.get(position)
        if row is None:
            row = self._recent_rows[position] = self._retrying(read)
            while len(self._recent_rows) > _RECENT_ROWS:
                with contextlib.suppress(KeyError):
                    self._recent_rows.popitem(last=False)
        part, line = row
        try:
            return json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{self._where}: bad index entry at index/{self._prefix}{_rows_key(part)}:"
                f"{position - part * self._rows_per_part + 1}: {e}"
            ) from e

    @property
    def parts(self) -> int:
        return -(-self.limit // self._rows_per_part)

    @property
    def rows_per_part(self) -> int:
        return self._rows_per_part

    def part_lines(self, part: int) -> list[bytes]:
        """The JSON lines (no newline) of the clips of part ``part``, within ``limit``."""

        def read() -> list[bytes]:
            first = part * self._rows_per_part
            last = min(first + self._rows_per_part, self.limit)
            if last <= first:
                return []
            _, _, end = self._row_range(last - 1)
            return self._read(_rows_key(part), byte_range=slice(0, end)).split(b"\n")[: last - first]

        return self._retrying(read)

    def find(self, clip_id: str) -> int | None:
        """The position of clip ``clip_id``, or None: a binary search of the hashes, then a row
        read to rule out a hash collision."""
        hashes, order = self.column("id_hash"), self.column("id_order")
        target = id_hashes([clip_id])[0]
        first, last = np.searchsorted(hashes, target, "left"), np.searchsorted(hashes, target, "right")
        for position in order[first:last]:
            if position < self.limit and self.entry(int(position)).get("id") == clip_id:
                return int(position)
        return None

    def hashes(self) -> np.ndarray:
        """Every clip's id hash, by position."""
        hashes, order = self.column("id_hash"), self.column("id_order")
        by_position = np.empty(len(hashes), "<u8")
        by_position[order] = hashes
        return by_position[: self.limit]

    def done(self) -> list[str]:
        """The sources marked done when this compaction was made."""
        return self._retrying(lambda: json.loads(self._read(self.manifest["done"]["key"])))


class _Moved(Exception):
    """An object of a compaction is gone: a later compaction replaced it."""


def _columns_prefix(seq: int) -> str:
    # Flat keys beside the manifest, not a folder: a local store would keep an empty folder
    # for every compaction deleted.
    return f"{seq:012d}.columns-"


def manifest_key(seq: int) -> str:
    return f"{seq:012d}.columns.json"


def _rows_key(part: int) -> str:
    return f"rows-{part:06d}.jsonl"
