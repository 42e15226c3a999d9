"""Which stored clips a run trains on: thresholds on their ingest scores, and near-duplicates.

The ``data.*`` keys (defaults select every clip; :data:`THRESHOLDS` lists them):

* ``min_motion`` / ``max_motion`` (-1: no upper limit): the ``motion`` score, mean optical-flow
  speed in frame lengths a second (static clips score under about 0.005);
* ``min_brightness`` / ``max_brightness``: mean luma, 0 (black) to 1 (white);
* ``max_letterbox``: the share of the frame that letterbox bars covered;
* ``dedup_distance`` (-1: off): of each group of clips whose perceptual hashes differ in at most
  this many of their 64 bits, only the first (lowest store position) is kept. Groups are
  connected: if A is near B and B near C, all three are one group. The clips of one static shot
  are near-duplicates too.

Scores are those :mod:`sora_jax.data.clip_filters` measured at ingest. A clip without the score a
key reads (NaN: stored before it was measured, or ``motion`` of an image) is kept, and a log
line says how many were. Thresholds are applied first; deduplication then runs over the clips
they keep, so a group's first clip is its first selected one.

Near-duplicates are found by banded hashing (multi-index hashing): the 64 bits are split into
``m`` bands. Two hashes within ``D`` bits agree within ``D // m`` bits on at least one band
(pigeonhole), so looking up, for each band of each hash, the hashes whose band is that value
with at most ``D // m`` bits flipped finds every pair; each candidate is checked by the popcount
of the XOR. ``m`` is chosen per call to make the fewest comparisons for ``N`` hashes spread
evenly; identical hashes are merged first, so a crowd of equal frames (black ones) costs
nothing. Everything is sorted arrays and ``searchsorted``, so millions of clips take seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from typing import Any

import ml_collections
import numpy as np

log = logging.getLogger("sora_jax")

HASH_BITS = 64
MAX_DEDUP_DISTANCE = 10
_PAIRS_PER_CHUNK = 1 << 22  # Candidate pairs checked at once (memory: ~100 MB of indices).


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A ``data.<key>`` that keeps the clips whose ``score`` is at least (``keeps="above"``) or at
    most (``"below"``) its value; at ``off`` it selects everything."""

    key: str
    score: str
    keeps: str
    off: float

    def removes(self, scores: np.ndarray, value: float) -> np.ndarray:
        """bool ``[N]``: the clips with ``scores`` this key at ``value`` leaves out (never NaN ones)."""
        if value == self.off:
            return np.zeros(len(scores), bool)
        with np.errstate(invalid="ignore"):
            return scores < value if self.keeps == "above" else scores > value


THRESHOLDS = (
    Threshold("min_motion", "motion", "above", 0.0),
    Threshold("max_motion", "motion", "below", -1.0),
    Threshold("min_brightness", "brightness", "above", 0.0),
    Threshold("max_brightness", "brightness", "below", 1.0),
    Threshold("max_letterbox", "letterbox", "below", 1.0),
)


def validate_selection(data: ml_collections.ConfigDict) -> str | None:
    """The first problem with the selection keys of the ``data`` section, as ``"key: problem"``
    (the key without ``data.``), or None when they can run."""
    for name in ("min_motion", "min_brightness", "max_brightness", "max_letterbox"):
        if not math.isfinite(data[name]) or data[name] < 0:
            return f"{name}: must be a number >= 0, got {data[name]}"
    if data.max_motion != -1.0 and not (
        math.isfinite(data.max_motion) and data.max_motion >= data.min_motion
    ):
        return f"max_motion: must be -1 (no limit) or at least data.min_motion, got {data.max_motion}"
    if not data.min_brightness <= data.max_brightness <= 1.0:
        return f"max_brightness: must be from data.min_brightness to 1, got {data.max_brightness}"
    if data.max_letterbox > 1.0:
        return f"max_letterbox: must be at most 1 (the whole frame), got {data.max_letterbox}"
    if not -1 <= data.dedup_distance <= MAX_DEDUP_DISTANCE:
        return (
            f"dedup_distance: must be -1 (off) or 0 .. {MAX_DEDUP_DISTANCE} bits of 64 (near-duplicates "
            f"differ in a few), got {data.dedup_distance}"
        )
    return None


