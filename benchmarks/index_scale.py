"""Clip index at scale: opening clip stores of 1M and 10M clips and drawing records, into docs/BENCHMARKS.md.

    python -m benchmarks.index_scale [--sizes 1000000 10000000] [--workdir /tmp/index_scale]

Only the index is measured, so the stores hold no clip data: each is an empty store
(``ClipStore.create``, with caption embeddings and sound) whose index describes synthetic clips
with every field a prepared store fills (ids and sources in folders, ~100-character captions,
shapes, fps, start, data, caption-embedding and sound offsets, the three scores prepare measures,
a perceptual hash; ten clips a source, every source marked done). At the smallest size the index is
written in the older JSON-lines layout (``index/N.all.jsonl``), opened that way, then converted by
``ClipStore.compact`` as a user's store would be; larger sizes are written straight in the columnar
layout by the writer compaction uses (their records would not fit in this machine's memory as
Python objects, which is the point). Each measurement runs in a fresh process: resident memory
(VmRSS) is read after imports, after ``ClipStore.open`` and after the draws. The synthetic stores
are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.report import machine_description, replace_section
from sora_jax.data.clip_index import ColumnWriter
from sora_jax.data.clip_store import ClipRecord, ClipStore, _encode_lines

CLIPS_PER_SOURCE = 10
CAPTION_DIM = 512
SAMPLE_RATE = 16000
_WORDS = (
    "a the red blue green small large dog cat person car tree river city street slowly quickly walks "
    "runs jumps turns under over near beside morning evening light dark camera pans zooms close wide "
    "shot view of in on with through across snowy sunny rainy crowded empty old young two three"
).split()
_SIZES = np.asarray([(360, 640), (480, 854), (720, 1280), (1080, 1920), (640, 360), (512, 512)])


def _caption_pool(count: int = 1 << 16) -> list[str]:
    """Captions of 13-24 words (~100 characters); clips draw from the pool, which keeps writing
    10M records within minutes on two cores."""
    rng = np.random.default_rng(1)
    words = rng.integers(0, len(_WORDS), (count, 24))
    return [" ".join(_WORDS[w] for w in row[: rng.integers(13, 25)]) for row in words]


_CAPTIONS = _caption_pool()


def synthetic_records(first: int, count: int) -> list[ClipRecord]:
    """Clips ``first .. first + count - 1`` of a synthetic store (a function of the positions)."""
    rng = np.random.default_rng(first)
    positions = np.arange(first, first + count)
    frames = rng.choice([17, 33, 49, 65, 81, 97, 113, 129], count)
    sides = _SIZES[rng.integers(0, len(_SIZES), count)]
    fps = rng.choice([24.0, 25.0, 30.0, 30000 / 1001], count)
    # Offsets are not cumulative across calls (no clip data is read); they only must be plausible.
    sizes = frames * sides[:, 0] * sides[:, 1] * 3
    offsets = np.cumsum(sizes) - sizes + first * int(sizes.mean())
    tokens = rng.integers(8, 65, count)
    caption_offsets = (np.cumsum(tokens) - tokens + first * 36) * CAPTION_DIM
    samples = np.round(frames / fps * SAMPLE_RATE).astype(np.int64)
    audio_offsets = np.cumsum(samples) - samples + first * 40000
    sound = rng.random(count) < 0.8
    captions = rng.integers(0, len(_CAPTIONS), count)
    scores = rng.random((count, 3))
    hashes = rng.integers(0, 2**63, count)
    records = []
    for j, i in enumerate(positions):
        source = f"videos/{i // 100000:03d}/{i // CLIPS_PER_SOURCE:08d}.mp4"
        records.append(
            ClipRecord(
                clip_id=f"{source}#{i % CLIPS_PER_SOURCE}",
                shape=(int(frames[j]), int(sides[j, 0]), int(sides[j, 1]), 3),
                fps=float(fps[j]),
                caption=_CAPTIONS[captions[j]],
                source=source,
                start=float(i % CLIPS_PER_SOURCE) * 5.125,
                offset=int(offsets[j]),
                caption_offset=int(caption_offsets[j]),
                caption_tokens=int(tokens[j]),
                audio="sound" if sound[j] else "none",
                audio_offset=int(audio_offsets[j]) if sound[j] else 0,
                audio_samples=int(samples[j]) if sound[j] else 0,
                scores={"motion": scores[j, 0], "brightness": scores[j, 1], "letterbox": scores[j, 2]},
                phash=f"{int(hashes[j]):016x}",
            )
        )
    return records


def _sources(clips: int) -> list[str]:
    return [
        f"videos/{s * CLIPS_PER_SOURCE // 100000:03d}/{s:08d}.mp4" for s in range(clips // CLIPS_PER_SOURCE)
    ]


def _empty_store(path: Path) -> ClipStore:
    shutil.rmtree(path, ignore_errors=True)
    return ClipStore.create(path, caption_dim=CAPTION_DIM, audio_sample_rate=SAMPLE_RATE)


def build_json_lines(path: Path, clips: int) -> float:
    """A store whose index is one JSON-lines compaction (the older layout); seconds taken."""
    start = time.perf_counter()
    store = _empty_store(path)
    blob = bytearray()
    for first in range(0, clips, 65536):
        blob += _encode_lines([r.to_entry() for r in synthetic_records(first, min(65536, clips - first))])
    blob += _encode_lines([{"type": "done", "source": s} for s in _sources(clips)])
    store.kvstore.write("index/000000000001.all.jsonl", bytes(blob)).result()
    return time.perf_counter() - start


def build_columnar(path: Path, clips: int) -> float:
    """A store whose index is one columnar compaction, written part by part; seconds taken."""
    start = time.perf_counter()
    store = _empty_store(path)
    writer = ColumnWriter(store.kvstore / "index/", 1)  # The writer ClipStore.compact uses.
    for first in range(0, clips, 65536):
        writer.add_records(synthetic_records(first, min(65536, clips - first)))
    last = synthetic_records(clips - 1, 1)[0]
    ends = {
        "data": last.offset + last.size,
        "captions": last.caption_offset + last.caption_tokens * CAPTION_DIM,
        "audio": last.audio_offset + last.audio_samples,
    }
    writer.commit(_sources(clips), ends)
    return time.perf_counter() - start


def _rss_mb() -> dict[str, float]:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure(path: str, draws: int) -> dict[str, float]:
    """Opens the store at ``path`` and draws from it; runs in its own process (see main)."""
    before = _rss_mb()["VmRSS"]
    start = time.perf_counter()
    store = ClipStore.open(path)
    opened = time.perf_counter() - start
    after_open = _rss_mb()["VmRSS"]
    positions = np.random.default_rng(0).integers(0, len(store), draws + 1)
    first_record_s = _seconds(lambda: store.record(int(positions[-1])))  # Reads the row ends.
    record_s = _seconds(lambda: [store.record(int(i)) for i in positions[:-1]])
    ids = [store.record(int(i)).clip_id for i in positions]
    first_has_s = _seconds(lambda: store.has(ids[-1]))  # Reads the id lookup.
    has_s = _seconds(lambda: all(store.has(i) for i in ids[:-1]))
    kept = []  # The arrays stay alive until the RSS reading below.
    shapes_s = _seconds(lambda: kept.append(store.shapes))
    scores_s = _seconds(lambda: kept.append(store.scores("motion")))
    assert [len(a) for a in kept] == [len(store)] * 2
    rss = _rss_mb()
    return {
        "clips": len(store),
        "open_s": opened,
        "open_mb": after_open - before,
        "first_record_s": first_record_s,
        "record_ms": record_s / draws * 1e3,
        "first_has_s": first_has_s,
        "has_ms": has_s / draws * 1e3,
        "shapes_s": shapes_s,
        "scores_s": scores_s,
        "draws_mb": rss["VmRSS"] - before,
        "peak_mb": rss["VmHWM"] - before,
    }


def _measured(path: Path, draws: int) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.index_scale", "--measure", str(path), "--draws", str(draws)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.splitlines()[-1])


def _index_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in (path / "index").iterdir()) / 2**20


def _compact(path: Path, append: bool) -> tuple[float, float]:
    """Compacts the store in a fresh process, after appending one tiny clip if ``append`` (as a
    writer that compacts as it goes does): seconds taken by ``compact()``, and peak added MB."""
    code = f"""
