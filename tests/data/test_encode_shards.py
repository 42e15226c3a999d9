"""Encoding spread over a host's devices, and sharded over workers that write one latent dataset.

The in-process tests use an untrained micro autoencoder (its latents are as deterministic as a trained
one's); the command-line test reads a tiny trained autoencoder run (vae_world:test) shared by the
tests (tests/conftest.py).
"""

import os
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from sora_jax.autoencoder.config import tiny_config
from sora_jax.autoencoder.model import build_autoencoder
from sora_jax.autoencoder.trained import TrainedAutoencoder
from sora_jax.cli import main
from sora_jax.data.clip_store import STATS_KEY, ClipStore
from sora_jax.data.encode import (
    DataParallelEncoder,
    encode_into_store,
    store_clips,
    world_clip_id,
    world_clips,
)
from sora_jax.data.shards import DATASET_KEY, ENGINES, Shard, claim_dataset, open_clips, shard_of

SHAPES = [(5, 16, 16), (7, 16, 24), (5, 16, 16), (5, 16, 16), (7, 16, 24), (5, 16, 16)]  # Two programs.


@pytest.fixture(scope="module")
def micro() -> TrainedAutoencoder:
    config = tiny_config(channel_multipliers=(1, 2), temporal_downsample=(True,), norm="rms")
    return TrainedAutoencoder(build_autoencoder(config, seed=0), config, "micro", 0)


@pytest.fixture(scope="module")
def pixels(tmp_path_factory) -> ClipStore:
    """A pixel store of clips of two shapes, with scores and perceptual hashes."""
    store = ClipStore.create(tmp_path_factory.mktemp("pixels") / "store")
    rng = np.random.default_rng(0)
    for index, (frames, height, width) in enumerate(SHAPES):
        store.append(
            rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8),
            clip_id=f"video{index}.mp4#0",
            fps=6.0 + index,
            caption=f"clip {index}",
            source=f"video{index}.mp4",
            start=0.0,
            scores={"motion": 0.5 * index},
            phash=f"{index:016x}",
        )
    store.flush()
    return ClipStore.open(store.path)


def _contents(path) -> list[tuple]:
    store = ClipStore.open(path)
    return [
        (r.clip_id, r.shape, r.fps, r.caption, r.scores, r.phash, store.read(i).tobytes())
        for i, r in enumerate(store.records)
    ]


def test_one_device_and_several_devices_write_the_same_store(micro, pixels, tmp_path):
    one = encode_into_store(micro, store_clips(pixels), str(tmp_path / "one"), devices=jax.devices()[:1])
    two = encode_into_store(micro, store_clips(pixels), str(tmp_path / "two"), devices=jax.devices()[:2])
    assert one.clips_written == two.clips_written == len(SHAPES)
    assert len(two.devices) == 2 and sum(two.devices.values()) == len(SHAPES)  # Really spread out.
    assert _contents(tmp_path / "one") == _contents(tmp_path / "two")  # Same order, bit for bit.
    assert ClipStore.open(tmp_path / "one").extra == ClipStore.open(tmp_path / "two").extra
    # The latents are the autoencoder's, and the ingest scores and hashes come along.
    latents = ClipStore.open(tmp_path / "two")
    np.testing.assert_array_equal(latents.read(1), micro.encode(pixels.read(1)).astype(np.float16))
    assert latents.record(3).scores == {"motion": 1.5} and latents.record(3).phash == f"{3:016x}"


def test_one_cpu_device_encodes_in_the_callers_thread(micro, pixels):
    clip = next(store_clips(pixels)).loaded()
    with DataParallelEncoder(micro, jax.devices()[:1]) as encoder:
        encoded = encoder.submit(clip.frames)
        assert encoded.done() and not [t for t in threading.enumerate() if t.name.startswith("encode")]
        np.testing.assert_array_equal(encoded.result(), micro.encode(clip.frames))
        too_small = encoder.submit(clip.frames[:, :1])  # Its error comes with the future, as from a thread.
        with pytest.raises(ValueError):
            too_small.result()
    with DataParallelEncoder(micro, jax.devices()[:2]) as encoder:
        assert encoder.submit(clip.frames).result().shape == encoded.result().shape
        assert len([t for t in threading.enumerate() if t.name.startswith("encode")]) >= 1


