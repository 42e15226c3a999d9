"""Ingest filters: what scene cuts, motion, brightness, letterbox and hashes cost per clip, against
decoding alone, on real videos; and near-duplicate search at scale. Into docs/BENCHMARKS.md.

    python -m benchmarks.clip_filters [--videos DIR ...]

The videos are the sample videos of Debian's opencv-doc package (as for benchmarks.data_pipeline):

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocv
    gunzip -k /tmp/ocv/usr/share/doc/opencv-doc/opencv4/html/*.mp4.gz

Each video is cut as ``sora-jax prepare`` cuts it by default (8 fps, 4 s clips, 256 x 256 px)
in this process, three times, keeping the fastest: once with the measurements replaced by
nothing (decoding, resampling and resizing alone), once with everything on; each measurement is
then timed alone on the clips' frames.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import machine_description, replace_section
from sora_jax.data import clip_shaping
from sora_jax.data.clip_filters import MeasuredClip, SceneCuts, brightness, content_box, motion, phash
from sora_jax.data.clip_selection import near_duplicates
from sora_jax.data.clip_shaping import ClipSettings, decode_source
from sora_jax.data.video_io import probe_video

_OCV = "/tmp/ocv/usr/share/doc/opencv-doc"
DEFAULT_VIDEOS = sorted(glob.glob(f"{_OCV}/examples/data/*.avi")) + sorted(
    glob.glob(f"{_OCV}/opencv4/html/*.mp4")
)
SETTINGS = ClipSettings(
    max_seconds=4.0, fps=8.0, max_area=256 * 256, min_side=16, max_input_pixels=4096**2, audio_rate=None
)
REPEATS = 3


def _unmeasured(frames: np.ndarray, fps: float, crop_letterbox: bool) -> MeasuredClip:
    return MeasuredClip(frames, {}, "", False)


def _best(run, repeats: int = REPEATS) -> tuple[float, object]:
    """The fastest of ``repeats`` calls of ``run()`` (seconds) and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def _decode(path: str, settings: ClipSettings):
    with tempfile.TemporaryDirectory() as scratch:
        decoded = decode_source(path, os.path.join(scratch, "clips"), settings, 0.0)
        return decoded, [np.load(clip.file) for clip in decoded.clips]


def video_row(path: str) -> dict[str, float]:
    """Milliseconds a clip for each stage of one video, and what the filters found."""
    plain = ClipSettings(**{**SETTINGS.__dict__, "scene_threshold": None, "letterbox_crop": False})
    real_measure = clip_shaping.measure_clip
    clip_shaping.measure_clip = _unmeasured  # Decoding alone: the spool measures nothing.
    try:
        decode_s, (_, clips) = _best(lambda: _decode(path, plain))
    finally:
        clip_shaping.measure_clip = real_measure
    total_s, (decoded, _) = _best(lambda: _decode(path, SETTINGS))
    frames = np.concatenate(clips)

    def scenes() -> int:
        detector = SceneCuts()
        return sum(detector.starts_scene(frame) for frame in frames)

    stages = {
        "scene": lambda: scenes(),
        "motion": lambda: [motion(c, SETTINGS.fps) for c in clips],
        "phash": lambda: [phash(c[len(c) // 2]) for c in clips],
        "letterbox": lambda: [
            content_box(c[np.linspace(0, len(c) - 1, min(8, len(c))).astype(int)]) for c in clips
        ],
        "brightness": lambda: [brightness(c) for c in clips],
    }
    count = len(clips)
    row = {
        "video": Path(path).name,
        "size": f"{clips[0].shape[2]}x{clips[0].shape[1]}",
        "seconds": probe_video(path).duration,
        "clips": count,
        "decode": decode_s * 1000 / count,
        "total": total_s * 1000 / count,
        "cuts": decoded.scene_cuts,
        "starts": [round(c.start, 2) for c in decoded.clips],
    }
    for name, run in stages.items():
        row[name] = _best(run)[0] * 1000 / count
    return row


def dedup_rows() -> list[tuple[int, int, float]]:
    """Seconds to find near-duplicates among N random 64-bit hashes (the worst case: no structure)."""
    rows = []
    rng = np.random.default_rng(0)
    for count, distances in ((100_000, (2, 4, 6, 8)), (1_000_000, (2, 4))):
        hashes = rng.integers(0, 2**63, count, dtype=np.uint64) * np.uint64(2)
        for distance in distances:
            seconds, _ = _best(lambda h=hashes, d=distance: near_duplicates(h, d), repeats=1)
            rows.append((count, distance, seconds))
    return rows


def _starts(rows: list[dict], video: str) -> str:
    return ", ".join(f"{s:g}" for s in next((r["starts"] for r in rows if r["video"] == video), []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", nargs="*", default=DEFAULT_VIDEOS)
    args = parser.parse_args()
    if not args.videos:
        raise SystemExit("no videos: unpack opencv-doc as the module docstring says, or give --videos")
    rows = [video_row(path) for path in args.videos]
    for row in rows:
        print(row)
    dedup = dedup_rows()
    print(dedup)

    stages = ("decode", "scene", "motion", "phash", "letterbox", "brightness")
    lines = [
        f"Machine: {machine_description()}; a 2-core CPU shared with other work, so the fastest of "
        f"{REPEATS} runs is kept. `python -m benchmarks.clip_filters`.",
        "",
        "Milliseconds per clip of the video cut without scene cuts (one denominator for every column), "
        "prepare's defaults (8 fps, clips of up to 4 s, 256 x 256 px), one "
        "decoding process. *decode*: decoding, resampling and resizing alone; then each filter timed "
        "alone on the same clips' frames (*scene*: the cut detector over every sampled frame); *all on*: "
        "`decode_source` with every filter, end to end.",
        "",
        "| video | stored size | s | clips | decode | scene | motion | phash | letterbox | brightness "
        "| all on | filters / decode | cuts found |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        filters = sum(row[s] for s in stages[1:])
        cells = " | ".join(f"{row[s]:.1f}" for s in stages)
        lines.append(
            f"| {row['video']} | {row['size']} | {row['seconds']:.1f} | {row['clips']} | {cells} | "
            f"{row['total']:.1f} | {filters / row['decode']:.0%} | {row['cuts']} |"
        )
    lines += [
        "",
        "Cuts found in Megamind.avi (a film scene of four shots after one black frame): clips start at "
        f"{_starts(rows, 'Megamind.avi')} s; a look at its frames puts the cuts at 0.17 (out of black), "
        "4.17, 6.54 and 8.42 s at 8 fps. Megamind_bugy.avi is the same scene at 30 fps with corrupt "
        f"frames: clips start at {_starts(rows, 'Megamind_bugy.avi')} s (its shots begin at about 3.3, 5.3 "
        "and 6.7 s; the other cuts are at corrupt frames, which are dropped). The other videos are "
        "single shots.",
        "",
        "Near-duplicate search (`data.dedup_distance`), seconds, on uniformly random hashes (the most "
        "candidate pairs per lookup a store of that size can have):",
        "",
        "| hashes | distance | s |",
        "|---|---|---|",
    ]
    lines += [f"| {count:,} | {distance} | {seconds:.2f} |" for count, distance, seconds in dedup]
    replace_section("clip_filters", "Ingest filters", "\n".join(lines))


if __name__ == "__main__":
    main()
