"""``sora-jax recaption``: new captions for stored clips, written by any captioning model.

The captions file is one of:

* a CSV (UTF-8, with a header) with columns ``id,caption``: one clip each, by clip id; or
  Open-Sora's ``path,text``, where ``path`` names a source as ``prepare`` named it (the path as
  written in the CSV it read, or relative to the folder it read): every clip of that source;
* JSON Lines (``.jsonl``): one object a line, ``{"id": ..., "caption": ...}`` or
  ``{"path": ..., "text": ...}``, the same two ways.

Captions are cleaned as ``prepare`` cleans them (:func:`~sora_jax.data.source_list.clean_caption`:
stripped, cut at ``MAX_CAPTION_CHARS``); an empty one leaves its clips as they are. A later row for
the same clip wins. Ids and paths the store does not hold are counted and named in the report;
only a file of which nothing matches is an error. Everything is read and matched before anything
is written.

A store with caption embeddings gets each new caption's embedding too, by the text encoder that
made the others (``text_encoder``: its directory, checked against the encoder, token limit and
width the store records). A sharded dataset (:mod:`sora_jax.data.shards`) is written shard by
shard, each clip in the shard store that holds it. Writes are committed every few seconds, so an
interrupted run has kept what it committed and can simply be run again. Like ``prepare``, it must
be the only writer of the store (or shard) while it runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from sora_jax.data.clip_store import ClipStore
from sora_jax.data.shards import Shard, dataset_shards, shard_of, shard_path
from sora_jax.data.source_list import clean_caption
from sora_jax.errors import ConfigError

_COMMIT_SECONDS = 3.0
_SHOWN = 10  # Unknown ids named in the report.


@dataclasses.dataclass(frozen=True)
class CaptionRow:
    """One row of a captions file: a clip ``id`` or a source ``path`` (exactly one is set), its
    cleaned ``caption``, and ``line`` (1-based) for messages; ``cut`` when the caption was cut."""

    line: int
    id: str | None
    path: str | None
    caption: str
    cut: bool = False


@dataclasses.dataclass
class RecaptionReport:
    """What a :func:`recaption` run did: ``rows`` read, ``clips`` recaptioned, rows naming no stored
    clip (``unknown``, the first of them in ``unknown_shown``), rows with an ``empty`` caption
    (their clips kept theirs), captions ``cut`` at ``MAX_CAPTION_CHARS``, and ``shards`` written."""

    rows: int = 0
    clips: int = 0
    unknown: int = 0
    unknown_shown: list[str] = dataclasses.field(default_factory=list)
    empty: int = 0
    cut: int = 0
    shards: int = 0


def read_captions(file: str | os.PathLike) -> list[CaptionRow]:
    """The rows of a captions file (see the module docstring).

    Raises:
        ConfigError: naming the file (and line): missing, not UTF-8, neither CSV nor JSONL,
            without the columns or keys of either layout, or a row without an id or path.
    """
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"--captions {os.fspath(file)!r}: no such file")
    if path.suffix.lower() in (".jsonl", ".json"):
        return _read_jsonl(path)
    if path.suffix.lower() != ".csv":
        raise ConfigError(
            f"--captions {os.fspath(file)!r}: give a .csv (id,caption or path,text) or a .jsonl"
        )
    header, rows = _read_csv(path)
    layout = _layout(set(header))
    if layout is None:
        raise ConfigError(
            f"{os.fspath(file)} has columns {', '.join(header)}: it needs id,caption (clips) or "
            "path,text (every clip of a source)"
        )
    key, text = layout
    read = []
    for line, fields in rows:
        named = dict(zip(header, fields, strict=False))
        read.append(_row(path, line, key, named.get(key), named.get(text)))
    return read


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and ``(line, fields)`` of each row of a UTF-8 CSV; ConfigError naming the line
    of a quote left open or a row longer than the header (an unquoted comma in a caption)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 (byte {error.start}); save it as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows = []
    try:
        for fields in reader:
            if not fields:
                continue
            if header is None:
                header = [field.strip() for field in fields]
            elif len(fields) > len(header):
                raise ConfigError(
                    f"{path} line {reader.line_num}: more fields than the header has; quote captions "
                    'that hold commas ("a, b")'
                )
            else:
                rows.append((reader.line_num, fields))
    except csv.Error as error:
        raise ConfigError(f"{path} line {reader.line_num}: {error}") from None
    return header or [], rows


def _layout(columns: set[str]) -> tuple[str, str] | None:
    """``(key column, caption column)`` of the layout ``columns`` hold, or None."""
    for layout in (("id", "caption"), ("path", "text")):
        if set(layout) <= columns:
            return layout
    return None


def _read_jsonl(path: Path) -> list[CaptionRow]:
    read = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 (byte {error.start}); save it as UTF-8") from None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{number}: not JSON ({error.msg})") from None
        layout = _layout(set(entry)) if isinstance(entry, dict) else None
        if layout is None:
            raise ConfigError(
                f'{path}:{number}: each line must be an object {{"id": ..., "caption": ...}} '
                '(or {"path": ..., "text": ...})'
            )
        key, caption = layout
        read.append(_row(path, number, key, entry[key], entry[caption]))
    return read


def _row(file: Path, line: int, key: str, name: Any, caption: Any) -> CaptionRow:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{file}:{line}: empty {key}")
    if not isinstance(caption, str):
        raise ConfigError(f"{file}:{line}: the caption must be text, got {caption!r}")
    cleaned, changes = clean_caption(caption)
    if key == "path":
        return CaptionRow(line, None, Path(os.path.normpath(name.strip())).as_posix(), cleaned, bool(changes))
    return CaptionRow(line, name.strip(), None, cleaned, bool(changes))


class _Target:
    """The store or sharded dataset at ``path``, opened for writing shard by shard as needed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = dataset_shards(path)
        self.stores: dict[int, ClipStore | None] = {}
        if self.count is None:
            try:
                self.stores[0] = ClipStore.open(path)
            except FileNotFoundError:
                raise ConfigError(f"--store {path!r}: no clip store or sharded dataset there") from None
            except ValueError as error:
                raise ConfigError(f"--store {path!r}: {error}") from None

    def store(self, index: int) -> ClipStore | None:
        """Shard ``index``'s store (None if not written yet); the store itself when unsharded."""
        if index not in self.stores:
            try:
                self.stores[index] = ClipStore.open(shard_path(self.path, Shard(index, self.count)))
            except FileNotFoundError:  # Not written yet: it holds nothing.
                self.stores[index] = None
        return self.stores[index]

    def holder(self, clip_id: str) -> int | None:
        """The shard (0 when unsharded) whose store holds ``clip_id``, or None."""
        if self.count is None:
            return 0 if self.stores[0].has(clip_id) else None
        # prepare shards by source ("<source>#<k>" ids); encode may shard by clip id.
        source = clip_id.rpartition("#")[0] or clip_id
        for index in dict.fromkeys((shard_of(source, self.count), shard_of(clip_id, self.count))):
            store = self.store(index)
            if store is not None and store.has(clip_id):
                return index
        return None

    def any_store(self) -> ClipStore:
        """A written store of the target, for its format (raises ConfigError if none is)."""
        found = next((s for s in self.stores.values() if s is not None), None)
        if found is None and self.count is not None:
            found = next((s for s in map(self.store, range(self.count)) if s is not None), None)
        if found is None:
            raise ConfigError(f"--store {self.path!r}: none of its {self.count} shards is written yet")
        return found


