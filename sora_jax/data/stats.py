"""What the input pipeline delivers (``sora-jax data-stats``), for every kind of run.

The run kind's batch stream is pulled as the trainer pulls it and timed; the kind says what its
batches hold (:meth:`~sora_jax.kinds.base.RunKind.describe_batches`): for the DiT packing
efficiency, clips a row, clip shapes and tokens a second; for the autoencoder clips a second.
"""

from __future__ import annotations

import time

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