def test_a_resumed_encode_on_several_devices_skips_what_is_there(micro, pixels, tmp_path):
    first = [clip for clip in store_clips(pixels) if clip.clip_id in {"video1.mp4#0", "video4.mp4#0"}]
    encode_into_store(micro, iter(first), str(tmp_path / "a"), devices=jax.devices()[:2])
    report = encode_into_store(micro, store_clips(pixels), str(tmp_path / "a"), devices=jax.devices()[:2])
    assert (report.clips_present, report.clips_written) == (2, len(SHAPES) - 2)
    encode_into_store(micro, store_clips(pixels), str(tmp_path / "b"), devices=jax.devices()[:1])
    ids = [record.clip_id for record in ClipStore.open(tmp_path / "a").records]
    assert ids == ["video1.mp4#0", "video4.mp4#0", *(f"video{i}.mp4#0" for i in (0, 2, 3, 5))]
    resumed, whole = ClipStore.open(tmp_path / "a"), ClipStore.open(tmp_path / "b")
    for clip_id in ids:
        np.testing.assert_array_equal(resumed.read(clip_id), whole.read(clip_id))


def test_shards_read_only_the_clips_they_own_and_together_all(pixels):
    ids = [record.clip_id for record in pixels.records]
    owned = []
    for index in range(3):
        shard = Shard(index, 3)
        clips = list(store_clips(pixels, shard.owns))
        assert all(shard_of(clip.clip_id, 3) == index for clip in clips)
        owned += [clip.clip_id for clip in clips]
        world = [clip.clip_id for clip in world_clips(20, 5, (3, 8, 8), (4.0, 8.0), keep=shard.owns)]
        assert world == [world_clip_id(5, i) for i in range(20) if shard.owns(world_clip_id(5, i))]
    assert sorted(owned) == sorted(ids)  # Each clip in exactly one shard.
    # A world clip is the same clip whichever worker renders it.
    [alone] = world_clips(20, 5, (3, 8, 8), (4.0, 8.0), keep=lambda clip_id: clip_id == "world/5/7")
    seventh = list(world_clips(20, 5, (3, 8, 8), (4.0, 8.0)))[7]
    assert (alone.clip_id, alone.fps, alone.caption) == (seventh.clip_id, seventh.fps, seventh.caption)
    np.testing.assert_array_equal(alone.frames, seventh.frames)


def test_a_shard_that_owns_no_clip_is_finished_empty(micro, tmp_path):
    report = encode_into_store(micro, iter([]), str(tmp_path / "shard"), empty_ok=True)
    store = ClipStore.open(tmp_path / "shard")
    assert len(store) == 0 and report.clips_written == 0
    assert store.extra[STATS_KEY] == {"mean": [0.0] * 4, "std": [1.0] * 4, "clips": 0}
    with pytest.raises(ValueError, match="no clip could be encoded"):  # Unsharded, nothing is an error.
        encode_into_store(micro, iter([]), str(tmp_path / "plain"))


@pytest.fixture
def no_engine(monkeypatch):
    """No SLURM array, Indexed Job or TPU VM around: the shard comes from the flags alone."""
    for _, index_var, count_var in ENGINES:
        monkeypatch.delenv(index_var, raising=False)
        if count_var:
            monkeypatch.delenv(count_var, raising=False)


