"""What ``sora-jax prepare`` measures of each clip, in its decoding worker, on the frames it stores.

* Scene cuts (:class:`SceneCuts`): PySceneDetect's ``ContentDetector`` (mean change of hue,
  saturation and value between consecutive frames, a cut where it reaches ``threshold``; 27 is
  PySceneDetect's own default) runs on the frames prepare samples anyway, shrunk to at most
  :data:`DETECT_WIDTH` px wide as PySceneDetect's own downscaling does, so nothing is decoded
  twice. A frame that starts a new shot starts a new clip: no clip spans a cut; a flash or a
  glitch shorter than :data:`MIN_SCENE_SECONDS` between shots is dropped (see
  :mod:`sora_jax.data.clip_shaping`).
  Gradual transitions (fades, dissolves) are not cuts to this detector. Nor is a change between
  two frames both darker than :data:`DARK_LEVEL` on average: hue and saturation of near-black
  pixels are noise (black to a dark grey with a tint of green reads as a jump of 60 in hue).
* Letterbox (:func:`content_box`): rows at the top and bottom (columns at the left and right)
  that are dark (:data:`DARK_LEVEL`) in nearly all their pixels in every sampled frame are
  bars; bars on both opposite sides are needed, so a dark sky alone is never cut away. A frame
  dark all over has no bars (it is dark; ``brightness`` says so). Cropping keeps the clip's
  sides multiples of 8 by trimming the picture evenly (at most 7 more rows or columns).

Scores, kept in :attr:`~sora_jax.data.clip_store.ClipRecord.scores` by these names:

* ``motion``: mean optical-flow speed (OpenCV's Farneback on greyscale frames shrunk to at most
  :data:`FLOW_SIDE` px, over up to :data:`FLOW_PAIRS` pairs of consecutive frames spread over
  the clip), in lengths of the frame's longer side per second: 0.1 means the picture moves a
  tenth of the frame a second. Static clips score near 0. Absent for one-frame clips and images.
* ``brightness``: mean luma (BT.601) of the clip's sampled frames, 0 (black) to 1 (white).
* ``letterbox``: the fraction of the frame's area the bars covered (0: none), measured before
  they were cropped, so it also tells how small the picture was inside its frame.

``phash``: the 64-bit DCT perceptual hash of the clip's middle frame, as 16 hex digits: the
image in grey shrunk to 32 x 32 (Lanczos), the 8 x 8 lowest frequencies of its 2-D DCT-II, one
bit per coefficient above their median, row by row, most significant bit first. That is
ImageHash's ``phash`` bit for bit, written out on scipy here rather than depending on ImageHash,
which would bring PyWavelets for hashes we do not use. Clips whose hashes differ in few bits
look alike (:mod:`sora_jax.data.clip_selection` finds them).

Nothing is dropped for its scores at ingest: training selects clips by them with ``data.*``
keys. The prepare report counts clips under :data:`FLAGS` thresholds, as a first look.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import cv2
import numpy as np
from PIL import Image
from scipy.fft import dct

SCORE_NAMES = ("motion", "brightness", "letterbox")
DEFAULT_SCENE_THRESHOLD = 27.0
MIN_SCENE_SECONDS = 0.5
DETECT_WIDTH = 256  # PySceneDetect shrinks frames to this width before detecting.
DARK_LEVEL = 24  # Of 255: limited-range black (16) decodes to 0; compression noise stays below.
_BAR_BRIGHT_FRACTION = 0.02  # A bar row or column may hold this share of brighter pixels (a logo).
_MEASURED_FRAMES = 8  # Frames a clip's letterbox and brightness are judged on, spread over it.
FLOW_SIDE = 64
FLOW_PAIRS = 4
# Clips the prepare report counts (they are kept): name -> (score, "<" or ">", threshold).
FLAGS = {
    "dark": ("brightness", "<", 0.1),
    "bright": ("brightness", ">", 0.9),
    "static": ("motion", "<", 0.005),
}


class SceneCuts:
    """Tells, frame by frame, whether a frame starts a new shot (see the module docstring).

    Feed every frame of one video in order, as uint8 ``[H, W, 3]`` RGB, to :meth:`starts_scene`.
    """

    def __init__(self, threshold: float = DEFAULT_SCENE_THRESHOLD) -> None:
        # Imported here: scenedetect imports a good deal at import time, and only runs that
        # detect cuts need it.
        from scenedetect.common import FrameTimecode
        from scenedetect.detectors import ContentDetector

        # min_scene_len=0 emits each cut on the frame that starts it (its flash filter would hold
        # cuts back); short scenes are dropped by the caller instead, which sees them whole.
        self._detector = ContentDetector(threshold=threshold, min_scene_len=0)
        self._timecode = FrameTimecode
        self._frames = 0
        self._was_dark = False

    def starts_scene(self, frame: np.ndarray) -> bool:
        """True when ``frame`` begins a shot other than the previous frame's (never the first)."""
        height, width = frame.shape[:2]
        if width > DETECT_WIDTH:
            size = (DETECT_WIDTH, max(1, round(height * DETECT_WIDTH / width)))
            # Linear, as PySceneDetect's own downscaling: area averaging costs 10x more here.
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)  # The detector's frames are BGR.
        # The detector only orders frames by their timecodes: a counter at any rate will do.
        cuts = self._detector.process_frame(self._timecode(self._frames, fps=1.0), bgr)
        self._frames += 1
        dark = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).mean() < DARK_LEVEL
        both_dark, self._was_dark = dark and self._was_dark, dark
        return bool(cuts) and not both_dark


