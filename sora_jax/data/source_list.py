"""The sources a ``sora-jax prepare`` run reads, found in a folder, a single file or a CSV.

Input is a folder, searched recursively for ``.mp4 .avi .mov .mkv .webm .gif`` videos and
``.png .jpg .jpeg .bmp .webp`` images (hidden files and folders skipped) each captioned by a
sidecar ``.txt`` with the same stem; a single such file (its sidecar beside it); or a CSV in the
Open-Sora layout: columns ``path,text`` plus optional ``num_frames,height,width,fps`` (other
columns are ignored), UTF-8, paths relative to the CSV's folder. Only ``fps`` is used from the
optional columns, and only when the file itself reports no frame rate; sizes and lengths are
probed from the files, which are what actually gets decoded. A CSV that would lose or garble a
caption is refused whole, naming the line: a quote left open (it would swallow the rows after it
into one caption), a row with more fields than the header (an unquoted comma in a caption).

A source's key, its name in the store and in clip ids, is its path relative to the folder (the
file's name for a single file, the path as written for a CSV).

Captions are stripped and cut at :data:`MAX_CAPTION_CHARS`; bytes of a sidecar ``.txt`` that are
not UTF-8 are read as U+FFFD. Each such change travels with the source (``CAPTION_CHANGES``), so
the run that stores it can count and name it. Nothing here opens a media file: whether a source
decodes is found out later, in a decoding process.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
from pathlib import Path

from sora_jax.data.video_io import IMAGE_SUFFIXES
from sora_jax.errors import ConfigError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
MEDIA_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES
# Longest caption kept, in characters; the rest is cut (and counted). Text encoders read a few
# hundred tokens at most (T5 in Open-Sora 300, umT5 in Wan 512; an English token is about 4
# characters), so this is several times what any of them sees. Anything longer is no caption (a
# transcript or a log saved as .txt) and would be copied into the index once per clip, which
# every reader of the store loads whole.
MAX_CAPTION_CHARS = 4096
# What can happen to a caption that is still stored (the source is not skipped for it).
CAPTION_CHANGES = {
    "not_utf8": "bytes of its .txt that are not UTF-8, each stored as U+FFFD",
    "cut": f"longer than {MAX_CAPTION_CHARS} characters, cut there",
}


@dataclasses.dataclass(frozen=True)
class Source:
    """One video or image to ingest, with its caption as read (None: it has none)."""

    key: str  # Relative path: the source's name in the store and in clip ids.
    path: str  # Where to read it.
    caption: str | None
    fps_hint: float  # From a CSV's fps column; 0.0 if none.
    caption_changes: tuple[tuple[str, str], ...] = ()  # (change, detail): see CAPTION_CHANGES.
    problem: tuple[str, str] | None = None  # (reason, detail) that fails it before decoding.


@dataclasses.dataclass
class SourceList:
    """What :func:`find_sources` found.

    ``sources``: in sorted path order for a folder, in row order for a CSV. ``inputs_seen``: media
    files found (folder, single file) or CSV rows. ``rejected``: ``(key, reason, detail)`` for each
    CSV row that names no usable source (reason ``missing_file`` or ``duplicate``), so it is in
    neither ``sources`` nor the store; a row with an empty path is keyed ``"<csv name>:<line>"``.
    """

    sources: list[Source]
    inputs_seen: int
    rejected: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


def find_sources(input: Path) -> SourceList:
    """The sources in ``input``: a folder, a CSV or one media file (see the module docstring).

    Raises :class:`ConfigError` for an ``input`` that does not exist or is none of these, and
    for a CSV that cannot be read whole as one.
    """
    if input.is_dir():
        return _from_folder(input)
    if not input.exists():
        raise ConfigError(f"input {os.fspath(input)!r} does not exist")
    suffix = input.suffix.lower()
    if suffix == ".csv":
        return _from_csv(input)
    if suffix in MEDIA_SUFFIXES:
        return SourceList([_media_source(input.name, input)], 1)
    raise ConfigError(
        f"input {os.fspath(input)!r} is neither a folder, a .csv, nor a video or image "
        f"({' '.join(MEDIA_SUFFIXES)})"
    )


def clean_caption(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``text`` stripped and cut at MAX_CAPTION_CHARS, with the change if it was cut."""
    text = text.strip()
    if len(text) <= MAX_CAPTION_CHARS:
        return text, []
    return text[:MAX_CAPTION_CHARS].rstrip(), [("cut", f"{len(text)} characters")]


def _from_folder(root: Path) -> SourceList:
    sources = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        # Dot-files include partial writes (write_video's temporaries) and OS metadata.
        if path.suffix.lower() not in MEDIA_SUFFIXES or any(p.startswith(".") for p in rel.parts):
            continue
        if not path.is_file():
            continue
        sources.append(_media_source(rel.as_posix(), path))
    return SourceList(sources, len(sources))


