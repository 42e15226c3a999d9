"""Training-side clip selection by ingest scores and perceptual hashes, and data-stats' view of them."""

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from sora_jax import cli
from sora_jax.config import base_config, validate
from sora_jax.data.clip_selection import (
    MAX_DEDUP_DISTANCE,
    near_duplicates,
    score_summary,
    select_clips,
)
from sora_jax.data.clip_store import STATS_KEY, ClipStore
from sora_jax.data.shards import Shard, claim_dataset, open_clips, shard_path
from sora_jax.data.sources import LatentStoreSource, StoreSource
from sora_jax.data.stats import score_table
from sora_jax.errors import ConfigError

EXPERIMENT = Path(__file__).parents[2] / "experiments" / "world_tiny.py"

# (motion, brightness, letterbox, phash) of each clip; None: a clip stored before scores existed.
_CLIPS = [
    (0.001, 0.5, 0.0, "0000000000000000"),  # 0 static
    (0.2, 0.05, 0.0, "ffffffffffffffff"),  # 1 dark
    (0.2, 0.5, 0.4, "0f0f0f0f0f0f0f0f"),  # 2 letterboxed
    (0.2, 0.5, 0.0, "0f0f0f0f0f0f0f0e"),  # 3 one bit from 2
    (0.2, 0.5, 0.0, "0f0f0f0f0f0f0f0c"),  # 4 one bit from 3, two from 2
    (0.9, 0.5, 0.0, "123456789abcdef0"),  # 5 fast
    None,  # 6 old: no scores, no hash
    (0.2, 0.95, 0.0, "fedcba9876543210"),  # 7 bright
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ClipStore:
    """Eight 2-frame 16x16 clips whose pixels are their index, scored as ``_CLIPS`` says."""
    path = tmp_path_factory.mktemp("scored") / "store"
    made = ClipStore.create(path, dtype="uint8", channels=3)
    for index, row in enumerate(_CLIPS):
        scores, phash = {}, ""
        if row is not None:
            scores = dict(zip(("motion", "brightness", "letterbox"), row[:3], strict=True))
            phash = row[3]
        frames = np.full((2, 16, 16, 3), index, np.uint8)
        made.append(
            frames, clip_id=f"v{index}.mp4#0", fps=8.0, caption=f"clip {index}", source=f"v{index}.mp4",
            start=0.0, scores=scores, phash=phash,
        )  # fmt: skip
    made.close()
    return ClipStore.open(path)


def _data(**keys):
    data = base_config().data
    for key, value in keys.items():
        data[key] = value
    return data


def test_defaults_select_every_clip(store, caplog):
    with caplog.at_level(logging.INFO, logger="sora_jax"):
        np.testing.assert_array_equal(select_clips(store, _data()), np.arange(8))
    assert not caplog.records


@pytest.mark.parametrize(
    ("keys", "removed"),
    [
        ({"min_motion": 0.01}, [0]),
        ({"max_motion": 0.5}, [5]),
        ({"min_brightness": 0.1}, [1]),
        ({"max_brightness": 0.9}, [7]),
        ({"max_letterbox": 0.3}, [2]),
        ({"dedup_distance": 0}, []),  # Every hash differs from the others.
        ({"dedup_distance": 1}, [3, 4]),  # 2 ~ 3 ~ 4 is one group; 2 comes first.
        ({"dedup_distance": 1, "max_letterbox": 0.3}, [2, 4]),  # Thresholds first: 3 leads.
        ({"min_motion": 0.01, "min_brightness": 0.1, "max_letterbox": 0.3}, [0, 1, 2]),
    ],
)
def test_each_key_leaves_out_its_clips_and_keeps_those_without_a_score(store, keys, removed, caplog):
    with caplog.at_level(logging.INFO, logger="sora_jax"):
        kept = select_clips(store, _data(**keys))
    np.testing.assert_array_equal(kept, [i for i in range(8) if i not in removed])
    said = caplog.text
    for key in keys:
        assert f"data.{key}=" in said
    if "min_motion" in keys:  # Clip 6 has no scores: kept, and said.
        assert "1 clips have no motion score" in said and "leaves out 1 of 8 clips" in said
    if "dedup_distance" in keys:
        assert "1 clips have no hash and are kept" in said


def test_a_selection_that_leaves_nothing_names_its_keys(store):
    eligible = np.zeros(8, bool)
    eligible[[0, 1]] = True
    with pytest.raises(ValueError, match=r"leave no clip.*data.min_motion 1, data.min_brightness 1"):
        select_clips(store, _data(min_motion=0.01, min_brightness=0.1), eligible=eligible)


def test_store_sources_draw_only_the_selected_clips(store, tmp_path):
    source = StoreSource(store, _data(min_motion=0.01, max_letterbox=0.3), (1, 8, 8))
    assert len(source) == 6 and [source.record(i).clip_id for i in (0, 1)] == ["v1.mp4#0", "v3.mp4#0"]
    rng = np.random.default_rng(0)
    assert [int(source.load(i, 1, 8, 8, rng).frames[0, 0, 0, 0]) for i in range(6)] == [1, 3, 4, 5, 6, 7]
    # Latents: the clips too small for a patch and those the keys leave out are both skipped.
    latents = ClipStore.create(
        tmp_path / "latents",
        dtype="float16",
        channels=4,
        extra={STATS_KEY: {"mean": [0.0] * 4, "std": [1.0] * 4}},
    )
    for index, row in enumerate(_CLIPS):
        side = 1 if index in (3, 5) else 4  # 3 and 5 are smaller than a 2x2 patch.
        scores = {} if row is None else {"motion": row[0]}
        latents.append(
            np.full((1, side, side, 4), index, np.float16), clip_id=f"v{index}.mp4#0", fps=8.0,
            caption="x", source=f"v{index}.mp4", start=0.0, scores=scores,
        )  # fmt: skip
    latents.close()
    source = LatentStoreSource(str(tmp_path / "latents"), _data(min_motion=0.01), (1, 2, 2), 4)
    np.testing.assert_array_equal(source.usable, [1, 2, 4, 6, 7])
    assert source.skipped == 2 and len(source) == 5 and source.record(4).clip_id == "v7.mp4#0"


def test_selection_keys_are_validated_by_name_before_anything_runs():
    for key, value, said in (
        ("min_motion", -0.1, "must be a number >= 0"),
        ("max_motion", 0.0005, "-1 (no limit) or at least data.min_motion"),
        ("max_brightness", 1.5, "from data.min_brightness to 1"),
        ("max_letterbox", 2.0, "at most 1"),
        ("dedup_distance", MAX_DEDUP_DISTANCE + 1, "-1 (off) or 0 .. 10"),
        ("dedup_distance", -2, "-1 (off)"),
    ):
        config = base_config()
        config.data.min_motion = 0.001 if key == "max_motion" else 0.0
        config.data[key] = value
        with pytest.raises(ConfigError, match=rf"config key 'data.{key}': .*{re.escape(said)}"):
            validate(config)


def _brute_force(hashes: np.ndarray, distance: int) -> np.ndarray:
    close = np.bitwise_count(hashes[:, None] ^ hashes[None, :]) <= distance
    _, groups = connected_components(close, directed=False)
    first = {}
    return np.asarray([first.setdefault(group, i) != i for i, group in enumerate(groups)])


@pytest.mark.parametrize("distance", [0, 1, 3, 4, 6, 10])
def test_near_duplicates_are_exactly_those_within_the_distance(distance):
    rng = np.random.default_rng(distance)
    hashes = list(rng.integers(0, 2**63, 300, dtype=np.uint64) * np.uint64(2))
    for _ in range(300):  # Copies with 0 .. distance + 2 bits flipped, some just out of reach.
        copy = int(hashes[rng.integers(len(hashes))])
        for bit in rng.choice(64, rng.integers(0, distance + 3), replace=False):
            copy ^= 1 << int(bit)
        hashes.append(np.uint64(copy))
    hashes = np.asarray(hashes, np.uint64)
    rng.shuffle(hashes)
    found = near_duplicates(hashes, distance)
    np.testing.assert_array_equal(found, _brute_force(hashes, distance))
    assert 0 < found.sum() < len(hashes)


def test_a_crowd_of_equal_hashes_is_one_group():
    hashes = np.zeros(200_000, np.uint64)  # Black frames all hash alike: no pairwise blow-up.
    hashes[::1000] = np.random.default_rng(0).integers(0, 2**63, 200, dtype=np.uint64)  # Far apart.
    found = near_duplicates(hashes, 4)
    # Every zero after the first (position 1) is a near-duplicate; the others are not.
    assert not found[::1000].any() and not found[1] and found.sum() == 200_000 - 200 - 1


def test_data_stats_show_each_score_and_what_the_keys_remove(store, capsys):
    summary = score_summary(store, _data(min_motion=0.01, dedup_distance=1))
    assert summary["clips"] == 8 and set(summary["scores"]) == {"motion", "brightness", "letterbox"}
    motion = summary["scores"]["motion"]
    assert (motion["count"], motion["missing"]) == (7, 1)
    assert motion["p50"] == pytest.approx(0.2) and motion["p5"] < motion["p25"] <= motion["p50"]
    assert motion["removed"] == {"min_motion": 1, "max_motion": 0}
    assert summary["near_duplicates"] == {"distance": 1, "hashed": 7, "removed": 2}
    lines = score_table(summary)
    assert lines[0].startswith("8 clips") and any(line.startswith("  motion: 7, 1, ") for line in lines)
    # The command: a table, then the JSON object with the same summary on the last line.
    assert cli.main([
        "data-stats", "--config", f"{EXPERIMENT}:test", "--batches", "1", f"--config.data.store={store.path}",
        "--config.data.min_motion=0.01", "--config.data.dedup_distance=1",
    ]) == 0  # fmt: skip
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("8 clips") and "near-duplicates within 1 bits: 2 of 7" in printed[4]
    assert json.loads(printed[-1])["clip_scores"] == summary


def test_a_compacted_sharded_dataset_is_selected_from_its_columns(store, tmp_path, monkeypatch):
    """The clips of ``store`` split over two compacted shards select the same clips, across the
    shards, without reading a single record."""
    root = str(tmp_path / "dataset")
    claim_dataset(root, 2)
    for index, positions in enumerate((range(0, 3), range(3, 8))):  # 2 ~ 3 ~ 4 spans both.
        shard = ClipStore.create(shard_path(root, Shard(index, 2)))
        for position in positions:
            record = store.record(position)
            shard.append(
                store.read(position), clip_id=record.clip_id, fps=record.fps, caption=record.caption,
                source=record.source, start=record.start, scores=record.scores, phash=record.phash,
            )  # fmt: skip
        shard.compact(min_segments=1)
    dataset = open_clips(root)
    monkeypatch.setattr(ClipStore, "record", lambda *_: pytest.fail("read a record"))
    hashes, known = dataset.phashes()
    assert hashes.dtype == np.uint64 and known.tolist() == [i != 6 for i in range(8)]
    assert hashes[1] == 2**64 - 1 and hashes[4] == 0x0F0F0F0F0F0F0F0C
    keys = _data(min_motion=0.01, dedup_distance=1)
    np.testing.assert_array_equal(select_clips(dataset, keys), [1, 2, 5, 6, 7])
    assert score_summary(dataset, keys)["near_duplicates"] == {"distance": 1, "hashed": 7, "removed": 2}