def recaption(
    store: str | os.PathLike,
    captions: str | os.PathLike,
    text_encoder: str | os.PathLike | None = None,
) -> RecaptionReport:
    """Replaces the captions of the clips of ``store`` (a clip store or sharded dataset, path or
    URL) that the ``captions`` file names; see the module docstring. Raises ConfigError, before
    writing anything, for a bad file, a store that is not one, a file of which nothing matches,
    or a text encoder missing, unneeded or other than the store's."""
    rows = read_captions(captions)
    target = _Target(os.fspath(store))
    report = RecaptionReport(rows=len(rows))
    # Resolved: shard -> {clip id: caption}, later rows replacing earlier ones.
    plan: dict[int, dict[str, str]] = {}
    for row in rows:
        if not row.caption:
            report.empty += 1
            continue
        found = [(row.id, target.holder(row.id))] if row.id else _source_clips(target, row.path)
        found = [(clip_id, shard) for clip_id, shard in found if shard is not None]
        if not found:
            report.unknown += 1
            if len(report.unknown_shown) < _SHOWN:
                report.unknown_shown.append(row.id or row.path)
            continue
        report.cut += row.cut
        for clip_id, shard in found:
            plan.setdefault(shard, {})[clip_id] = row.caption
    if not plan:
        raise ConfigError(
            f"--captions {os.fspath(captions)!r}: none of its {len(rows)} rows names a clip of {target.path} "
            f"(first: {', '.join(report.unknown_shown[:3]) or 'all captions empty'}); ids look like "
            "'<source>#<k>', paths as prepare's input named them"
        )
    embedder = _embedder(target.any_store(), text_encoder)
    for shard, captions_of in sorted(plan.items()):
        report.clips += _write(target.store(shard), captions_of, embedder)
        report.shards += 1
    return report


