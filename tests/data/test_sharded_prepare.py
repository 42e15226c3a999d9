"""Many ``prepare`` workers, one dataset: concurrent shard workers on real videos write exactly the
clips one worker writes, a killed worker resumes without losing or repeating a clip, the same holds on
a ``gs://`` bucket, and training reads the union of the shards like one store.

The workers are ``sora-jax prepare`` processes started together, as a SLURM array or a Kubernetes
Indexed Job starts them; the videos are the real ones under ``tests/data/videos`` (mpeg4, msmpeg4,
cinepak, H.264; AC-3, MP3 and AAC sound, or none).
"""

import contextlib
import itertools
import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments.world_tiny import get_config
from sora_jax.cli import main
from sora_jax.data.clip_store import AUTOENCODER_KEY, STATS_KEY, ClipStore
from sora_jax.data.pipeline import batch_stream, open_store
from sora_jax.data.prepare import prepare
from sora_jax.data.shards import Shard, ShardedClips, claim_dataset, open_clips, shard_path
from sora_jax.errors import ConfigError

VIDEOS = Path(__file__).parent / "videos"
SOURCES = 7  # The videos there.
# Small clips, so that decoding, not writing, is most of the work: at most 1 s at 4 fps, 64x48.
SETTINGS = {"fps": 4.0, "max_seconds": 1.0, "max_area": 64 * 48}
FLAGS = ["--fps", "4", "--max-seconds", "1", "--max-area", str(64 * 48), "--workers", "1"]