def _refused(capsys, *args) -> str:
    """The one line ``sora-jax encode ARGS`` fails with (exit status 2); with --world 4 unless ARGS
    give an --input."""
    source = [] if "--input" in args else ["--world", "4"]
    code = main(["encode", "--autoencoder", "no/such/run", *source, *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("sora-jax encode: "), err
    return err


def test_mismatched_layouts_are_refused_naming_the_flag_before_anything_is_written(
    no_engine, capsys, tmp_path
):
    plain = tmp_path / "plain"
    ClipStore.create(plain, dtype="float16", channels=8)
    err = _refused(capsys, "--output", str(plain), "--shard", "0", "--num-shards", "2")
    assert f"--output {plain} is an unsharded latent store: leave out --shard and --num-shards" in err
    assert not (plain / DATASET_KEY).exists()

    dataset = tmp_path / "dataset"
    claim_dataset(str(dataset), 2)
    err = _refused(capsys, "--output", str(dataset))
    assert f"--output {dataset} is a dataset of 2 shards: give --shard I --num-shards 2" in err
    err = _refused(capsys, "--output", str(dataset), "--shard", "0", "--num-shards", "3")
    assert f"--num-shards 3: --output {dataset} is a dataset of 2 shards" in err
    assert "--shard 1 needs --num-shards" in _refused(capsys, "--output", str(tmp_path / "x"), "--shard", "1")
    err = _refused(capsys, "--output", str(tmp_path / "x"), "--shard", "2", "--num-shards", "2")
    assert "shard index 2 is not in [0, 2)" in err
    err = _refused(capsys, "--output", str(tmp_path / "y"), "--input", str(tmp_path / "nothing"))
    assert "--input: " in err
    err = _refused(capsys, "--output", str(tmp_path / "y"), "--input", str(plain))
    assert f"--input {plain} holds float16 clips of 8 channels" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dataset", "plain"]  # Nothing else made.


WORLD = ["--world", "8", "--frames", "5", "--height", "16", "--width", "16", "--seed", "3"]


def test_two_concurrent_shard_workers_write_the_union_of_one_unsharded_encode(
    vae_run, no_engine, tmp_path, capsys
):
    """Worker 0 by flags, worker 1 as task 1 of a 2-task SLURM array, beside one unsharded encode
    (``vae_run``: the shared trained run of tests/conftest.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JOB_", "TPU_WORKER"))}
    base = [sys.executable, "-m", "sora_jax.cli", "encode", "--autoencoder", str(vae_run), *WORLD]
    dataset, plain = tmp_path / "dataset", tmp_path / "plain"
    runs = [
        ([*base, "--output", str(dataset), "--shard", "0", "--num-shards", "2"], {}),
        ([*base, "--output", str(dataset)], {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}),
        ([*base, "--output", str(plain)], {}),
    ]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    workers = [subprocess.Popen(argv, env={**env, **extra}, **pipes) for argv, extra in runs]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    owned = [sum(shard_of(world_clip_id(3, i), 2) == s for i in range(8)) for s in (0, 1)]
    assert f"{owned[0]} clips encoded into {dataset}/shard-00000-of-00002;" in outputs[0][0]
    assert f"{owned[1]} clips encoded into {dataset}/shard-00001-of-00002;" in outputs[1][0]

    union, whole = open_clips(dataset), ClipStore.open(plain)
    assert union.count == 2 and not union.missing
    assert sorted(r.clip_id for r in union.records) == sorted(r.clip_id for r in whole.records)
    for record in whole.records:
        assert union.record(record.clip_id).caption == record.caption
        np.testing.assert_array_equal(union.read(record.clip_id), whole.read(record.clip_id))
    pooled, unsharded = union.extra[STATS_KEY], whole.extra[STATS_KEY]
    np.testing.assert_allclose(pooled["mean"], unsharded["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled["std"], unsharded["std"], rtol=1e-5)

    # Each shard resumes on its own (the command in this process, with no array job around).
    shard_0 = ["--output", str(dataset), "--shard", "0", "--num-shards", "2"]
    capsys.readouterr()
    assert main(["encode", "--autoencoder", str(vae_run), *WORLD, *shard_0]) == 0
    again = capsys.readouterr().out
    assert f"0 clips encoded into {dataset}/shard-00000-of-00002; {owned[0]} already there" in again