import json, time
import numpy as np
from benchmarks.index_scale import CAPTION_DIM, _rss_mb
from sora_jax.data.clip_store import ClipStore
before = _rss_mb()["VmRSS"]
store = ClipStore.open({str(path)!r})
if {append}:
    store.append(np.zeros((1, 1, 1, 3), np.uint8), clip_id="one more#0", fps=1.0, caption="one more",
                 source="one more", start=0.0, caption_embedding=np.zeros((1, CAPTION_DIM), np.float32))
    store.flush()
start = time.perf_counter()
store.compact(min_segments=1)
print(json.dumps([time.perf_counter() - start, _rss_mb()["VmHWM"] - before]))
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    seconds, peak = json.loads(out.stdout.splitlines()[-1])
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", default="/tmp/index_scale")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # Internal: one fresh measuring process.
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.draws)))
        return

    workdir = Path(args.workdir)
    rows = []
    try:
        for n, clips in enumerate(sorted(args.sizes)):
            path = workdir / f"store_{clips}"
            if n == 0:
                built = build_json_lines(path, clips)
                result = _measured(path, args.draws)
                rows.append(
                    ("JSON lines (older layout)", result, _index_mb(path), f"written in {built:.0f} s")
                )
                print(rows[-1], flush=True)
                seconds, peak = _compact(path, append=False)
                how = f"`compact()` of the above: {seconds:.0f} s, {peak:,.0f} MB peak"
            else:
                seconds = build_columnar(path, clips)
                how = f"written directly in {seconds:.0f} s"
            result = _measured(path, args.draws)
            result["again_s"], result["again_mb"] = _compact(path, append=True)
            rows.append(("columnar", result, _index_mb(path), how))
            print(rows[-1], flush=True)
            shutil.rmtree(path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = [
        "| index layout | clips | index on disk | open | RSS after open | first record(i) | record(i) | "
        "first has(id) | has(id) | shapes | scores(name) | RSS after all | peak RSS | how it was made | "
        "one more clip, compact() |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layout, r, disk, how in rows:
        table.append(
            f"| {layout} | {r['clips']:,} | {disk:,.0f} MB | {r['open_s']:.2f} s | {r['open_mb']:,.0f} MB | "
            f"{r['first_record_s'] * 1e3:.0f} ms | {r['record_ms'] * 1e3:.0f} µs | "
            f"{r['first_has_s'] * 1e3:.0f} ms | {r['has_ms'] * 1e3:.0f} µs | "
            f"{r['shapes_s']:.2f} s | {r['scores_s']:.2f} s | {r['draws_mb']:,.0f} MB | "
            f"{r['peak_mb']:,.0f} MB | {how} | "
            + (f"{r['again_s']:.0f} s, {r['again_mb']:,.0f} MB peak |" if "again_s" in r else "|")
        )
    body = "\n".join(
        [
            f"Measured on {machine_description()} (a 2-core CPU machine shared with other work), "
            "local disk, with `python -m benchmarks.index_scale`.",
            "",
            "Synthetic stores of clip records only (no clip data: only the index is measured), every "
            "field filled as `prepare` fills it with a text encoder and sound: ~100-character captions, "
            "three scores, a perceptual hash, ten clips a source. Each row is a fresh process; RSS "
            "is resident memory added since the imports. The first `record(i)` of a columnar index "
            "reads the row ends and the first `has(id)` the id lookup; the next columns are the "
            "time per clip of 1000 more random positions and of their ids; `shapes` and "
            "`scores(name)` build the whole int64 `[N, 4]` and float64 `[N]` arrays (kept until the "
            "last RSS reading, as a data pipeline keeps them). The index files were just written, "
            "so they are read from the page cache. The last column appends one clip to the "
            "compacted store and compacts it again, in a fresh process, as a writer that compacts "
            "while it ingests does: every row is copied.",
            "",
            *table,
            "",
            "The JSON-lines layout parses every entry into a `ClipRecord` at open, so open time and "
            "memory grow with the store (it is still read, for stores compacted before the columnar "
            "layout). A columnar compaction opens by reading one small manifest; a clip's record "
            "is a byte-range read of its JSON row, and `shapes`, `scores` and the id lookup read "
            "one column each when first used, so a host holds a few bytes a clip for what it uses. "
            "Perceptual hashes (`phashes()`, for `data.dedup_distance`) are a column too (a bit "
            "per clip saying which have one, and 8 bytes per hashed clip), and the sources that "
            "have clips (`sources()`, for a resumed `prepare`) one object of per-source clip "
            "counts: neither reads the rows.",
        ]
    )
    print(body)
    if not args.no_write:
        replace_section("index_scale", "Clip index at scale", body)


if __name__ == "__main__":
    main()