def _start(output: Path | str, index: int, count: int, input: Path = VIDEOS) -> subprocess.Popen:
    """``sora-jax prepare`` as shard ``index`` of ``count``, in its own process."""
    argv = ["prepare", "--input", str(input), "--output", str(output), *FLAGS]
    return subprocess.Popen(
        [sys.executable, "-m", "sora_jax.cli", *argv, "--shard", str(index), "--num-shards", str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _finish(worker: subprocess.Popen) -> str:
    """The worker's output once it has ended well."""
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-3000:]
    return out


def _took(out: str) -> int:
    """How many sources the worker's output says its shard took."""
    return int(re.search(r"shard \d+ of \d+: took (\d+) of \d+ sources", out)[1])


def _clips(path: Path | str) -> dict[str, tuple]:
    """Every clip of the store or dataset at ``path``, by id: its record and its bytes."""
    clips = open_clips(path)
    found = {}
    for position in range(len(clips)):
        record = clips.record(position)
        sound = clips.read_audio(position)
        found[record.clip_id] = (
            record.shape,
            record.fps,
            record.caption,
            record.source,
            record.start,
            record.audio,
            record.scores,
            record.phash,
            clips.read(position).tobytes(),
            None if sound is None else sound.tobytes(),
        )
    assert len(found) == len(clips), "a clip id appears twice"
    return found


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The clips of one worker preparing all the videos."""
    output = tmp_path_factory.mktemp("single") / "store"
    report = prepare(VIDEOS, output, **SETTINGS, workers=0, progress=False)
    assert report.sources_done == SOURCES and not report.failed, report.failed
    assert report.audio == {"sound": 5, "none": 2}
    return _clips(output)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """Two datasets, of 2 and of 3 shards, each written by its workers running at once (all 5
    together): ``{count: (root, [each worker's output])}``."""
    roots = {count: tmp_path_factory.mktemp(f"of{count}") / "dataset" for count in (2, 3)}
    workers = {count: [_start(root, i, count) for i in range(count)] for count, root in roots.items()}
    return {count: (roots[count], [_finish(w) for w in workers[count]]) for count in roots}


@pytest.mark.parametrize("count", [2, 3])
def test_concurrent_shard_workers_write_exactly_the_clips_of_one_worker(single, sharded, count):
    root, outputs = sharded[count]
    assert sum(_took(out) for out in outputs) == SOURCES
    assert sorted(os.listdir(root)) == ["clip_dataset.json"] + [Shard(i, count).name for i in range(count)]
    clips = open_clips(root)
    assert isinstance(clips, ShardedClips) and not clips.missing and len(clips.shards) == count
    assert _clips(root) == single
    for shard, store in clips.shards:  # Each shard holds its own sources' clips, whole.
        assert {store.record(i).source for i in range(len(store))} <= {
            key for key in store.sources_done() if shard.owns(key)
        }
        report = json.loads(store.kvstore.read("prepare_report.json").result().value)
        taken = len(store.sources_done())
        assert report["shard"] == {"index": shard.index, "count": count, "sources": taken, "of": SOURCES}
    positions = [clips.record(i).clip_id for i in range(len(clips))]  # Shard-major.
    assert positions == [store.record(i).clip_id for _, store in clips.shards for i in range(len(store))]
    assert clips.shapes.tolist() == [list(value[0]) for value in map(single.get, positions)]
    again = pickle.loads(pickle.dumps(clips))
    assert again.path == clips.path and np.array_equal(again.read(len(clips) - 1), clips.read(-1))


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_killed_worker_resumes_and_the_union_loses_and_repeats_nothing(single, tmp_path, where):
    with contextlib.ExitStack() as stack:
        if where == "bucket":
            from tests.gcs_emulator import emulated_bucket  # Skips this case without the emulator.

            root = f"{stack.enter_context(emulated_bucket())}/dataset"
        else:
            root = str(tmp_path / "dataset")
        _kill_one_worker_and_resume_it(single, tmp_path, root)


def _kill_one_worker_and_resume_it(single: dict[str, tuple], tmp_path: Path, root: str) -> None:
    """Two shard workers into ``root``; worker 0 is killed with SIGKILL once it has committed a
    source, then run again: the union must be exactly the clips of one worker, at every step
    holding whole sources only."""
    # 6 copies of the videos (links in folders of their own): enough work that a worker is still
    # busy once it has committed its first source.
    copies = [f"copy{n}" for n in range(6)]
    for copy in copies:
        (tmp_path / "videos" / copy).mkdir(parents=True)
        for file in VIDEOS.iterdir():
            if file.suffix != ".md":
                (tmp_path / "videos" / copy / file.name).symlink_to(file)
    expected = {}
    for copy, (clip_id, value) in itertools.product(copies, single.items()):
        expected[f"{copy}/{clip_id}"] = (*value[:3], f"{copy}/{value[3]}", *value[4:])
    victim, other = _start(root, 0, 2, tmp_path / "videos"), _start(root, 1, 2, tmp_path / "videos")
    deadline = time.monotonic() + 120
    while True:  # Until the victim has committed a source.
        try:
            if ClipStore.open(shard_path(root, Shard(0, 2))).sources_done():
                break
        except FileNotFoundError:
            pass
        assert victim.poll() is None, "the worker ended before it committed anything"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert victim.poll() is None, "the worker finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    _finish(other)

    before = _clips(root)
    assert set(before) < set(expected), "the killed worker lost nothing"
    assert all(before[clip_id] == expected[clip_id] for clip_id in before)  # No half-written clip...
    sources = {value[3] for value in before.values()}  # ...nor part of a source.
    assert {i for i in expected if expected[i][3] in sources} == set(before)

    resumed = _finish(_start(root, 0, 2, tmp_path / "videos"))
    assert int(re.search(r"(\d+) already done", resumed)[1]) >= 1
    assert _clips(root) == expected


def test_shard_workers_write_one_dataset_in_a_bucket(single):
    from tests.gcs_emulator import emulated_bucket  # Skips this test without the emulator.

    with emulated_bucket() as bucket:
        root = f"{bucket}/dataset"
        outputs = [_finish(w) for w in [_start(root, i, 2) for i in range(2)]]
        assert sum(_took(out) for out in outputs) == SOURCES
        assert f"report: {root}/shard-00001-of-00002/prepare_report.json" in outputs[1]
        assert _clips(root) == single


def _consolidated(clips: ShardedClips, output: Path) -> str:
    """The clips of ``clips`` copied, in position order, into one store at ``output``."""
    store = ClipStore.create(
        output, audio_sample_rate=clips.audio_sample_rate, audio_channels=clips.audio_channels
    )
    for position in range(len(clips)):
        record = clips.record(position)
        store.append(
            clips.read(position),
            clip_id=record.clip_id,
            fps=record.fps,
            caption=record.caption,
            source=record.source,
            start=record.start,
            audio=clips.read_audio(position),
            scores=record.scores,
            phash=record.phash,
        )
    store.flush()
    return str(output)


def _batches(store: str, rows: int, count: int, **rows_of) -> list[dict[str, np.ndarray]]:
    config = get_config("test")
    config.data.store = store
    return list(itertools.islice(batch_stream(config, rows, **rows_of), count))


def _same(a: list[dict], b: list[dict]) -> bool:
    """Whether two lists of batches are equal, field by field."""
    if len(a) != len(b):
        return False
    return all(
        set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def test_training_reads_a_sharded_dataset_as_one_store_of_its_clips_in_shard_order(sharded, tmp_path):
    root = str(sharded[3][0])
    one = _consolidated(open_clips(root), tmp_path / "one")
    assert _same(_batches(root, 4, 3), _batches(one, 4, 3))
    # A process's rows of each batch are those rows of the whole batch.
    whole, upper = _batches(root, 4, 2), _batches(root, 2, 2, first_row=2, total_rows=4)
    assert _same([{k: b[k][2:] for k in b} for b in whole], upper)
    # A restored iterator continues the exact sequence.
    config = get_config("test")
    config.data.store = root
    stream = batch_stream(config, 4)
    list(itertools.islice(stream, 2))
    state, expected = stream.get_state(), list(itertools.islice(stream, 2))
    resumed = batch_stream(config, 4)
    resumed.set_state(state)
    assert _same(list(itertools.islice(resumed, 2)), expected)


# -- the union reader, on stores made here -------------------------------------------------------


def _latent_shard(root: Path, shard: Shard, clips: int, seed: int, stats: bool = True) -> ClipStore:
    """A latent store of ``clips`` clips ``[2, 4, 4, 4]`` as ``shard`` of ``root``, with latent
    statistics over all its clips (as encode writes them)."""
    store = ClipStore.create(
        shard_path(str(root), shard), dtype="float16", channels=4, extra={AUTOENCODER_KEY: {"name": "vae"}}
    )
    rng = np.random.default_rng(seed)
    for k in range(clips):
        latents = (rng.normal(seed, 1 + seed, (2, 4, 4, 4))).astype(np.float16)
        store.append(latents, clip_id=f"s{seed}/{k}", fps=8.0, caption="c", source=f"s{seed}", start=0.0)
    if stats:
        values = np.concatenate([store.read(i).reshape(-1, 4).astype(np.float64) for i in range(clips)])
        store.extra[STATS_KEY] = {
            "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(),
            "clips": clips,
        }
    store.flush()
    return store


def test_latent_statistics_are_pooled_over_the_shards_by_their_clips(tmp_path):
    claim_dataset(str(tmp_path), 2)
    shards = [_latent_shard(tmp_path, Shard(i, 2), clips, seed=i) for i, clips in enumerate((3, 5))]
    union = open_clips(tmp_path)
    values = np.concatenate(
        [s.read(i).reshape(-1, 4).astype(np.float64) for s in shards for i in range(len(s))]
    )
    stats = union.extra[STATS_KEY]
    np.testing.assert_allclose(stats["mean"], values.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], values.std(0), rtol=1e-9)
    assert stats["clips"] == 8 and union.extra[AUTOENCODER_KEY] == {"name": "vae"}
    assert union.record("s1/4").source == "s1" and union.has("s0/0") and not union.has("s2/0")

    del shards[1].extra[STATS_KEY]  # One shard's encode has not finished: the union has no statistics.
    shards[1].flush()
    assert STATS_KEY not in open_clips(tmp_path).extra


def test_a_shard_not_written_yet_adds_nothing_and_is_named(tmp_path, caplog):
    claim_dataset(str(tmp_path), 3)
    written = _latent_shard(tmp_path, Shard(1, 3), 4, seed=0)
    with caplog.at_level(logging.WARNING):
        union = open_clips(tmp_path)
    assert "shard-00000-of-00003, shard-00002-of-00003" in caplog.text
    assert union.missing == ["shard-00000-of-00003", "shard-00002-of-00003"] and len(union) == 4
    assert np.array_equal(union.read(-1), written.read(3)) and union.sources_done() == set()
    with pytest.raises(IndexError):
        union.read(4)
    with pytest.raises(KeyError, match="s9/0"):
        union.record("s9/0")


def test_shards_of_different_kinds_are_refused_naming_them(tmp_path):
    claim_dataset(str(tmp_path), 2)
    _latent_shard(tmp_path, Shard(0, 2), 1, seed=0)
    ClipStore.create(shard_path(str(tmp_path), Shard(1, 2)))  # Pixels.
    with pytest.raises(ValueError, match="shard-00001-of-00002 holds clips uint8 with C=3, shard-00000"):
        open_clips(tmp_path)
    with pytest.raises(ConfigError, match="config key 'data.store'"):
        open_store(str(tmp_path))


def test_prepare_refuses_a_plain_store_sharded_and_a_sharded_root_unsharded(tmp_path, capsys):
    plain, root = tmp_path / "plain", tmp_path / "root"
    ClipStore.create(plain)
    claim_dataset(str(root), 2)
    listing = {path: sorted(os.listdir(path)) for path in (plain, root)}
    with pytest.raises(ConfigError, match="written by one worker, not a sharded dataset: drop --shard"):
        prepare(VIDEOS, plain, shard=Shard(0, 2), workers=0, progress=False)
    with pytest.raises(
        ConfigError, match="is a dataset of 2 shards, not 3: every worker must pass --num-shards 2"
    ):
        prepare(VIDEOS, root, shard=Shard(0, 3), workers=0, progress=False)
    assert main(["prepare", "--input", str(VIDEOS), "--output", str(root)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"sora-jax prepare: output {str(root)!r} is a dataset of 2 shards: prepare into it with --shard I "
        "--num-shards 2 (one worker a shard), or give a new --output"
    ]
    assert {path: sorted(os.listdir(path)) for path in (plain, root)} == listing  # Nothing written.


def test_a_worker_takes_a_root_another_worker_is_writing_but_not_a_folder_of_other_files(tmp_path):
    claim_dataset(str(tmp_path / "busy"), 2)
    (tmp_path / "busy" / "clip_dataset.json.__lock").touch()  # Held by a worker writing the key.
    report = prepare(VIDEOS, tmp_path / "busy", shard=Shard(1, 2), **SETTINGS, workers=0, progress=False)
    assert report.shard["sources"] == report.sources_done > 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").touch()
    with pytest.raises(ConfigError, match="folder of other files, not a sharded dataset"):
        prepare(VIDEOS, tmp_path / "other", shard=Shard(1, 2), workers=0, progress=False)
