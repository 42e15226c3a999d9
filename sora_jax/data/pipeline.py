"""The training input: a stream of packed batches, each a pure function of (seed, step).

Every row is filled clip by clip: the pipeline draws a clip's duration and resolution, and when the
drawn clip does not fit what is left of the row it shortens it (then shrinks it) to fit, so rows end
nearly full whatever the mix of shapes. The physics world renders each clip at exactly the drawn
shape, so no resizing or cropping is needed.

Batch ``step`` holds global rows ``[step * B, (step + 1) * B)``; a process builds only the rows its
devices hold. Because a batch depends on nothing but (seed, step), resuming at step ``k`` continues
the exact sequence, and grain's workers can build batches out of order and in parallel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import grain
import ml_collections
import numpy as np

from sora_jax.data import world
from sora_jax.data.packing import PackedClip, pack_rows
from sora_jax.data.patches import grid_size, patchify
from sora_jax.data.tokenizer import WordTokenizer


def pixels_to_model(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` pixels to float32 in [-1, 1], the scale the model is trained on."""
    return frames.astype(np.float32) / 127.5 - 1.0


def model_to_pixels(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pixels_to_model`, clipping generated values into the uint8 range."""
    return np.clip(np.round((np.asarray(values) + 1.0) * 127.5), 0, 255).astype(np.uint8)


class WorldBatches:
    """Packed batches of physics-world clips; ``batch(step)`` is deterministic in (seed, step)."""

    def __init__(self, config: ml_collections.ConfigDict, row_ids: Sequence[int] | None = None) -> None:
        """``row_ids``: which of the ``data.batch_size`` rows this process builds (default: all)."""
        self.seed = config.seed
        self.data = config.data
        self.patch = tuple(config.model.patch_size)
        self.patch_dim = math.prod(self.patch) * config.model.channels
        self.tokenizer = WordTokenizer(config.model.text_vocab_size)
        self.row_ids = list(range(self.data.batch_size)) if row_ids is None else list(row_ids)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rows = [self._row(step, r) for r in self.row_ids]
        return pack_rows(
            rows,
            seq_len=self.data.seq_len,
            patch_dim=self.patch_dim,
            max_clips=self.data.max_clips_per_row,
            text_len=self.data.text_len,
        )

    def _row(self, step: int, row: int) -> list[PackedClip]:
        d = self.data
        global_row = step * d.batch_size + row
        rng = np.random.default_rng([self.seed, global_row])
        clips: list[PackedClip] = []
        tokens_left, text_left = d.seq_len, d.text_len
        while len(clips) < d.max_clips_per_row and text_left >= 1:
            shape = self._draw_shape(rng, tokens_left)
            if shape is None:
                break
            frames, height, width = shape
            fps = float(rng.uniform(*d.fps))
            clip = world.make_clip(
                self.seed,
                global_row * d.max_clips_per_row + len(clips),
                frames=frames,
                height=height,
                width=width,
                fps=fps,
            )
            caption = "" if rng.random() < d.caption_dropout else clip.caption
            text = self.tokenizer.encode(caption, min(d.max_caption_tokens, text_left))
            patches, positions = patchify(pixels_to_model(clip.frames), self.patch)
            clips.append(
                PackedClip(
                    patches=patches,
                    positions=positions,
                    grid=grid_size(frames, height, width, self.patch),
                    frames=frames,
                    fps=fps,
                    text_tokens=text,
                )
            )
            tokens_left -= len(patches)
            text_left -= len(text)
        return clips

    def _draw_shape(self, rng: np.random.Generator, budget: int) -> tuple[int, int, int] | None:
        """Draw (frames, height, width); shorten, then shrink, a clip that exceeds ``budget`` tokens.

        Returns None when not even the smallest clip fits.
        """
        d, (pt, ph, pw) = self.data, self.patch
        sides = lambda step: np.arange(-(-d.side[0] // step) * step, d.side[1] + 1, step)  # noqa: E731
        heights, widths = sides(ph), sides(pw)
        if len(heights) == 0 or len(widths) == 0:
            return None
        frames = 1 if rng.random() < d.image_fraction else int(rng.integers(d.frames[0], d.frames[1] + 1))
        height, width = int(rng.choice(heights)), int(rng.choice(widths))
        for _ in range(len(heights) + len(widths)):
            per_step = (height // ph) * (width // pw)
            fit = budget // per_step * pt  # Most frames that fit at this size.
            if fit >= d.frames[0] or (fit >= 1 and frames == 1):
                return min(frames, fit), height, width
            # Too large even at its shortest: shrink the longer side one patch and retry.
            if height >= width and height > heights[0]:
                height -= ph
            elif width > widths[0]:
                width -= pw
            else:
                return None
        return None


def batch_stream(
    config: ml_collections.ConfigDict,
    start_step: int,
    row_ids: Sequence[int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches ``start_step, start_step + 1, ...`` up to ``train.steps``, built by grain.

    Batches are built ``data.prefetch`` ahead in a background thread, or with ``data.workers > 0``
    in that many worker processes; the order is the same either way.
    """
    source = WorldBatches(config, row_ids)
    dataset = grain.MapDataset.range(start_step, config.train.steps).map(source.batch)
    # One background thread keeps `prefetch` batches ready while the device computes a step.
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=config.data.prefetch)
    iterable = dataset.to_iter_dataset(read)
    if config.data.workers > 0:
        iterable = iterable.mp_prefetch(
            grain.multiprocessing.MultiprocessingOptions(
                num_workers=config.data.workers, per_worker_buffer_size=config.data.prefetch
            )
        )
    return iter(iterable)