@dataclasses.dataclass(frozen=True)
class MeasuredClip:
    """A clip as it is stored (``frames`` uint8 ``[T, H, W, 3]``, bars cropped when asked) with its
    ``scores`` (see :data:`SCORE_NAMES`), ``phash`` and whether bars were ``cropped``."""

    frames: np.ndarray
    scores: dict[str, float]
    phash: str
    cropped: bool


def measure_clip(frames: np.ndarray, fps: float, crop_letterbox: bool) -> MeasuredClip:
    """Measures one clip (uint8 ``[T, H, W, 3]`` RGB at ``fps`` frames/s, 0 for an image) and
    crops its bars when ``crop_letterbox``; the scores and hash are of the frames returned."""
    height, width = frames.shape[1:3]
    picked = frames[_spread(len(frames), _MEASURED_FRAMES)]
    box = content_box(picked)
    top, bottom, left, right = box or (0, height, 0, width)
    letterbox = 1.0 - (bottom - top) * (right - left) / (height * width)
    cropped = False
    if crop_letterbox and box is not None:
        rows, cols = _multiple_of_8(top, bottom, height), _multiple_of_8(left, right, width)
        if (rows, cols) != ((0, height), (0, width)):
            frames = frames[:, rows[0] : rows[1], cols[0] : cols[1]]
            cropped = True
    scores = {"letterbox": letterbox, "brightness": brightness(frames)}
    speed = motion(frames, fps)
    if speed is not None:
        scores["motion"] = speed
    return MeasuredClip(frames, scores, phash(frames[len(frames) // 2]), cropped)


def content_box(frames: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)``: the picture inside letterbox or pillarbox bars of uint8
    ``[T, H, W, 3]`` frames (rows ``top:bottom``, columns ``left:right``), or None when there
    are no bars (or the frames are dark all over, or what is left is under a quarter of a side)."""
    grey = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])
    bright = grey > DARK_LEVEL
    height, width = grey.shape[1:]
    # A bar is dark in nearly all its pixels in every frame.
    dark_rows = (bright.mean(axis=2) <= _BAR_BRIGHT_FRACTION).all(axis=0)
    dark_cols = (bright.mean(axis=1) <= _BAR_BRIGHT_FRACTION).all(axis=0)
    if dark_rows.all():
        return None
    top, bottom = _bar_sizes(dark_rows)
    left, right = _bar_sizes(dark_cols)
    # Bars come in pairs (top and bottom, left and right); one dark edge is part of the picture.
    top, bottom = (top, bottom) if top and bottom else (0, 0)
    left, right = (left, right) if left and right else (0, 0)
    picture_rows, picture_cols = height - top - bottom, width - left - right
    if not (top or left) or 4 * picture_rows < height or 4 * picture_cols < width:
        return None
    return top, height - bottom, left, width - right


def _bar_sizes(dark: np.ndarray) -> tuple[int, int]:
    """How many leading and trailing entries of a bool vector are True (it is not all True)."""
    return int(np.argmin(dark)), int(np.argmin(dark[::-1]))


def _multiple_of_8(start: int, stop: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` trimmed evenly to a multiple of 8, or ``(0, size)`` if under 8."""
    length = (stop - start) // 8 * 8
    if length < 8:
        return 0, size
    start += (stop - start - length) // 2
    return start, start + length


def _spread(count: int, most: int) -> np.ndarray:
    """Up to ``most`` indices spread evenly over ``range(count)``, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(count, most)).round().astype(np.int64))


def _small_grey(frame: np.ndarray, side: int) -> np.ndarray:
    """``frame`` in greyscale (BT.601 luma), area-shrunk so its longer side is at most ``side``."""
    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    height, width = grey.shape
    scale = side / max(height, width)
    if scale >= 1:
        return grey
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def brightness(frames: np.ndarray) -> float:
    """Mean luma of up to 8 frames spread over ``frames`` (uint8 ``[T, H, W, 3]``), in [0, 1]."""
    picked = frames[_spread(len(frames), _MEASURED_FRAMES)]
    return float(np.mean([_small_grey(f, FLOW_SIDE).mean() for f in picked]) / 255.0)


def motion(frames: np.ndarray, fps: float) -> float | None:
    """Mean optical-flow speed of ``frames`` (uint8 ``[T, H, W, 3]`` at ``fps``) in lengths of the
    frame's longer side per second; None for a single frame or a still (``fps == 0``)."""
    if len(frames) < 2 or not fps > 0:
        return None
    speeds = []
    for first in _spread(len(frames) - 1, FLOW_PAIRS):
        earlier, later = (_small_grey(frames[i], FLOW_SIDE) for i in (first, first + 1))
        flow = cv2.calcOpticalFlowFarneback(
            earlier, later, None, pyr_scale=0.5, levels=3, winsize=9, iterations=3, poly_n=5,
            poly_sigma=1.1, flags=0,
        )  # fmt: skip
        speeds.append(np.hypot(flow[..., 0], flow[..., 1]).mean() / max(earlier.shape))
    return float(np.mean(speeds) * fps)


def phash(frame: np.ndarray) -> str:
    """The 64-bit DCT perceptual hash of one uint8 ``[H, W, 3]`` RGB frame, 16 hex digits."""
    grey = Image.fromarray(np.ascontiguousarray(frame)).convert("L")
    pixels = np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    low = dct(dct(pixels, axis=0), axis=1)[:8, :8]
    return np.packbits(low > np.median(low)).tobytes().hex()


def flagged(scores: dict[str, float]) -> list[str]:
    """The names of :data:`FLAGS` whose threshold ``scores`` fall beyond."""
    names = []
    for name, (score, side, threshold) in FLAGS.items():
        value = scores.get(score, math.nan)
        if (value < threshold) if side == "<" else (value > threshold):
            names.append(name)
    return names


def setting_changes(stored: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """The scene-cut and letterbox flags that differ between a store's prepare settings and a
    run's, as ``"stored -> asked"``; a store made before these settings existed holds neither
    key and reads as made with ``--no-scene-cuts --no-letterbox-crop``."""
    changes = []
    held, wanted = stored.get("scene_threshold"), asked["scene_threshold"]
    if held != wanted:
        shown = [f"--scene-threshold {t:g}" if t is not None else "--no-scene-cuts" for t in (held, wanted)]
        changes.append(f"{shown[0]} -> {shown[1]}")
    held, wanted = bool(stored.get("letterbox_crop", False)), asked["letterbox_crop"]
    if held != wanted:
        shown = ["--letterbox-crop" if crop else "--no-letterbox-crop" for crop in (held, wanted)]
        changes.append(f"{shown[0]} -> {shown[1]}")
    return changes