def select_clips(
    store: Any, data: ml_collections.ConfigDict, eligible: np.ndarray | None = None
) -> np.ndarray:
    """The store positions a run trains on: int64, ascending, of the ``eligible`` ones (bool
    ``[N]``, None: all) that the ``data`` section's keys keep (a key the section lacks selects
    everything). Logs what each key removed.

    ``store``: anything with the clip store reader API (``len``, ``scores``, ``phashes``,
    ``path``): columns read once, never a record per clip. Raises ValueError when nothing is
    left, naming the keys that removed clips.
    """
    count = len(store)
    keep = np.ones(count, bool) if eligible is None else np.asarray(eligible, bool).copy()
    removed_by: dict[str, int] = {}
    for threshold in THRESHOLDS:
        value = float(data.get(threshold.key, threshold.off))
        if value == threshold.off:
            continue
        scores = store.scores(threshold.score)
        removed = threshold.removes(scores, value) & keep
        keep &= ~removed
        removed_by[threshold.key] = int(removed.sum())
        log.info(
            "%s: data.%s=%g leaves out %d of %d clips",
            store.path,
            threshold.key,
            value,
            removed_by[threshold.key],
            count,
        )
        missing = int(np.isnan(scores).sum())
        if missing:
            log.info(
                "%s: %d clips have no %s score (stored before it was measured, or images): kept by data.%s",
                store.path,
                missing,
                threshold.score,
                threshold.key,
            )
    distance = int(data.get("dedup_distance", -1))
    if distance >= 0:
        hashes, known = store.phashes()
        candidates = np.flatnonzero(keep & known)
        duplicate = near_duplicates(hashes[candidates], distance)
        keep[candidates[duplicate]] = False
        removed_by["dedup_distance"] = int(duplicate.sum())
        log.info(
            "%s: data.dedup_distance=%d leaves out %d near-duplicates of %d hashed clips%s",
            store.path,
            distance,
            removed_by["dedup_distance"],
            len(candidates),
            f"; {int((~known).sum())} clips have no hash and are kept" if not known.all() else "",
        )
    positions = np.flatnonzero(keep)
    if not len(positions):
        said = ", ".join(f"data.{key} {n}" for key, n in removed_by.items() if n)
        raise ValueError(f"clip store {store.path}: the selection keys leave no clip to train on ({said})")
    return positions


def near_duplicates(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """bool ``[N]``: True for every hash (uint64 ``[N]``) whose group of near-duplicates (hashes
    linked by at most ``max_distance`` differing bits, transitively) holds an earlier one; so
    ``~near_duplicates(...)`` keeps the first of each group."""
    hashes = np.asarray(hashes, np.uint64)
    count = len(hashes)
    if count < 2:
        return np.zeros(count, bool)
    distinct, inverse = np.unique(hashes, return_inverse=True)
    first, second = _close_pairs(distinct, max_distance)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    size = len(distinct)
    graph = coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(size, size))
    _, group_of_distinct = connected_components(graph, directed=False)
    groups = group_of_distinct[inverse.reshape(-1)]
    earliest = np.full(groups.max() + 1, count, np.int64)
    np.minimum.at(earliest, groups, np.arange(count))
    return earliest[groups] != np.arange(count)


