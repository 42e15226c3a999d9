"""Joining a multi-process run: an incomplete explicit setup is refused with a clear message."""

import subprocess
from pathlib import Path

import pytest

from sora_jax.config import ConfigError
from sora_jax.parallel import distributed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_cluster_env(monkeypatch):
    for name in (
        distributed.ENV_COORDINATOR,
        distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID,
        "SLURM_NTASKS",
        "TPU_WORKER_HOSTNAMES",
        "MEGASCALE_COORDINATOR_ADDRESS",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "args, complaint",
    [
        ((None, 2, 1), "need --coordinator"),
        (("127.0.0.1:1234", None, 0), "needs --num-processes and --process-id"),
        (("127.0.0.1:1234", 2, 2), "not in [0, 2)"),
    ],
)
def test_incomplete_process_group_is_refused(args, complaint):
    with pytest.raises(ConfigError, match=complaint.replace("[", r"\[").replace(")", r"\)")):
        distributed.initialize(*args)


def test_environment_variables_are_read_and_checked(monkeypatch):
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "127.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ConfigError, match="SORA_JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize()


def test_a_single_process_joins_nothing():
    distributed.initialize()  # no cluster, no coordinator: nothing to join
    distributed.initialize("127.0.0.1:1234", 1, 0)  # a group of one needs no service


def test_cluster_environments_are_recognised(monkeypatch):
    assert not distributed.cluster_detected() or Path("/sys/bus/pci").exists()
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.cluster_detected()


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--processes", "0", "--", "train"], "--processes must be a positive integer"),
        (["--processes", "2"], "no command given"),
        (["--bogus", "--", "train"], "unknown argument '--bogus'"),
    ],
)
def test_local_launcher_refuses_bad_arguments(args, complaint):
    result = subprocess.run([str(ROOT / "launch" / "local.sh"), *args], capture_output=True, text=True)
    assert result.returncode == 2 and complaint in result.stderr


def test_local_launcher_dry_run_gives_each_process_its_identity():
    result = subprocess.run(
        [str(ROOT / "launch" / "local.sh"), "--dry-run", "--processes", "3", "--devices-per-process", "2",
         "--port", "4321", "--", "train", "--config", "x.py"],
        capture_output=True, text=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 3
    for index, line in enumerate(lines):
        assert f"SORA_JAX_PROCESS_ID={index}" in line and "SORA_JAX_NUM_PROCESSES=3" in line
        assert "SORA_JAX_COORDINATOR=127.0.0.1:4321" in line
        assert "--xla_force_host_platform_device_count=2" in line and line.endswith("train --config x.py")
