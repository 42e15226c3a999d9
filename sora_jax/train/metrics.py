"""Training metrics: JSON lines, TensorBoard scalars and videos, and model FLOPs for MFU.

Only process 0 writes; other processes' writers are silent so that logs are never duplicated.

The directory may be local or a URL (``gs://bucket/run``, through ``etils.epath``). An object in a
bucket cannot be appended to, so for a URL the lines are kept in memory and the whole
``metrics.jsonl`` object is rewritten (objects appear whole: a reader never sees half a file), and
TensorBoard writes its event files to a local temporary directory whose files are copied to
``DIR/tensorboard``. Uploads happen at a write once ``upload_seconds`` have passed since the last
one, and at ``close`` (or at exit, when a run ends in an exception); a process killed outright
loses what it had not uploaded yet.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from etils import epath

from sora_jax.data.packing import token_widths

log = logging.getLogger("sora_jax")


class MetricsWriter:
    """Appends ``{"step": N, ...}`` lines to ``DIR/metrics.jsonl`` and TensorBoard event files."""

    def __init__(
        self, workdir: str | os.PathLike, resume_step: int | None = None, upload_seconds: float = 30.0
    ) -> None:
        """``resume_step``: the step training restarts from. Lines past it, written before a crash
        by steps that are about to run again, are dropped so every step has one line.
        ``upload_seconds``: for a URL ``workdir``, the least time between two uploads (0: upload
        at every write); a local directory is written at once."""
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter  # Imported here: only the writing process needs it.

        self.remote = "://" in os.fspath(workdir)
        if not self.remote:
            self.path = Path(workdir) / "metrics.jsonl"
            if resume_step is not None and self.path.exists():
                self.path.write_text("".join(line + "\n" for line in _kept(self.path, resume_step)))
            self._jsonl = self.path.open("a")
            self._tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"))
            return
        # A URL: the object's lines (trimmed on resume) are kept here and rewritten whole.
        workdir = epath.Path(workdir)
        self.path = workdir / "metrics.jsonl"
        self._lines = _kept(self.path, resume_step) if self.path.exists() else []
        if resume_step is not None:
            self.path.write_text("".join(line + "\n" for line in self._lines))
        self.upload_seconds = upload_seconds
        self._next_upload = 0.0  # The first write uploads at once.
        self._remote_tensorboard = workdir / "tensorboard"
        self._local_tensorboard = Path(tempfile.mkdtemp(prefix="sora_jax_tensorboard_"))
        self._uploaded_sizes: dict[str, int] = {}
        # Event files are named by the second and host; a random suffix keeps a later writer's file
        # (a resumed run restarting within the second) from replacing an uploaded one.
        self._tensorboard = SummaryWriter(
            str(self._local_tensorboard), filename_suffix=f".{secrets.token_hex(4)}"
        )
        _OPEN_REMOTE.add(self)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        if self.remote:
            self._lines.append(json.dumps(record))
        else:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float):
                self._tensorboard.add_scalar(name, value, step)
        if self.remote and time.monotonic() >= self._next_upload:
            self.flush()

    def flush(self) -> None:
        """Upload now (a URL workdir); a failure is logged and retried later, never raised."""
        try:
            self.upload()
        except Exception as error:  # noqa: BLE001 - a storage hiccup must not stop training.
            log.warning("upload to %s failed (tried again later): %s", self.path, error)
            self._next_upload = time.monotonic() + self.upload_seconds

    def upload(self) -> None:
        """For a URL: rewrite ``metrics.jsonl`` and copy the TensorBoard event files that grew."""
        if not (self.enabled and self.remote):
            return
        started = time.monotonic()
        self.path.write_text("".join(line + "\n" for line in self._lines))
        self._tensorboard.flush()
        for local in sorted(self._local_tensorboard.iterdir()):
            size = local.stat().st_size
            if self._uploaded_sizes.get(local.name) != size:
                (self._remote_tensorboard / local.name).write_bytes(local.read_bytes())
                self._uploaded_sizes[local.name] = size
        # Each upload rewrites objects that grow with the run: spend at most ~5% of the time on them.
        now = time.monotonic()
        self._next_upload = now + max(self.upload_seconds, 20 * (now - started))

    def write_frames(self, step: int, tag: str, frames: np.ndarray, max_frames: int = 16) -> None:
        """A video's frames (uint8 [T, H, W, 3]) as one image strip, left to right.

        An image rather than a TensorBoard video: video summaries need an extra GIF encoder, and
        the mp4/gif files beside the run already play the clip.
        """
        if self.enabled:
            strip = np.concatenate(list(frames[:max_frames]), axis=1)  # [H, T * W, 3]
            self._tensorboard.add_image(tag, strip, step, dataformats="HWC")

    def close(self) -> None:
        if not self.enabled:
            return
        if not self.remote:
            self._jsonl.close()
            self._tensorboard.close()
            return
        if self not in _OPEN_REMOTE:
            return
        _OPEN_REMOTE.discard(self)
        try:
            self.upload()
        finally:
            self._tensorboard.close()
            shutil.rmtree(self._local_tensorboard, ignore_errors=True)


# URL writers not closed yet (held until then): a run that ends in an exception still uploads what
# it has at exit.
_OPEN_REMOTE: set[MetricsWriter] = set()


def _close_open_writers() -> None:
    for writer in list(_OPEN_REMOTE):
        try:
            writer.close()
        except Exception as error:  # noqa: BLE001 - at exit: report, and go on with the others.
            log.warning("could not upload %s at exit: %s", writer.path, error)


# Threading's exit hooks run before the interpreter stops thread pools, which gcsfs needs (an
# ordinary atexit hook runs after); both run when the main thread ends, also by an exception.
getattr(threading, "_register_atexit", atexit.register)(_close_open_writers)


def _kept(path: Path | epath.Path, resume_step: int | None) -> list[str]:
    """The lines of ``path``, less those past ``resume_step`` and any cut short by a crash."""
    lines = path.read_text().splitlines()
    if resume_step is None:
        return lines
    return [line for line in lines if (step := _complete_step(line)) is not None and step <= resume_step]


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
    """Training FLOPs (forward + backward = 3x forward) per token, counted analytically.

    Counts the matmuls of the DiT blocks, patch embedding and final layer (2 FLOPs a
    multiply-add), self-attention scores and weighted sums over ``attended_tokens`` keys (the mean
    clip length: tokens attend within their clip), and cross-attention over one caption of
    ``data.max_caption_tokens`` tokens (with ``model.text_attention = "joint"``, that caption's
    tokens through their own stream and in the clip's attention instead). The text encoder and
    per-clip modulation are excluded: per token they are negligible.

    With sound an audio token is a token like a video one (the same blocks, attending within its
    clip, whose length ``attended_tokens`` counts both kinds); its embedding and output layer are
    its modality's, counted at the wider of the two token widths.
    """
    m, d = config.model, config.data
    dim, hidden = m.dim, int(m.dim * m.mlp_ratio)
    patch_dim = max(token_widths(config))
    if m.text_attention == "joint":
        # Each stream's token: q, k, v, out projections, scores and weighted sum over the clip's
        # and its caption's tokens, MLP. A clip of attended_tokens tokens has a caption of at most
        # max_caption_tokens; the last block's caption outputs are never read, so of its caption
        # stream only the keys and values that the clip attends to count.
        stream = (
            2 * 4 * dim * dim + 2 * 2 * (attended_tokens + d.max_caption_tokens) * dim + 2 * 2 * dim * hidden
        )
        caption_share = d.max_caption_tokens / max(attended_tokens, 1.0)
        per_block = stream + caption_share * ((m.depth - 1) * stream + 2 * 2 * dim * dim) / m.depth
    else:
        per_block = (
            2 * 4 * dim * dim  # q, k, v, out projections of self-attention
            + 2 * 2 * attended_tokens * dim  # scores and weighted sum
            + 2 * 2 * dim * dim  # cross-attention q and out (k, v are per caption token)
            + 2 * 2 * d.max_caption_tokens * dim
            + 2 * 2 * dim * hidden  # MLP
        )
    forward = m.depth * per_block + 2 * patch_dim * dim + 2 * dim * patch_dim
    return 3.0 * forward