def _close_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, of distinct sorted uint64 ``hashes`` at most
    ``max_distance`` bits apart (see the module docstring)."""
    count = len(hashes)
    found_first, found_second = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    if max_distance == 0:  # Distinct hashes are never 0 bits apart.
        return found_first[0], found_second[0]
    bands, radius = _band_plan(count, max_distance)
    start = 0
    for width in bands:
        keys = ((hashes >> np.uint64(start)) & np.uint64((1 << width) - 1)).astype(np.int64)
        start += width
        # Dense tables over the band's 2**width values (at most 2**22: 32 MB each): a lookup is
        # a gather, where searching a sorted array for unsorted queries would be 30 times slower.
        order = np.argsort(keys, kind="stable")
        counts_of = np.bincount(keys, minlength=1 << width)
        starts_of = np.cumsum(counts_of) - counts_of
        for flips in _flips(width, radius):
            queries = keys ^ flips
            counts = counts_of[queries]
            asking = np.flatnonzero(counts)  # Most queries of a sparse band find nothing.
            for first, second in _expand(asking, starts_of[queries[asking]], counts[asking], order):
                close = np.bitwise_count(hashes[first] ^ hashes[second]) <= max_distance
                close &= first < second  # Each pair once (a flip finds it from both ends).
                found_first.append(first[close])
                found_second.append(second[close])
    return np.concatenate(found_first), np.concatenate(found_second)


def _expand(queries: np.ndarray, low: np.ndarray, counts: np.ndarray, order: np.ndarray):
    """Yields ``(query, match)`` index arrays: each ``queries[q]`` paired with every ``order[low[q] :
    low[q] + counts[q]]``, in chunks of about :data:`_PAIRS_PER_CHUNK` pairs."""
    ends = np.cumsum(counts)
    begin = 0
    while begin < len(counts):
        base = ends[begin - 1] if begin else 0
        stop = int(np.searchsorted(ends, base + _PAIRS_PER_CHUNK, "right"))
        stop = max(stop, begin + 1)  # One query's bucket alone may exceed the chunk.
        chunk = counts[begin:stop]
        total = int(chunk.sum())
        offsets = np.arange(total) - np.repeat(np.cumsum(chunk) - chunk, chunk)
        yield np.repeat(queries[begin:stop], chunk), order[np.repeat(low[begin:stop], chunk) + offsets]
        begin = stop


def _band_plan(count: int, max_distance: int) -> tuple[list[int], int]:
    """Band widths (summing to 64, each at most 22 bits) and the flip radius that make the fewest
    lookups and comparisons for ``count`` evenly spread hashes."""
    best = None
    for bands in range(3, HASH_BITS + 1):
        radius = max_distance // bands
        width = -(-HASH_BITS // bands)
        probes = sum(math.comb(width, k) for k in range(radius + 1))
        cost = bands * (2**width + probes * (count + count * count / 2.0**width))
        if best is None or cost < best[0]:
            widths = [HASH_BITS // bands + (i < HASH_BITS % bands) for i in range(bands)]
            best = (cost, widths, radius)
        if radius == 0:  # More bands only add lookups.
            break
    return best[1], best[2]


def _flips(width: int, radius: int):
    """Every int of ``width`` bits with at most ``radius`` bits set, 0 first."""
    for flipped in range(radius + 1):
        for bits in itertools.combinations(range(width), flipped):
            yield sum(1 << bit for bit in bits)


def score_summary(store: Any, data: ml_collections.ConfigDict) -> dict[str, Any]:
    """Each stored score's distribution and what the ``data`` keys would remove, for ``data-stats``.

    ``{"clips": N, "scores": {name: {"count", "missing", "p5", "p25", "p50", "p75", "p95",
    "removed": {key: n}}}, "near_duplicates": {"distance", "hashed", "removed"}}``: ``count``
    clips have the score, ``missing`` do not; ``removed`` counts, per key that reads the score,
    the clips its value in ``data`` leaves out on its own (0 at its default). Near-duplicates are
    counted at ``data.dedup_distance``, or at 4 bits when it is off, over every hashed clip.
    """
    names = sorted(store.score_names())
    summary: dict[str, Any] = {"clips": len(store), "scores": {}}
    for name in names:
        scores = store.scores(name)
        present = scores[~np.isnan(scores)]
        entry: dict[str, Any] = {"count": len(present), "missing": len(scores) - len(present)}
        if len(present):
            for q, value in zip(
                (5, 25, 50, 75, 95), np.percentile(present, (5, 25, 50, 75, 95)), strict=True
            ):
                entry[f"p{q}"] = round(float(value), 5)
        entry["removed"] = {
            t.key: int(t.removes(scores, float(data.get(t.key, t.off))).sum())
            for t in THRESHOLDS
            if t.score == name
        }
        summary["scores"][name] = entry
    distance = int(data.get("dedup_distance", -1))
    distance = distance if distance >= 0 else 4
    hashes, known = store.phashes()
    summary["near_duplicates"] = {
        "distance": distance,
        "hashed": int(known.sum()),
        "removed": int(near_duplicates(hashes[known], distance).sum()),
    }
    return summary
