"""Prepare at scale: clips/s of one ``sora-jax prepare`` worker against shard workers on the same videos.

Runs in one go, on this machine and the same input, one after the other: one worker (one decoding
process), one worker with two decoding processes, and two shard workers writing one sharded dataset
at once (``--shard I --num-shards 2``, one decoding process each). For each: wall time, clips/s, the
CPU seconds of every process involved and clips per CPU second (clips/s a core). Then it checks that
the two shard workers' dataset, read through ``open_clips``, holds exactly the clips of the single
worker (same ids, records, pixels and sound), and writes the section "Prepare at scale" of
docs/BENCHMARKS.md.

    python -m benchmarks.prepare_scale [--videos /tmp/ocv] [--copies 2] [--repeats 2] [--no-write]

With ``--repeats R`` the three runs take turns R times and each keeps its fastest, which is the one
least slowed by other work on a shared machine.

The input is the full-length sample videos of Debian's opencv-doc package (mpeg4, msmpeg4 and
cinepak AVI, H.264 MP4; AC-3, MP3 and AAC sound), each linked ``--copies`` times into folders of its
own so that there are enough sources to share between workers:

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocv
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import itertools
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import machine_description, replace_section
from sora_jax.data.shards import open_clips

DOCS = Path("usr/share/doc/opencv-doc")
SAMPLES = ("examples/data/Megamind.avi", "examples/data/Megamind_bugy.avi", "examples/data/tree.avi")
SAMPLES += ("examples/data/vtest.avi", "opencv4/html/box.mp4.gz", "opencv4/html/cup.mp4.gz")
CAPTION = "a real video"


def gather_videos(ocv: Path, copies: int, folder: Path) -> list[str]:
    """The samples under ``folder/copyN/`` (linked, the gzipped ones unpacked once); their names."""
    originals = folder / "originals"
    originals.mkdir(parents=True)
    names = []
    for sample in SAMPLES:
        source = ocv / DOCS / sample
        if not source.exists():
            sys.exit(f"{source} not found: unpack opencv-doc first (see this script's docstring)")
        if source.suffix == ".gz":
            with gzip.open(source) as packed, open(originals / source.stem, "wb") as plain:
                shutil.copyfileobj(packed, plain)
        else:
            shutil.copyfile(source, originals / source.name)
        names.append(source.stem if source.suffix == ".gz" else source.name)
    for copy in range(copies):
        (folder / "input" / f"copy{copy}").mkdir(parents=True)
        for name in names:
            (folder / "input" / f"copy{copy}" / name).symlink_to(originals / name)
    return names


def run_workers(input: Path, output: Path, count: int, decoders: int) -> dict:
    """``count`` prepare workers started at once (sharded when ``count > 1``), each with
    ``decoders`` decoding processes: wall and CPU seconds, clips written, sources each took."""
    argv = [sys.executable, "-m", "sora_jax.cli", "prepare", "--input", str(input), "--output", str(output)]
    argv += ["--workers", str(decoders), "--caption-default", CAPTION]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    shards = [["--shard", str(i), "--num-shards", str(count)] if count > 1 else [] for i in range(count)]
    workers = [
        subprocess.Popen(argv + flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for flags in shards
    ]
    outputs = []
    for worker in workers:
        out, err = worker.communicate()
        if worker.returncode:
            sys.exit(f"prepare failed:\n{err[-3000:]}")
        outputs.append(out)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    clips = sum(int(re.search(r"^(\d+) clips", out, re.M)[1]) for out in outputs)
    took = [int(m[1]) for out in outputs if (m := re.search(r"took (\d+) of", out))]
    failures = [ast.literal_eval(re.search(r"skipped \d+: (\{[^}]*\})", out)[1]) for out in outputs]
    skipped = sum(sum(counts.values()) for counts in failures)
    reasons = sorted({reason for counts in failures for reason in counts})
    return {"wall": wall, "cpu": cpu, "clips": clips, "took": took, "skipped": skipped, "reasons": reasons}


def fingerprint(path: Path) -> dict[str, tuple]:
    """Every clip at ``path`` by id: its record and a hash of its pixels and sound."""
    clips = open_clips(path)
    found = {}
    for position in range(len(clips)):
        record = clips.record(position)
        digest = hashlib.sha1(clips.read(position).tobytes())
        sound = clips.read_audio(position)
        if sound is not None:
            digest.update(sound.tobytes())
        found[record.clip_id] = (record.shape, record.fps, record.caption, record.start, record.audio)
        found[record.clip_id] += (sorted(record.scores.items()), record.phash, digest.hexdigest())
    if len(found) != len(clips):
        sys.exit(f"{path}: a clip id appears twice")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=Path("/tmp/ocv"), help="where opencv-doc is unpacked")
    parser.add_argument("--copies", type=int, default=2, help="links to each video, in folders of their own")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the three runs; the fastest counts")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    load = [os.getloadavg()[0]]  # Other work on the machine, in runnable processes.
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        names = gather_videos(args.videos, args.copies, folder)
        runs = {
            "1 worker, 1 decoding process": (1, 1),
            "1 worker, 2 decoding processes": (1, 2),
            "2 shard workers, 1 decoding process each": (2, 1),
        }
        results: dict[str, dict] = {}
        for turn, (name, (count, decoders)) in itertools.product(range(args.repeats), runs.items()):
            output = folder / f"output-{turn}-{count}-{decoders}"
            result = run_workers(folder / "input", output, count, decoders) | {"output": output}
            print(name, {k: v for k, v in result.items() if k != "output"}, flush=True)
            if name not in results or result["wall"] < results[name]["wall"]:
                result, results[name] = results.get(name), result
            if result is not None:  # Only the kept run's output is checked.
                shutil.rmtree(result["output"])
        reference = fingerprint(results["1 worker, 1 decoding process"]["output"])
        for name, result in results.items():
            if fingerprint(result["output"]) != reference:
                sys.exit(f"{name} wrote other clips than one worker")
    load.append(os.getloadavg()[0])

    baseline = results["1 worker, 1 decoding process"]
    rows = [
        "| workers | wall s | clips/s | CPU s | clips per CPU s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['wall']:.1f} | {r['clips'] / r['wall']:.2f} | {r['cpu']:.1f} | "
            f"{r['clips'] / r['cpu']:.2f} | {baseline['wall'] / r['wall']:.2f}x |"
        )
    sharded = results["2 shard workers, 1 decoding process each"]
    body = (
        f"Machine: {machine_description()}; a CPU shared with other work while this ran (load "
        f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end), so wall times carry its load"
        + (
            ": with the load above the core count, a second worker has no idle core to gain from"
            if load[0] > (os.cpu_count() or 1)  # At the end the load is mostly this run's own.
            else ""
        )
        + ". Input: the "
        "full-length sample videos of Debian's opencv-doc "
        f"({', '.join(names)}), each linked {args.copies} times: {len(names) * args.copies} sources, "
        f"{baseline['clips']} clips and {baseline['skipped']} skipped sources "
        f"({', '.join(baseline['reasons'])}) in every run (`sora-jax prepare --caption-default "
        f'"{CAPTION}"` with its defaults, among them 8 fps, 4 s clips, 256² pixels and 16 kHz mono '
        "sound). Each run starts from an empty output; CPU s counts every process of the "
        f"run (workers and their decoders); the fastest of {args.repeats} rounds. The two shard workers took "
        f"{' and '.join(map(str, sharded['took']))} sources (by a hash of each path) and wrote a "
        "dataset whose union, read with `open_clips`, holds exactly the clips of the single worker "
        "(ids, records, pixels, sound), checked by this run.\n\n"
        + "\n".join(rows)
        + f"\n\nCommand: `python -m benchmarks.prepare_scale --copies {args.copies} --repeats {args.repeats}`"
    )
    print(body)
    if not args.no_write:
        replace_section("prepare_scale", "Prepare at scale", body)


if __name__ == "__main__":
    main()
