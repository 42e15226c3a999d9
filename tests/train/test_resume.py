"""A run killed at any instant (SIGKILL, also mid-save) or preempted (SIGTERM) loses nothing."""

import json
import os
import random
import signal
import subprocess
import sys
import time

from sora_jax.cli import main

TINY = "experiments/world_tiny.py:test"
STEPS = 10
ARGS = (
    "--config.optim.warmup_steps=2",
    "--config.checkpoint.every=1",
    "--config.seed=3",
    f"--config.train.steps={STEPS}",
    "--config.train.sample_prompts=()",
)


def _command(workdir, *extra) -> list[str]:
    return ["train", "--config", TINY, "--workdir", str(workdir), *ARGS, *extra]


def _start(workdir, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "sora_jax.cli", *_command(workdir, *extra)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _losses(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], line["loss"]) for line in lines]


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for_step(process, workdir, step, timeout=300):
    deadline = time.monotonic() + timeout
    while _logged_steps(workdir) < step:
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_runs_killed_at_random_points_reproduce_the_uninterrupted_losses(tmp_path):
    # Runs that are not signalled run here, in this process (the same command and compiled step);
    # the uninterrupted one also saves nothing before its end, so saves cannot sway the losses.
    reference = tmp_path / "reference"
    assert main(_command(reference, "--config.checkpoint.every=0")) == 0

    workdir = tmp_path / "killed"
    rng = random.Random(0)
    for kill_after in sorted(rng.sample(range(2, STEPS - 1), 3)):
        process = _start(workdir)
        _wait_for_step(process, workdir, kill_after)
        time.sleep(rng.uniform(0.0, 0.4))  # Lands anywhere in a step, or in a save.
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert main(_command(workdir)) == 0
    assert _losses(workdir) == _losses(reference)


def test_sigterm_saves_at_the_next_step_and_exits_cleanly(tmp_path):
    workdir = tmp_path / "preempted"
    process = _start(workdir)
    _wait_for_step(process, workdir, 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(300) == 0, process.stderr.read()[-3000:]
    saved = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert 3 <= saved < STEPS and _logged_steps(workdir) == saved
    assert main(_command(workdir)) == 0  # The resumed run, in this process.
    assert [step for step, _ in _losses(workdir)] == list(range(1, STEPS + 1))


def _lines_of(stream, until, timeout=300):
    """Read ``stream`` line by line until a line contains ``until``; return what was read."""
    read, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        read.append(line)
        if until in line:
            return read
    raise AssertionError(f"no line with {until!r} in:\n{''.join(read)[-3000:]}")


def test_ctrl_c_saves_at_the_next_step_and_a_second_one_stops_at_once(tmp_path):
    workdir = tmp_path / "interrupted"
    only_on_interrupt = "--config.checkpoint.every=0"  # So the checkpoint is the interrupt's own.
    process = _start(workdir, only_on_interrupt)
    _wait_for_step(process, workdir, 3)
    process.send_signal(signal.SIGINT)
    assert process.wait(300) == 130, process.stderr.read()[-3000:]
    stderr = process.stderr.read()
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir()]
    assert len(saved) == 1 and 3 <= saved[0] < STEPS and _logged_steps(workdir) == saved[0]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"sora-jax train: interrupted: saved step {saved[0]}; rerun the same command to resume"
    )

    process = _start(workdir, only_on_interrupt)
    _wait_for_step(process, workdir, saved[0] + 1)
    process.send_signal(signal.SIGINT)
    _lines_of(process.stderr, "Ctrl-C again stops at once")
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == -signal.SIGINT
    assert [int(p.name) for p in (workdir / "checkpoints").iterdir()] == saved  # Nothing more saved.