def _media_source(key: str, path: Path) -> Source:
    """A file captioned by its sidecar ``.txt``."""
    sidecar = path.with_suffix(".txt")
    try:
        raw = sidecar.read_bytes()
    except FileNotFoundError:
        return Source(key, os.fspath(path), None, 0.0)
    except OSError as error:
        return Source(key, os.fspath(path), None, 0.0, problem=("unreadable", f"{sidecar.name}: {error}"))
    changes = []
    body = raw.removeprefix(b"\xef\xbb\xbf")  # Some editors start UTF-8 with a byte-order mark.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        text = body.decode("utf-8", errors="replace")
        offset = error.start + len(raw) - len(body)
        changes.append(("not_utf8", f"{sidecar.name} byte {offset} is 0x{raw[offset]:02x}"))
    caption, cut = clean_caption(text)
    return Source(key, os.fspath(path), caption or None, 0.0, tuple(changes + cut))


# Columns of an Open-Sora CSV that are read; any other column is ignored.
_CSV_COLUMNS = "path (required), text, fps"


def _from_csv(csv_path: Path) -> SourceList:
    found = SourceList([], 0)
    keys: set[str] = set()
    header, rows = _read_csv(csv_path)
    if "text" not in header:
        log.warning("%s has no 'text' column: every source gets caption_default or is skipped", csv_path)
    for line, row in rows:
        fields = dict(zip(header, row, strict=False))
        raw = (fields.get("path") or "").strip()
        if not raw:
            found.rejected.append((f"{csv_path.name}:{line}", "missing_file", "empty path"))
            continue
        absolute = os.path.isabs(raw)
        key = Path(os.path.normpath(raw)).as_posix()
        path = Path(raw) if absolute else csv_path.parent / raw
        if key in keys:
            found.rejected.append((key, "duplicate", f"repeated at {csv_path.name} line {line}"))
            continue
        keys.add(key)
        if not path.is_file():
            found.rejected.append((key, "missing_file", f"{os.fspath(path)} not found"))
            continue
        caption, changes = clean_caption(fields.get("text") or "")
        fps_hint = _parse_float(fields.get("fps"))
        found.sources.append(Source(key, os.fspath(path), caption or None, fps_hint, tuple(changes)))
    found.inputs_seen = len(rows)
    return found


def _read_csv(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and ``(line, fields)`` of each row; ConfigError for a file that would garble them."""
    name = os.fspath(csv_path)
    raw = csv_path.read_bytes()
    body = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start + len(raw) - len(body)
        line = raw[:offset].count(b"\n") + 1
        raise ConfigError(
            f"{name} is not UTF-8: byte {offset} (line {line}) is 0x{raw[offset]:02x}; save it as UTF-8"
        ) from None
    # Split as csv splits (newline=""), so the reader's line count indexes these lines.
    lines = io.StringIO(text, newline="").readlines()
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            if reader.line_num > start or "end of data" in str(error):
                raise ConfigError(
                    f"{name}: the quote opened on line {start} is not closed where its field ends "
                    f'({error}, line {reader.line_num}); close it, and double quotes inside a field ("")'
                ) from None
            raise ConfigError(
                f"{name} line {start}: {error}; a field with quotes in it must be quoted whole, "
                'its quotes doubled ("")'
            ) from None
        if not row:
            continue  # A blank line.
        if header is None:
            header = [field.strip() for field in row]
            if "path" not in header:
                raise ConfigError(
                    f"{name} has no 'path' column: its header is {header}; "
                    f"columns read: {_CSV_COLUMNS} (others are ignored)"
                )
            continue
        if reader.line_num > start:
            _check_swallowed_rows(name, header, csv_path.parent, lines[start - 1 : reader.line_num], start)
        if len(row) > len(header) and any(field.strip() for field in row[len(header) :]):
            raise ConfigError(
                f"{name} line {start}: {len(row)} fields where the header has {len(header)}; "
                "quote a caption that holds a comma"
            )
        rows.append((start, row))
    if header is None:
        raise ConfigError(f"{name} is empty: it needs a header with a 'path' column")
    return header, rows


def _check_swallowed_rows(name: str, header: list[str], folder: Path, lines: list[str], start: int) -> None:
    """Refuses a quoted field over several lines when a line after the first reads as a row.

    A quote left open takes the rows after it into one caption; strict parsing notices only when
    a later quote then sits where no field can end. A caption over several lines is legitimate,
    but one of its lines is unlikely to split into as many fields as the header with a video path
    where the path goes.
    """
    path_column = header.index("path")
    for offset, line in enumerate(lines[1:], start=1):
        try:
            fields = next(csv.reader([line]))
        except (csv.Error, StopIteration):
            continue
        if len(fields) != len(header):
            continue
        path = fields[path_column].strip()
        if path.lower().endswith(MEDIA_SUFFIXES) or (path and (folder / path).is_file()):
            raise ConfigError(
                f"{name}: the quote opened on line {start} is not closed before line {start + offset}, "
                'which reads as a row of its own; close it, and double quotes inside a field ("")'
            )


def _parse_float(text: str | None) -> float:
    try:
        value = float(text) if text else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0
