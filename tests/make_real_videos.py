"""Makes the real test videos under ``tests/data/videos/`` from the sample videos of Debian's opencv-doc.

Each is a stretch of a few seconds of one sample, cut by a stream copy (no re-encoding: the files keep
their original codecs, containers and sound) from a keyframe, with a sidecar ``.txt`` caption, which is
how ``sora-jax prepare`` reads a folder. The samples come from the package, unpacked with::

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocv

    python tests/make_real_videos.py [--ocv /tmp/ocv] [--out tests/data/videos]

Rerun it only to change the set; the tests read the files it made, which are kept in the repository.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import av

DOCS = Path("usr/share/doc/opencv-doc")
# (file made, sample under the package's doc folder, first second wanted, seconds, caption).
PIECES = (
    # Neither Megamind piece starts at 0 s: the sample's first sound chunk starts mid-frame and
    # does not decode, which fails the whole source.
    (
        "megamind_man.avi",
        "examples/data/Megamind.avi",
        4.0,
        1.5,
        "an animated man with glasses and a blue sweater talks across a candlelit dinner table",
    ),
    (
        "megamind_woman.avi",
        "examples/data/Megamind.avi",
        6.0,
        1.5,
        "an animated woman in a purple dress holds a glass of wine at a candlelit restaurant table",
    ),
    (
        "tree.avi",
        "examples/data/tree.avi",
        0.0,
        2.0,
        "a leafy green tree moves in the wind outside a window on an overcast day",
    ),
    (
        "vtest.avi",
        "examples/data/vtest.avi",
        0.0,
        1.2,
        "people walk across a paved square beside a lawn with a lamp post and a tripod",
    ),
    (
        "box.mp4",
        "opencv4/html/box.mp4.gz",
        0.0,
        1.5,
        "a hand holds a decorated yellow box above a table covered with a white cloth",
    ),
    (
        "cup.mp4",
        "opencv4/html/cup.mp4.gz",
        0.0,
        1.2,
        "a hand holds a black travel mug upright in front of a white wall",
    ),
    (
        "cup_later.mp4",
        "opencv4/html/cup.mp4.gz",
        4.4,
        1.2,
        "a hand tilts a black travel mug in front of a white wall",
    ),
)


def first_keyframe(path: Path, after: float) -> float:
    """The decode time (s) of the first video keyframe whose time is at least ``after``."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        for packet in container.demux(video):
            time = packet.dts if packet.dts is not None else packet.pts
            if packet.is_keyframe and packet.size and time is not None and time * video.time_base >= after:
                return float(time * video.time_base)
    raise ValueError(f"{path}: no keyframe after {after} s")


def cut(source: Path, target: Path, start: float, seconds: float) -> None:
    """Copies ``seconds`` of ``source`` from its first keyframe at or after ``start`` into ``target``.

    Video packets are taken in decode order while their decode time is inside the span, so every
    frame taken has its references; sound packets whose time lies inside it. Timestamps are
    shifted so the piece starts at 0.
    """
    begin = first_keyframe(source, start)
    end = begin + seconds
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        copies = {}
        for stream in inp.streams:
            if stream.type in ("video", "audio"):
                copies[stream.index] = out.add_stream_from_template(stream)
        for packet in inp.demux(*[inp.streams[i] for i in copies]):
            if not packet.size or packet.pts is None and packet.dts is None:
                continue
            stream = packet.stream
            base = stream.time_base
            key_time = packet.dts if stream.type == "video" and packet.dts is not None else packet.pts
            if key_time is None or not begin <= key_time * base < end:
                continue
            shift = round(Fraction(begin) / base)
            if packet.pts is not None:
                packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = copies[stream.index]
            out.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ocv", type=Path, default=Path("/tmp/ocv"), help="where opencv-doc was unpacked")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "videos")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name, sample, start, seconds, caption in PIECES:
            source = args.ocv / DOCS / sample
            if source.suffix == ".gz":  # The tutorial videos ship gzipped.
                unpacked = Path(scratch) / source.stem
                if not unpacked.exists():
                    with gzip.open(source) as packed, open(unpacked, "wb") as plain:
                        shutil.copyfileobj(packed, plain)
                source = unpacked
            target = args.out / name
            cut(source, target, start, seconds)
            target.with_suffix(".txt").write_text(caption + "\n")
            print(f"{target}: {target.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
