"""Where clips come from: the physics-world generator and prepared clip stores.

A source answers two questions about its clip ``index``: which (frames, height, width) shapes it
can deliver (:meth:`shapes`), and the clip at one of them (:meth:`load`). The packer chooses the
shape, so it can pick one that fills what is left of a row. Both are deterministic in their
arguments and the ``rng`` they are given, so a batch depends only on where it sits in the stream.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np
from PIL import Image

from sora_jax.data import world
from sora_jax.data.clip_store import ClipStore


@dataclasses.dataclass(frozen=True)
class ShapeOptions:
    """Shapes a clip can take: any of ``frames`` with any of ``sizes`` (rows of (height, width))."""

    frames: np.ndarray  # int [F], ascending, starting at 1 (the clip as an image)
    sizes: np.ndarray  # int [Z, 2], (height, width) multiples of the patch

    def tokens(self, patch: tuple[int, int, int]) -> np.ndarray:
        """``[F, Z]`` token count of every (frames, size) combination."""
        pt, ph, pw = patch
        per_frame_group = (self.sizes[:, 0] // ph) * (self.sizes[:, 1] // pw)
        return -(-self.frames[:, None] // pt) * per_frame_group[None, :]


@dataclasses.dataclass(frozen=True)
class LoadedClip:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    fps: float
    caption: str


def _patch_multiples(low: int, high: int, step: int) -> np.ndarray:
    return np.arange(-(-low // step) * step, high + 1, step)


class WorldSource:
    """The physics world: unlimited clips rendered at exactly the shape asked for."""

    name = "world"

    def __init__(self, seed: int, data: ml_collections.ConfigDict, patch: tuple[int, int, int]):
        self.seed, self.data = seed, data
        heights = _patch_multiples(data.side[0], data.side[1], patch[1])
        widths = _patch_multiples(data.side[0], data.side[1], patch[2])
        if not len(heights) or not len(widths):
            raise ValueError(f"data.side={data.side} holds no multiple of the patch {patch[1:]}")
        self._sizes = np.stack(np.meshgrid(heights, widths, indexing="ij"), -1).reshape(-1, 2)
        # One frame (an image) is always on offer, whatever the duration range.
        self._frames = np.union1d([1], np.arange(data.frames[0], data.frames[1] + 1))

    def __len__(self) -> int:
        return 2**31 - 1  # Procedural: no end; indices only seed scenes.

    def shapes(self, index: int) -> ShapeOptions:
        return ShapeOptions(self._frames, self._sizes)

    def load(self, index: int, frames: int, height: int, width: int, rng: np.random.Generator) -> LoadedClip:
        fps = float(rng.uniform(*self.data.fps))
        clip = world.make_clip(self.seed, index, frames=frames, height=height, width=width, fps=fps)
        return LoadedClip(clip.frames, fps, clip.caption)


class StoreSource:
    """Clips of a prepared store, each resized (aspect kept) and cropped in time to the shape asked.

    Sizes keep the clip's aspect ratio, with an area between ``data.side[0]**2`` and
    ``data.side[1]**2`` and never above the stored size (no upscaling); durations run from one
    frame (an image) up to the stored length, starting at a random frame.
    """

    name = "store"

    def __init__(self, path: str, data: ml_collections.ConfigDict, patch: tuple[int, int, int]):
        self.store = ClipStore.open(path)
        if self.store.dtype != np.uint8 or self.store.channels != 3:
            raise ValueError(f"{path} holds {self.store.dtype} x{self.store.channels} clips, not pixels")
        self.records = self.store.records
        if not self.records:
            raise ValueError(f"clip store {path} is empty")
        self.data, self.patch = data, patch

    def __len__(self) -> int:
        return len(self.records)

    def shapes(self, index: int) -> ShapeOptions:
        frames, height, width, _ = self.records[index].shape
        _, ph, pw = self.patch
        low, high = self.data.side[0] ** 2, min(self.data.side[1] ** 2, height * width)
        sizes = set()
        for area in np.geomspace(max(min(low, high), ph * pw), high, 12):
            scale = math.sqrt(area / (height * width))
            h, w = int(height * scale) // ph * ph, int(width * scale) // pw * pw
            if h >= ph and w >= pw:
                sizes.add((h, w))
        if not sizes:  # Smaller than one patch after all: the patch itself, upscaled.
            sizes.add((ph, pw))
        longest = min(frames, self.data.frames[1])
        return ShapeOptions(np.arange(1, longest + 1), np.asarray(sorted(sizes)))

    def load(self, index: int, frames: int, height: int, width: int, rng: np.random.Generator) -> LoadedClip:
        record = self.records[index]
        video = self.store.read(index)
        start = int(rng.integers(0, video.shape[0] - frames + 1))
        video = video[start : start + frames]
        if video.shape[1:3] != (height, width):
            video = np.stack(
                [np.asarray(Image.fromarray(f).resize((width, height), Image.BOX)) for f in video]
            )
        return LoadedClip(video, record.fps or 1.0, record.caption)
