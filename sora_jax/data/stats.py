"""What the input pipeline delivers: packing efficiency, clip shapes and speed (``sora-jax data-stats``)."""

from __future__ import annotations

import time

import ml_collections
import numpy as np

from sora_jax.data.pipeline import batch_stream


def pipeline_stats(config: ml_collections.ConfigDict, batches: int = 20) -> dict[str, float]:
    """Pull ``batches`` global batches through the configured pipeline and describe them.

    Returns ``packing_efficiency`` (non-padding token fraction), ``clips_per_row`` (mean),
    ``distinct_shapes`` (distinct clip (frames, height, width) in pixels), ``images`` (fraction of
    one-frame clips) and ``tokens_per_s`` (non-padding tokens a second with ``data.workers``
    workers, timed after the first batch so that worker start-up is not counted).
    """
    stream = batch_stream(config, config.data.batch_size)
    _, ph, pw = config.model.patch_size
    first = next(stream)
    start = time.perf_counter()
    seen = [first] + [next(stream) for _ in range(batches)]
    seconds = time.perf_counter() - start
    tokens = np.array([(b["segment_ids"] > 0).sum() for b in seen])
    frames = np.concatenate([b["clip_frames"].reshape(-1) for b in seen])
    grids = np.concatenate([b["clip_grid"].reshape(-1, 3) for b in seen])
    used = frames > 0
    shapes = {
        (int(f), int(g[1]) * ph, int(g[2]) * pw) for f, g in zip(frames[used], grids[used], strict=True)
    }
    close = getattr(stream, "close", None)
    if close is not None:
        close()
    return {
        "batches": batches,
        "packing_efficiency": float(tokens.sum() / sum(b["segment_ids"].size for b in seen)),
        "clips_per_row": float(used.sum() / sum(b["segment_ids"].shape[0] for b in seen)),
        "distinct_shapes": len(shapes),
        "images": float((frames[used] == 1).mean()),
        "tokens_per_s": float(tokens[1:].sum() / seconds),
        "workers": config.data.workers,
    }
