"""The ``sora-jax`` commands end to end, as a user runs them (separate processes, 8 fake devices).

Each command runs at least once as its own process. Refusals, and runs that only give another run
something to compare with, call the same ``main`` in this process: what it returns is the exit
status and what it prints is the output, and it skips a process's start (Python and JAX imports).
"""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sora_jax.cli import main
from sora_jax.data.video_io import probe_video, read_video, write_video
from tests.cli import sora_jax

TINY = "experiments/world_tiny.py:test"
# A constant learning rate, so a 4-step run continued to 6 matches a 6-step run step for step.
CONSTANT_LR = ("--config.optim.warmup_steps=0", "--config.optim.min_lr_ratio=1.0")


def tiny(workdir, steps: int, *extra: str) -> list[str]:
    """The tiny experiment for ``steps`` steps, seed 5, constant learning rate. Runs of as many steps
    compile the same train step (the schedule and seed are part of it): the compile cache serves it."""
    return ["train", "--config", TINY, "--workdir", str(workdir), f"--config.train.steps={steps}",
            "--config.seed=5", *CONSTANT_LR, *extra]  # fmt: skip


def train_tiny(workdir, steps: int, *extra: str) -> subprocess.CompletedProcess:
    return sora_jax(*tiny(workdir, steps, *extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = train_tiny(workdir, 4)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_train_writes_config_metrics_tensorboard_samples_and_checkpoint(trained):
    workdir, result = trained
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["steps"] == 4 and config["seed"] == 5
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "step_seconds", "tflops_per_s"):
        assert all(np.isfinite(line[key]) for line in lines), key
    # One compiled step for every mix of clip shapes.
    assert lines[-1]["compiles"] == 1 and lines[-1]["distinct_clip_shapes"] >= 10
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints" / "4").is_dir()
    frames, fps = read_video(workdir / "samples" / "step_000004_0.mp4")
    assert frames.shape == (4, 16, 16, 3) and fps == pytest.approx(8.0)
    assert probe_video(workdir / "samples" / "step_000004_0.gif").num_frames == 4
    assert "mesh {'data': 8" in result.stderr  # Data parallel over the 8 fake devices.


def test_the_readme_names_sample_files_as_training_writes_them(trained):
    """README's ``samples/step_NNNNNN_I.mp4``: each N one digit of the step, I the prompt's index."""
    workdir, _ = trained
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    documented = re.search(r"`samples/(step_[A-Z_]+)\.mp4`", readme).group(1)
    pattern = documented.replace("N", r"\d").replace("I", r"\d+")
    names = [path.stem for path in (workdir / "samples").glob("*.mp4")]
    assert names and all(re.fullmatch(pattern, name) for name in names), (documented, names)


def test_train_resumes_from_the_latest_checkpoint(trained, tmp_path):
    workdir, _ = trained
    result = train_tiny(workdir, 6)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting at step 4" in result.stderr
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    # The same losses as a run that was never interrupted: state, data position and noise resume.
    straight = tmp_path / "straight"
    assert main(tiny(straight, 6)) == 0
    reference = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [line["loss"] for line in lines[4:]] == [line["loss"] for line in reference[4:]]


def test_sample_writes_mp4_and_gif_of_the_asked_shape(trained, tmp_path):
    workdir, _ = trained
    out = tmp_path / "clip.mp4"
    result = sora_jax(
        "sample",
        "--workdir",
        str(workdir),
        "--prompt",
        "a small red ball falls",
        "--frames",
        "3",
        "--height",
        "16",
        "--width",
        "24",
        "--out",
        str(out),
        "--steps",
        "3",
        "--guidance",
        "2.0",
        "--sampler",
        "heun",
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    frames, _ = read_video(out)
    assert frames.shape == (3, 16, 24, 3)
    assert read_video(out.with_suffix(".gif"))[0].shape == (3, 16, 24, 3)


def test_bad_config_is_refused_before_compiling(tmp_path, capsys):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path / "x"), "--config.model.heads=5"]) == 2
    assert "config key 'model.dim'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_sample_on_a_directory_that_is_not_a_run_is_clear(tmp_path, capsys):
    out = str(tmp_path / "a.mp4")
    assert main(["sample", "--workdir", str(tmp_path), "--prompt", "x", "--out", out]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_prepare_then_train_from_the_store(tmp_path):
    rng = np.random.default_rng(1)
    videos = tmp_path / "videos"
    videos.mkdir()
    for i, (frames, height, width) in enumerate([(10, 48, 64), (6, 64, 40), (8, 40, 40)]):
        clip = np.clip(rng.normal(128, 50, (frames, height, width, 3)), 0, 255).astype(np.uint8)
        write_video(videos / f"v{i}.mp4", clip, 8.0)
        (videos / f"v{i}.txt").write_text(f"a noisy video {i}")
    (videos / "broken.mp4").write_bytes(b"not a video")
    (videos / "broken.txt").write_text("a caption for a file that does not decode")
    store = tmp_path / "store"
    result = sora_jax("prepare", "--input", str(videos), "--output", str(store), "--workers", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 clips" in result.stdout
    report = json.loads((store / "prepare_report.json").read_text())
    assert report["clips_written"] == 3 and report["failures"] == {"decode_error": 1}

    workdir = tmp_path / "run"  # The data is not part of the train step: the 4-step run's compile serves.
    result = train_tiny(workdir, 4, f"--config.data.store={store}", "--config.data.side=(8,40)")
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["compiles"] == 1 and last["distinct_clip_shapes"] >= 10


def test_data_stats_prints_one_json_object_last():
    result = sora_jax("data-stats", "--config", TINY, "--batches", "3", "--config.data.batch_size=4")
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["packing_efficiency"] > 0.9 and stats["distinct_shapes"] >= 5
    assert stats["clips_per_row"] > 1 and stats["tokens_per_s"] > 0
    assert 0 < stats["full_length_tokens"] < 1
    # Videos only of the longest durations' patches in time: the share of tokens in them grows.
    result = sora_jax(
        "data-stats", "--config", TINY, "--batches", "3", "--config.data.batch_size=4",
        "--config.data.frames=(13,16)",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    longer = json.loads(result.stdout.strip().splitlines()[-1])
    assert longer["full_length_tokens"] > max(stats["full_length_tokens"], 0.5)


def test_evaluate_scores_checkpoints_with_fixed_noise_per_timestep_band(trained, capsys):
    workdir, _ = trained
    result = sora_jax("evaluate", "--workdir", str(workdir), "--all")
    assert result.returncode == 0, result.stderr[-3000:]
    scored = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert scored and all((workdir / "eval" / f"step_{r['step']}.json").exists() for r in scored)
    last = json.loads((workdir / "eval" / f"step_{scored[-1]['step']}.json").read_text())
    bands = [k for k in last if k.startswith("val_loss_t")]
    assert len(bands) == 4 and np.isfinite(last["val_loss"])
    assert (workdir / "eval" / f"step_{last['step']:06d}_0.mp4").exists()
    assert list((workdir / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    # Fixed noise and timesteps: scoring the same checkpoint again gives the same numbers.
    assert main(["evaluate", "--workdir", str(workdir), "--step", str(last["step"])]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == last
    # --follow on a finished run evaluates what is left and stops at the final checkpoint.
    assert main(["evaluate", "--workdir", str(workdir), "--follow", "--poll", "0.1", "--timeout", "120"]) == 0
