"""Training metrics: JSON lines, TensorBoard scalars and videos, and model FLOPs for MFU.

Only process 0 writes; other processes' writers are silent so that logs are never duplicated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import ml_collections
import numpy as np


class MetricsWriter:
    """Appends ``{"step": N, ...}`` lines to ``DIR/metrics.jsonl`` and TensorBoard event files."""

    def __init__(self, workdir: str | Path, resume_step: int | None = None) -> None:
        """``resume_step``: the step training restarts from. Lines past it, written before a crash
        by steps that are about to run again, are dropped so every step has one line."""
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter  # Imported here: only the writing process needs it.

        self.path = Path(workdir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if (step := _complete_step(line)) is not None and step <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._jsonl = self.path.open("a")
        self._tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float):
                self._tensorboard.add_scalar(name, value, step)

    def write_frames(self, step: int, tag: str, frames: np.ndarray, max_frames: int = 16) -> None:
        """A video's frames (uint8 [T, H, W, 3]) as one image strip, left to right.

        An image rather than a TensorBoard video: video summaries need an extra GIF encoder, and
        the mp4/gif files beside the run already play the clip.
        """
        if self.enabled:
            strip = np.concatenate(list(frames[:max_frames]), axis=1)  # [H, T * W, 3]
            self._tensorboard.add_image(tag, strip, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()


def _complete_step(line: str) -> int | None:
    """The step of a metrics line, or None for a line cut short by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _plain(value: object) -> object:
    value = np.asarray(value)
    return value.item() if value.size == 1 else value.tolist()


def model_flops_per_token(config: ml_collections.ConfigDict, attended_tokens: float) -> float:
    """Training FLOPs (forward + backward = 3x forward) per video token, counted analytically.

    Counts the matmuls of the DiT blocks, patch embedding and final layer (2 FLOPs a
    multiply-add), self-attention scores and weighted sums over ``attended_tokens`` keys (the mean
    clip length: tokens attend within their clip), and cross-attention over one caption. The text
    encoder and per-clip modulation are excluded: per video token they are negligible.
    """
    m, d = config.model, config.data
    dim, hidden = m.dim, int(m.dim * m.mlp_ratio)
    patch_dim = math.prod(m.patch_size) * m.channels
    per_block = (
        2 * 4 * dim * dim  # q, k, v, out projections of self-attention
        + 2 * 2 * attended_tokens * dim  # scores and weighted sum
        + 2 * 2 * dim * dim  # cross-attention q and out (k, v are per caption token)
        + 2 * 2 * d.max_caption_tokens * dim
        + 2 * 2 * dim * hidden  # MLP
    )
    forward = m.depth * per_block + 2 * patch_dim * dim + 2 * dim * patch_dim
    return 3.0 * forward