def _source_clips(target: _Target, source: str) -> list[tuple[str, int | None]]:
    """Every clip of ``source`` as ``(id, shard)``: ids ``<source>#0``, ``#1``, ... until one is
    missing, as prepare names them."""
    found = []
    for k in range(2**31):
        clip_id = f"{source}#{k}"
        shard = target.holder(clip_id)
        if shard is None:
            break
        found.append((clip_id, shard))
    return found


def _embedder(store: ClipStore, text_encoder: str | os.PathLike | None) -> Any:
    """The caption embedder a store's new captions need (None for a store without embeddings)."""
    if not store.caption_dim:
        if text_encoder is not None:
            raise ConfigError(
                f"--text-encoder: {store.path} keeps no caption embeddings, only text: drop --text-encoder"
            )
        return None
    held = store.caption_encoder
    if text_encoder is None:
        raise ConfigError(
            f"{store.path} keeps caption embeddings by {held.get('name')!r} ({held.get('model_type')}, "
            f"{held.get('max_tokens')} tokens): give its directory as --text-encoder"
        )
    from sora_jax.text.embedder import CaptionEmbedder

    try:
        embedder = CaptionEmbedder(text_encoder, int(held.get("max_tokens", 64)))
    except (OSError, ValueError) as error:
        raise ConfigError(f"--text-encoder {os.fspath(text_encoder)!r}: {error}") from None
    if embedder.description != held or embedder.dim != store.caption_dim:
        raise ConfigError(
            f"--text-encoder {os.fspath(text_encoder)!r} is {embedder.description} ({embedder.dim} wide); "
            f"{store.path} keeps embeddings by {held} ({store.caption_dim} wide): give that encoder"
        )
    return embedder


def _write(store: ClipStore, captions: dict[str, str], embedder: Any) -> int:
    """Recaptions ``captions`` (id -> caption) in ``store``, committing every few seconds; each
    distinct caption is embedded once. Returns the number of clips recaptioned."""
    embeddings: dict[str, Any] = {}
    last = time.monotonic()
    for clip_id, caption in captions.items():
        embedding = None
        if embedder is not None:
            if caption not in embeddings:
                embeddings = embeddings if len(embeddings) < 4096 else {}  # Bounded memory.
                embeddings[caption] = embedder(caption)
            embedding = embeddings[caption]
        store.recaption(clip_id, caption, embedding)
        if time.monotonic() - last >= _COMMIT_SECONDS:
            store.flush()
            last = time.monotonic()
    store.flush()
    store.compact()
    return len(captions)


def summary(report: RecaptionReport) -> str:
    """One line for a person."""
    unknown = ""
    if report.unknown:
        more = ", ..." if report.unknown > len(report.unknown_shown) else ""
        unknown = f"; {report.unknown} rows name no stored clip ({', '.join(report.unknown_shown)}{more})"
    counted = ((report.empty, "empty captions skipped"), (report.cut, "captions cut"))
    extra = "".join(f"; {n} {what}" for n, what in counted if n)
    shards = f" in {report.shards} shards" if report.shards > 1 else ""
    return f"recaptioned {report.clips} clips{shards} from {report.rows} rows{unknown}{extra}"
