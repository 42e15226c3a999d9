"""What the input pipeline delivers (``sora-jax data-stats``), for every kind of run.

The run kind's batch stream is pulled as the trainer pulls it and timed; the kind says what its
batches hold (:meth:`~sora_jax.kinds.base.RunKind.describe_batches`): for the DiT packing
efficiency, clips a row, clip shapes and tokens a second; for the autoencoder clips a second.

A run that reads a clip store (``data.store``) also gets the distribution of each score its
clips were measured with at ingest, and what the selection keys remove
(:func:`store_score_stats`), so thresholds can be chosen from the data.
"""

from __future__ import annotations

import time
from typing import Any

import ml_collections

from sora_jax.kinds.registry import run_kind


def pipeline_stats(config: ml_collections.ConfigDict, batches: int = 20) -> dict[str, float]:
    """Pull ``batches`` global batches through the configured pipeline and describe them.

    Timing starts after the first batch, so that worker start-up is not counted: the kind describes
    all ``batches + 1`` batches and counts rates over the ``batches`` timed ones. Returns the
    kind's figures (see the module docstring), ``batches`` and ``workers``.
    """
    kind = run_kind(config)
    stream = kind.batches(0, config.data.batch_size)
    first = next(stream)
    start = time.perf_counter()
    seen = [first] + [next(stream) for _ in range(batches)]
    seconds = time.perf_counter() - start
    close = getattr(stream, "close", None)
    if close is not None:
        close()
    return {"batches": batches, **kind.describe_batches(seen, seconds), "workers": config.data.workers}


def store_score_stats(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """The score distributions of ``data.store`` and what ``data.*`` selection keys remove (see
    :func:`sora_jax.data.clip_selection.score_summary`); None for a run without a store."""
    if not config.data.store:
        return None
    from sora_jax.data.clip_selection import score_summary
    from sora_jax.data.shards import open_clips

    try:
        store = open_clips(config.data.store)
    except FileNotFoundError as error:
        raise ValueError(f"data.store: {error}") from None
    return score_summary(store, config.data)


def score_table(summary: dict[str, Any]) -> list[str]:
    """Lines of text showing a :func:`store_score_stats` summary to a person."""
    lines = [f"{summary['clips']} clips; score: count, missing, percentiles 5 25 50 75 95; removed by key"]
    for name, entry in summary["scores"].items():
        spread = " ".join(f"{entry[f'p{q}']:.4g}" for q in (5, 25, 50, 75, 95)) if entry["count"] else "-"
        removed = ", ".join(f"data.{key} {n}" for key, n in entry["removed"].items())
        lines.append(f"  {name}: {entry['count']}, {entry['missing']}, {spread}; {removed}")
    if not summary["scores"]:
        lines.append("  (no scores: the store was prepared before clips were measured)")
    near = summary["near_duplicates"]
    within = f"within {near['distance']} bits"
    lines.append(f"  near-duplicates {within}: {near['removed']} of {near['hashed']} hashed clips")
    return lines
