"""Several local processes as several hosts: launch/local.sh joins them with jax.distributed."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SORA_JAX = str(Path(sys.executable).parent / "sora-jax")
TRAIN = ["train", "--config", "experiments/world_tiny.py:test", "--config.train.steps=3"]


def losses(workdir: Path) -> list[float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, len(lines) + 1)), "one line per step"
    return [line["loss"] for line in lines]


def local_launch(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "SORA_JAX": SORA_JAX}
    env.pop("XLA_FLAGS", None)  # Each process gets its own device count from the launcher.
    return subprocess.Popen(
        [str(ROOT / "launch" / "local.sh"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # One process group: a failed test can stop every process it started.
        **kwargs,
    )


def stop(launched: subprocess.Popen) -> None:
    if launched.poll() is None:
        os.killpg(launched.pid, signal.SIGKILL)
        launched.wait()


@pytest.mark.slow
def test_two_processes_of_two_devices_train_like_one_process_of_four(tmp_path):
    single = subprocess.run(
        [SORA_JAX, *TRAIN, "--workdir", str(tmp_path / "one")],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launched = local_launch(
        "--processes", "2", "--devices-per-process", "2", "--", *TRAIN, "--workdir", str(tmp_path / "two")
    )
    try:
        output, _ = launched.communicate(timeout=600)
    finally:
        stop(launched)
    assert launched.returncode == 0, output[-3000:]
    assert "[process 1]" in output and "2 process(es)" in output
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
    # Process 0 alone writes metrics and samples; the checkpoint holds both processes' input state.
    assert sorted(p.name for p in (tmp_path / "two" / "samples").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "samples").iterdir()
    )
    assert (tmp_path / "two" / "checkpoints" / "3").is_dir()


def signal_process_1_once_training(tmp_path: Path, signum: int, *launcher_args: str) -> tuple[int, str]:
    """Start a long 2-process run in ``tmp_path``; once it has logged two steps, send ``signum`` to
    process 1 alone. Returns the launcher's exit status and everyone's output."""
    launched = local_launch(
        "--processes", "2", *launcher_args, "--",
        "train", "--config", "experiments/world_tiny.py:test", "--config.train.steps=100000",
        "--config.checkpoint.every=0", "--workdir", str(tmp_path),
    )  # fmt: skip
    try:
        metrics = tmp_path / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert launched.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(1)
        process_1 = next(
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if _environ(pid).get("SORA_JAX_PROCESS_ID") == "1"
            and str(tmp_path) in Path(f"/proc/{pid}/cmdline").read_text()
        )
        os.kill(process_1, signum)
        output, _ = launched.communicate(timeout=180)
    finally:
        stop(launched)
    return launched.returncode, output


@pytest.mark.slow
def test_when_one_process_dies_the_others_stop_with_an_error(tmp_path):
    returncode, output = signal_process_1_once_training(tmp_path, signal.SIGKILL, "--heartbeat", "5")
    assert returncode != 0
    assert "process 1 exited with status" in output
    # Process 0 noticed by itself (a failed collective, or the coordination service's heartbeat
    # check, whichever comes first) and said why it stopped.
    process_0 = "\n".join(line for line in output.splitlines() if line.startswith("[process 0]"))
    assert "lost contact with another process" in process_0 or "another task died" in process_0


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.slow
def test_a_preemption_notice_to_one_process_saves_the_same_step_everywhere_and_exits_0(tmp_path):
    # Only process 1 is told; process 0 learns of it through JAX's preemption sync point.
    returncode, output = signal_process_1_once_training(tmp_path, signal.SIGTERM)
    assert returncode == 0, output[-3000:]
    # A progress bar's "\r" reads as a line break here, so a message may sit lines below its prefix.
    pattern = r"\[process (\d)\](?:(?!\[process \d\])[\s\S])*?preemption notice: saving step (\d+)"
    saved = dict(re.findall(pattern, output))
    assert set(saved) == {"0", "1"}, output[-3000:]
    assert len(set(saved.values())) == 1, saved
    step = int(saved["0"])
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [step]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / str(step) / "data").glob("*.json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
