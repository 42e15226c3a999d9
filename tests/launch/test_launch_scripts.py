"""The launch scripts: the commands they print with --dry-run, their checks, and the remote shell they run.

Nothing here reaches a cloud: gcloud, xpk, srun and the other commands a plan runs are replaced by stubs
that record any call, and every dry run must leave the record empty. The shell the scripts send to the
TPU VMs (start, follow, stop a run) is run here against a stand-in `sora-jax`, in a temporary HOME.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TPU_VM = "launch/tpu_vm.sh"
XPK = "launch/xpk.sh"
SLURM = "launch/slurm.sbatch"
SLURM_DATA = "launch/slurm_data.sbatch"
GKE_DATA = "launch/gke_data.sh"
SLICE = ["--name", "sora-1b", "--zone", "us-east5-a"]
TINY = "experiments/world_tiny.py"
STUBBED = ("gcloud", "xpk", "srun", "git", "tar", "mkdir", "rm", "kubectl", "curl", "sora-jax")

# What each generation's LIBTPU_INIT_ARGS holds (launch/xla_flags.sh), as name=value words.
OVERLAP = {
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
}
V5P_EXTRA = {
    "--xla_tpu_megacore_fusion_allow_ags=false",
    "--xla_enable_async_collective_permute=true",
    "--xla_tpu_enable_ag_backward_pipelining=true",
}
V6E_EXTRA = {"--xla_tpu_scoped_vmem_limit_kib=98304"}
MULTISLICE = {
    "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
    "--xla_tpu_data_parallel_opt_different_sized_ops=true",
}
LIBTPU_FLAGS = {
    "v4": {"--xla_enable_async_all_gather=true"},
    "v5litepod": OVERLAP,
    "v5p": OVERLAP | V5P_EXTRA,
    "v6e": OVERLAP | V6E_EXTRA,
}
# Flags that JAX's docs/xla_flags.md or docs/gpu_performance_tips.md, or MaxText's public TPU recipes,
# use; launch/xla_flags.sh may only hold these.
DOCUMENTED_FLAGS = {flag.split("=")[0] for flag in OVERLAP | V5P_EXTRA | V6E_EXTRA | MULTISLICE} | {
    "--xla_gpu_enable_latency_hiding_scheduler",
}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment whose PATH stubs every command a plan runs; a stub call is recorded."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in STUBBED:
        stub = stubs / name
        stub.write_text('#!/bin/sh\necho "$0 $*" >> "$STUB_CALLS"\nexit 97\n')
        stub.chmod(0o755)
    scontrol = stubs / "scontrol"  # Read-only lookup slurm.sbatch makes: the allocation's hosts.
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu-01\\ngpu-02\\n"\n')
    scontrol.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "STUB_CALLS": str(tmp_path / "stub_calls"),
    }


def launch(env: dict[str, str], script: str, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    command = ["bash", script] if script.endswith(".sbatch") else [script]
    result = subprocess.run(
        [*command, *args], cwd=REPO, env={**env, **extra_env}, capture_output=True, text=True, timeout=60
    )
    assert not Path(env["STUB_CALLS"]).exists(), Path(env["STUB_CALLS"]).read_text()
    return result


def plan(env: dict[str, str], script: str, *args: str, **extra_env: str) -> list[list[str]]:
    """The commands a --dry-run prints, each split back into its arguments as a shell would."""
    result = launch(env, script, *args, **extra_env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(("+ ", "# ")) for line in lines), result.stdout
    return [shlex.split(line[2:]) for line in lines if line.startswith("+ ")]


def option(argv: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def libtpu_flags(remote: str) -> set[str]:
    match = re.search(r'export LIBTPU_INIT_ARGS="([^"]*)"', remote)
    assert match, remote
    return set(match.group(1).split())


def train_argv(remote: str) -> list[str]:
    """The arguments `sora-jax train` gets from a train command's nohup line."""
    words = shlex.split(remote.split("nohup bash -c ", 1)[1])
    return words[2 : words.index(">")]


def assert_bash_syntax(script: str) -> None:
    check = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert check.returncode == 0, (check.stderr, script)


# --- help and argument checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, args, words",
    [
        (
            TPU_VM,
            ["--help"],
            ["create", "setup", "train", "logs", "stop", "delete", "--num-slices", "--spot"],
        ),
        (TPU_VM, ["train", "--help"], ["--workdir", "--libtpu-args", "mesh.dcn_data"]),
        (XPK, ["--help"], ["create", "list", "delete", "--accelerator", "--num-slices", "--docker-image"]),
        (SLURM, ["--help"], ["srun", "SORA_JAX_COORDINATOR", "--workdir"]),
    ],
)
def test_help_documents_the_options(env, script, args, words):
    result = launch(env, script, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:")
    for word in [*words, "--dry-run"]:
        assert word in result.stdout, word


@pytest.mark.parametrize(
    "script, args, message",
    [
        (TPU_VM, ["create", *SLICE, "--accelerator", "v9-64"], "unknown accelerator type 'v9-64'"),
        (TPU_VM, ["create", *SLICE, "--accelerator", "v5e-64"], "v5litepod-64"),
        (TPU_VM, ["create", *SLICE, "--accelerator", "v5p-60"], "multiples of 8"),
        (TPU_VM, ["create", *SLICE, "--accelerator", "v6e-48"], "1, 4, 8, 16"),
        (TPU_VM, ["create", *SLICE, "--accelerator", "tpu"], "not of the form"),
        (TPU_VM, ["create", *SLICE], "--accelerator is required by create"),
        (TPU_VM, ["create", "--zone", "us-east5-a", "--accelerator", "v5p-64"], "--name is required"),
        (TPU_VM, ["create", "--name", "sora-1b", "--accelerator", "v5p-64"], "--zone is required"),
        (TPU_VM, ["create", "--name", "sora-1b", "--zone", "east", "--accelerator", "v5p-64"], "not a zone"),
        (
            TPU_VM,
            ["create", "--name", "Sora_1b", "--zone", "us-east5-a", "--accelerator", "v5p-64"],
            "lowercase",
        ),
        (TPU_VM, ["create", *SLICE, "--accelerator", "v5p-64", "--spot", "--reserved"], "exclude each other"),
        (TPU_VM, ["create", *SLICE, "--accelerator", "v5p-8", "--num-slices", "2"], "multi-host slices only"),
        (TPU_VM, ["create", *SLICE, "--accelerator", "v5p-64", "--num-slices", "0"], "positive integer"),
        (
            TPU_VM,
            ["train", *SLICE, "--accelerator", "v5p-64", "--", "--config", "c.py"],
            "--workdir is required",
        ),
        (
            TPU_VM,
            ["train", *SLICE, "--accelerator", "v5p-64", "--workdir", "/tmp/run", "--", "--config", "c.py"],
            "must be a gs:// path",
        ),
        (
            TPU_VM,
            ["train", *SLICE, "--accelerator", "v5p-64", "--workdir", "gs://b/r", "--", "--config.seed=1"],
            "must include --config",
        ),
        (
            TPU_VM,
            ["train", *SLICE, "--accelerator", "v5p-64", "--workdir", "gs://b/r", "--", "--workdir", "x"],
            "give --workdir before '--'",
        ),
        (TPU_VM, ["logs", *SLICE, "--workdir", "gs://b/r"], "--workdir does not apply to logs"),
        (TPU_VM, ["logs", *SLICE, "--", "--config", "c.py"], "only train, prepare and encode take arguments"),
        (TPU_VM, ["stop", *SLICE, "--grace", "soon"], "--grace must be a number"),
        (TPU_VM, ["logs", *SLICE, "--bogus"], "unknown option '--bogus'"),
        (TPU_VM, ["logs", *SLICE, "--dry-run=yes"], "--dry-run takes no value"),
        (TPU_VM, ["launch", *SLICE], "unknown subcommand 'launch'"),
        (TPU_VM, ["setup", *SLICE, "--repo", "no/such/dir"], "neither a git URL nor a local directory"),
        (XPK, ["list"], "--cluster is required"),
        (XPK, ["delete", "--cluster", "c"], "--workload is required by delete"),
        (
            XPK,
            ["create", "--cluster", "c", "--workload", "w", "--workdir", "gs://b/r"],
            "--accelerator is required",
        ),
        (
            XPK,
            [
                "create",
                "--cluster",
                "c",
                "--workload",
                "w",
                "--accelerator",
                "v6e-64",
                "--workdir",
                "gs://b/r",
                "--docker-image",
                "img",
                "--ref",
                "main",
                "--",
                "--config",
                "c.py",
            ],
            "excludes --base-image, --repo and --ref",
        ),
        (
            SLURM,
            ["--workdir", "/shared/r", "--", "--config", "experiments/sora_1b.py"],
            "no SLURM allocation",
        ),
        (SLURM, ["--workdir", "runs/r", "--", "--config", "c.py"], "absolute path on a shared filesystem"),
    ],
)
def test_bad_arguments_fail_with_a_message_naming_the_problem(env, script, args, message):
    cut = args.index("--") if "--" in args else len(args)
    result = launch(env, script, *args[:cut], "--dry-run", *args[cut:])
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"{Path(script).name}: error: ")
    assert result.stdout == ""


TRAIN_ON = {  # Each launcher's way to start a training run, up to the arguments for `sora-jax train`.
    TPU_VM: ["train", *SLICE, "--accelerator", "v5p-64", "--workdir", "gs://b/r"],
    XPK: ["create", "--cluster", "c", "--workload", "w", "--accelerator", "v6e-64", "--workdir", "gs://b/r"],
    SLURM: ["--workdir", "/shared/r"],
}


@pytest.mark.parametrize("script", [TPU_VM, XPK, SLURM])
@pytest.mark.parametrize(
    "train_args, message",
    [
        (
            ["--config", "experiments/nope.py"],
            f"--config experiments/nope.py: no experiment file experiments/nope.py in {REPO} ",
        ),
        (
            ["--config=experiments/nope.py:smoke"],
            "--config experiments/nope.py:smoke: no experiment file experiments/nope.py in",
        ),
        (["--config.seed=1", "--config"], "--config needs a value"),
        (["--config="], "--config needs a value"),
    ],
)
def test_a_config_that_is_not_in_the_checkout_is_refused_before_anything_runs(
    env, script, train_args, message
):
    """The experiment file is looked for where the run starts (the checkout the hosts run), dry run or not:
    a typo fails here, in one line, rather than on every host of a slice once it is up."""
    for dry_run in (["--dry-run"], []):
        result = launch(env, script, *TRAIN_ON[script], *dry_run, "--", *train_args, **SLURM_ENV)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith(f"{Path(script).name}: error: {message}")
        assert result.stderr.count("\n") == 1
    # The variant part is not a file name; a file that is there passes (here, as far as the dry run goes).
    there = launch(env, script, *TRAIN_ON[script], "--dry-run", "--", "--config", f"{TINY}:test", **SLURM_ENV)
    assert there.returncode == 0, there.stderr


# --- tpu_vm.sh ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accelerator, version",
    [
        ("v5p-64", "v2-alpha-tpuv5"),
        ("v6e-64", "v2-alpha-tpuv6e"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v4-32", "tpu-ubuntu2204-base"),
    ],
)
def test_create_makes_a_slice_with_the_generations_runtime(env, accelerator, version):
    [create] = plan(
        env, TPU_VM, "create", *SLICE, "--accelerator", accelerator, "--project", "p", "--dry-run"
    )
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "sora-1b"]
    assert option(create, "--zone") == "us-east5-a"
    assert option(create, "--project") == "p"
    assert option(create, "--accelerator-type") == accelerator
    assert option(create, "--version") == version


@pytest.mark.parametrize("capacity", ["--spot", "--reserved", "--queued"])
def test_spot_reserved_and_queued_slices_are_queued_resources(env, capacity):
    args = [*SLICE, "--accelerator", "v6e-64", capacity, "--create-arg=--network=my-net", "--dry-run"]
    [create] = plan(env, TPU_VM, "create", *args)
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "sora-1b"]
    assert option(create, "--runtime-version") == "v2-alpha-tpuv6e"
    assert option(create, "--node-id") == "sora-1b"
    assert option(create, "--network") == "my-net"
    assert ({"--spot", "--reserved"} & set(create)) == ({capacity} - {"--queued"})
    [delete] = plan(env, TPU_VM, "delete", *SLICE, capacity, "--yes", "--dry-run")
    assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "sora-1b"]
    assert "--force" in delete and "--quiet" in delete
    [status] = plan(env, TPU_VM, "status", *SLICE, capacity, "--dry-run")
    assert status[3:6] == ["queued-resources", "describe", "sora-1b"]


def test_multislice_create_is_one_queued_resource_of_several_nodes(env):
    args = [*SLICE, "--accelerator", "v5p-256", "--num-slices", "2", "--dry-run"]
    [create] = plan(env, TPU_VM, "create", *args)
    assert create[3:6] == ["queued-resources", "create", "sora-1b"]
    assert option(create, "--node-count") == "2" and option(create, "--node-prefix") == "sora-1b"
    assert not any(arg.startswith("--node-id") for arg in create)


def test_single_slice_status_and_delete_use_the_tpu_vm(env):
    [status] = plan(env, TPU_VM, "status", *SLICE, "--dry-run")
    [delete] = plan(env, TPU_VM, "delete", *SLICE, "--dry-run")
    assert status[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "sora-1b", "--zone=us-east5-a"]
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "sora-1b", "--zone=us-east5-a"]


def test_setup_copies_the_checkout_to_every_worker_and_installs_it(env, tmp_path):
    archive, scp, ssh = plan(env, TPU_VM, "setup", *SLICE, "--ref", "main", "--dry-run")
    assert archive[:4] == ["git", "-C", ".", "archive"] and archive[-1] == "main"
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[5] == option(archive, "--output") and scp[6] == "sora-1b:sora_jax.tar.gz"
    assert option(scp, "--worker") == "all"
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sora-1b"]
    assert option(ssh, "--worker") == "all"
    remote = option(ssh, "--command")
    assert_bash_syntax(remote)
    assert "tar -xzf ~/sora_jax.tar.gz -C ~/sora_jax" in remote
    assert "--python 3.12 ~/sora_jax_venv" in remote
    assert 'cd ~/sora_jax; ~/sora_jax_venv/bin/pip install --quiet -e ".[tpu]"' in remote
    # The archive command itself is right: run it (locally) and find the project in the archive.
    output = tmp_path / "checkout.tar.gz"
    archive = [f"--output={output}" if arg.startswith("--output=") else arg for arg in archive]
    archive[-1] = "HEAD"
    subprocess.run(archive, cwd=REPO, check=True, capture_output=True)
    with tarfile.open(output) as checkout:
        assert {"pyproject.toml", "sora_jax/cli.py"} <= set(checkout.getnames())


def test_setup_clones_a_git_url_on_every_vm_of_every_slice(env):
    url = "https://github.com/example/sora_jax.git"
    args = [*SLICE, "--num-slices", "2", "--repo", url, "--ref", "v0.1", "--python", "3.11", "--dry-run"]
    [ssh] = plan(env, TPU_VM, "setup", *args)
    assert ssh[3:6] == ["queued-resources", "ssh", "sora-1b"]
    assert option(ssh, "--node") == "all" and option(ssh, "--worker") == "all"
    remote = option(ssh, "--command")
    assert_bash_syntax(remote)
    assert f"git clone --quiet {url} ~/sora_jax; git -C ~/sora_jax checkout --quiet v0.1" in remote
    assert "--python 3.11" in remote and '-e ".[tpu]"' in remote


@pytest.mark.parametrize("accelerator", ["v5p-64", "v6e-64"])
def test_train_starts_the_same_run_on_every_worker_with_the_generations_flags(env, accelerator):
    train_args = [
        "--config",
        "experiments/sora_1b.py",
        "--config.train.steps=7",
        "--config.data.side=(32,64)",
    ]
    args = [*SLICE, "--accelerator", accelerator, "--workdir", "gs://my-bucket/runs/sora-1b", "--dry-run"]
    [ssh] = plan(env, TPU_VM, "train", *args, "--", *train_args)
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sora-1b"]
    assert option(ssh, "--worker") == "all" and option(ssh, "--zone") == "us-east5-a"
    remote = option(ssh, "--command")
    assert_bash_syntax(remote)
    assert libtpu_flags(remote) == LIBTPU_FLAGS[accelerator.split("-")[0]]
    assert train_argv(remote) == [*train_args, "--workdir", "gs://my-bucket/runs/sora-1b"]
    assert "nohup bash -c" in remote and "> ~/sora_jax_logs/sora-1b.log 2>&1 < /dev/null &" in remote


def test_multislice_train_adds_dcn_data_parallelism_and_the_dcn_flags(env):
    args = [
        *SLICE,
        "--accelerator",
        "v5p-256",
        "--num-slices",
        "2",
        "--workdir",
        "gs://b/runs/r",
        "--dry-run",
    ]
    [ssh] = plan(env, TPU_VM, "train", *args, "--", "--config", "experiments/sora_8b.py")
    assert ssh[3:6] == ["queued-resources", "ssh", "sora-1b"]
    assert option(ssh, "--node") == "all" and option(ssh, "--worker") == "all"
    remote = option(ssh, "--command")
    assert libtpu_flags(remote) == OVERLAP | V5P_EXTRA | MULTISLICE
    assert train_argv(remote) == [
        *["--config", "experiments/sora_8b.py", "--workdir", "gs://b/runs/r"],
        "--config.mesh.dcn_data=2",
    ]
    # The user's own DCN split is kept as given.
    own = ["--config", "experiments/sora_8b.py", "--config.mesh.dcn_fsdp=2", "--config.mesh.dcn_data=1"]
    [ssh] = plan(env, TPU_VM, "train", *args, "--", *own)
    assert train_argv(option(ssh, "--command")) == [*own, "--workdir", "gs://b/runs/r"]


def test_train_takes_the_users_libtpu_args_and_run_name(env):
    args = [*SLICE, "--accelerator", "v6e-64", "--workdir", "gs://b/r", "--run", "try-2"]
    [ssh] = plan(
        env, TPU_VM, "train", *args, "--libtpu-args", "--xla_foo=1", "--dry-run", "--", "--config", TINY
    )
    remote = option(ssh, "--command")
    assert libtpu_flags(remote) == {"--xla_foo=1"}
    assert "> ~/sora_jax_logs/try-2.log" in remote


def test_logs_streams_worker_0_and_fetches_every_workers_log(env):
    stream, mkdir, collect = plan(env, TPU_VM, "logs", *SLICE, "--lines", "50", "--dry-run")
    assert stream[3:6] == ["tpu-vm", "ssh", "sora-1b"] and option(stream, "--worker") == "0"
    assert "tail -n 50 -F --pid=" in option(stream, "--command")
    assert mkdir == ["mkdir", "-p", "logs/sora-1b"]
    assert option(collect, "--worker") == "all"
    assert option(collect, "--command") == "tail -n 50 ~/sora_jax_logs/sora-1b.log"
    assert option(collect, "--output-directory") == "logs/sora-1b"
    args = [*SLICE, "--num-slices", "2", "--all-workers", "--logs-dir", "out", "--dry-run"]
    result = launch(env, TPU_VM, "logs", *args)
    assert "#" not in result.stdout  # --all-workers: fetched in any case, no condition.
    stream, *rest = [shlex.split(line[2:]) for line in result.stdout.splitlines()]
    assert stream[3:5] == ["queued-resources", "ssh"] and option(stream, "--node") == "0"
    assert [option(c, "--output-directory") for c in rest[1::2]] == ["out/slice-0", "out/slice-1"]
    assert [option(c, "--node") for c in rest[1::2]] == ["0", "1"]


def test_stop_signals_every_worker(env):
    [ssh] = plan(env, TPU_VM, "stop", *SLICE, "--grace", "30", "--dry-run")
    assert option(ssh, "--worker") == "all"
    remote = option(ssh, "--command")
    assert_bash_syntax(remote)
    assert 'kill -TERM "$pid"' in remote and "$(seq 30)" in remote
    [ssh] = plan(env, TPU_VM, "stop", *SLICE, "--force", "--dry-run")
    assert "$(seq 0)" in option(ssh, "--command")


RECORDING_GCLOUD = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["GCLOUD_RECORD"], "a") as record:
    record.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(int(os.environ.get("WORKER0_EXIT", "0")) if "--worker=0" in sys.argv else 0)
"""


def test_without_dry_run_the_printed_commands_are_the_ones_run(env, tmp_path):
    """A gcloud that records its arguments: a run does what --dry-run printed; logs acts on the status."""
    stubs = Path(env["PATH"].split(":")[0])
    (stubs / "gcloud").write_text(RECORDING_GCLOUD)
    (stubs / "mkdir").unlink()  # logs makes its folder for real here.
    record = tmp_path / "gcloud_calls"
    env = {**env, "GCLOUD_RECORD": str(record)}

    def recorded() -> list[list[str]]:
        return [json.loads(line) for line in record.read_text().splitlines()]

    args = ["train", *SLICE, "--accelerator", "v5p-64", "--workdir", "gs://b/r"]
    train_args = ["--", "--config", "experiments/sora_1b.py", "--config.data.side=(32,64)", "--config.x=it's"]
    shown = launch(env, TPU_VM, *args, "--dry-run", *train_args).stdout
    result = launch(env, TPU_VM, *args, *train_args)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == shown
    assert [["gcloud", *argv] for argv in recorded()] == [shlex.split(shown[2:])]

    logs_dir = tmp_path / "logs"
    record.unlink()
    result = launch(env, TPU_VM, "logs", *SLICE, "--logs-dir", str(logs_dir), WORKER0_EXIT="0")
    assert result.returncode == 0 and [option(argv, "--worker") for argv in recorded()] == ["0"]
    assert not logs_dir.exists()  # The run succeeded: nothing to fetch.
    record.unlink()
    result = launch(env, TPU_VM, "logs", *SLICE, "--logs-dir", str(logs_dir), WORKER0_EXIT="3")
    assert result.returncode == 3  # The run's status, after fetching every worker's log.
    assert [option(argv, "--worker") for argv in recorded()] == ["0", "all"]
    assert option(recorded()[1], "--output-directory") == str(logs_dir) and logs_dir.is_dir()
    assert f"lines are in {logs_dir}/" in result.stderr


# --- the shell the TPU VMs run ----------------------------------------------------------------------

FAKE_SORA_JAX = """#!/usr/bin/env bash
echo "args: $*"
echo "LIBTPU_INIT_ARGS=$LIBTPU_INIT_ARGS"
echo "TPU_PROCESS_BOUNDS=${TPU_PROCESS_BOUNDS:-}"
echo "TPU_CHIPS_PER_PROCESS_BOUNDS=${TPU_CHIPS_PER_PROCESS_BOUNDS:-}"
echo "cwd: $PWD"
trap 'echo "SIGTERM: checkpoint saved"; exit 0' TERM
if [ -n "${FAKE_EXIT:-}" ]; then exit "$FAKE_EXIT"; fi
while :; do sleep 0.1; done
"""


@pytest.fixture
def vm(env, tmp_path):
    """A stand-in TPU VM: a HOME with the project and a `sora-jax` that runs until SIGTERM."""
    home = Path(env["HOME"])
    (home / "sora_jax").mkdir()
    binary = home / "sora_jax_venv" / "bin" / "sora-jax"
    binary.parent.mkdir(parents=True)
    binary.write_text(FAKE_SORA_JAX)
    binary.chmod(0o755)
    shell_env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    yield home, shell_env
    pid_file = home / "sora_jax_logs" / "r.pid"
    if pid_file.exists():  # Whatever the test left running, by the pid it started it with.
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def remote_commands(env, *extra: str) -> dict[str, str]:
    slice_args = [*SLICE, "--run", "r"]
    train = plan(
        env,
        TPU_VM,
        "train",
        *slice_args,
        "--accelerator",
        "v6e-64",
        "--workdir",
        "gs://b/r",
        "--dry-run",
        "--",
        "--config",
        "experiments/sora_1b.py",
        *extra,
    )
    stream = plan(env, TPU_VM, "logs", *slice_args, "--all-workers", "--dry-run")
    stop = plan(env, TPU_VM, "stop", *slice_args, "--grace", "20", "--dry-run")
    return {
        "train": option(train[0], "--command"),
        "stream": option(stream[0], "--command"),
        "collect": option(stream[2], "--command"),
        "stop": option(stop[0], "--command"),
    }


def on_vm(shell_env, command: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], env={**shell_env, **extra_env}, capture_output=True, text=True, timeout=60
    )


def wait_for(path: Path, contains: str = "") -> str:
    """The file's text once it exists, is not empty and holds ``contains``."""
    deadline = time.monotonic() + 20
    while not (path.exists() and path.read_text().strip() and contains in path.read_text()):
        assert time.monotonic() < deadline, f"{path} never got {contains!r}"
        time.sleep(0.05)
    return path.read_text().strip()


def test_a_run_starts_detached_refuses_a_second_start_and_stops_on_sigterm(env, vm):
    home, shell_env = vm
    commands = remote_commands(env, "--config.seed=3")
    logs = home / "sora_jax_logs"
    started = on_vm(shell_env, commands["train"])
    assert started.returncode == 0, started.stderr
    pid = int(wait_for(logs / "r.pid"))
    log = wait_for(logs / "r.log", contains="cwd:")
    assert "args: train --config experiments/sora_1b.py --config.seed=3 --workdir gs://b/r" in log
    assert "--xla_tpu_scoped_vmem_limit_kib=98304" in log
    assert f"cwd: {home / 'sora_jax'}" in log

    again = on_vm(shell_env, commands["train"])
    assert again.returncode == 1 and "r is already running" in again.stderr
    assert int((logs / "r.pid").read_text()) == pid

    stopped = on_vm(shell_env, commands["stop"])
    assert stopped.returncode == 0 and "r stopped on" in stopped.stdout
    assert wait_for(logs / "r.exit") == "0"
    assert "SIGTERM: checkpoint saved" in (logs / "r.log").read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    followed = on_vm(shell_env, commands["stream"])  # The run is over: the log, then its status.
    assert followed.returncode == 0 and "SIGTERM: checkpoint saved" in followed.stdout
    assert on_vm(shell_env, commands["stop"]).stdout.startswith("r is not running")
    assert "SIGTERM" in on_vm(shell_env, commands["collect"]).stdout


def test_following_a_failed_run_exits_with_its_status(env, vm):
    home, shell_env = vm
    commands = remote_commands(env)
    assert on_vm(shell_env, commands["train"], FAKE_EXIT="3").returncode == 0
    assert wait_for(home / "sora_jax_logs" / "r.exit") == "3"
    followed = on_vm(shell_env, commands["stream"])
    assert followed.returncode == 3 and "args: train" in followed.stdout
    # A run that never started has no status to report: that counts as a failure too.
    shutil.rmtree(home / "sora_jax_logs")
    assert on_vm(shell_env, commands["stream"]).returncode == 1


# --- xpk.sh ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator", ["v5p-64", "v6e-64"])
def test_xpk_layers_the_checkout_and_runs_the_same_train_command(env, accelerator):
    args = ["--cluster", "my-cluster", "--workload", "sora-1b", "--accelerator", accelerator]
    args += [
        "--workdir",
        "gs://my-bucket/runs/sora-1b",
        "--project",
        "p",
        "--zone",
        "us-east5-a",
        "--dry-run",
    ]
    rm, mkdir, archive, untar, create = plan(
        env, XPK, "create", *args, "--", "--config", "experiments/sora_1b.py"
    )
    stage = "/tmp/sora_jax-sora-1b"
    assert rm == ["rm", "-rf", stage] and mkdir == ["mkdir", "-p", stage]
    assert archive == ["git", "-C", ".", "archive", "--format=tar", f"--output={stage}.tar", "HEAD"]
    assert untar == ["tar", "-xf", f"{stage}.tar", "-C", stage]
    assert create[:3] == ["xpk", "workload", "create"]
    assert option(create, "--cluster") == "my-cluster" and option(create, "--workload") == "sora-1b"
    assert option(create, "--tpu-type") == accelerator and option(create, "--num-slices") == "1"
    assert option(create, "--project") == "p" and option(create, "--zone") == "us-east5-a"
    assert option(create, "--base-docker-image") == "python:3.12" and option(create, "--script-dir") == stage
    command = option(create, "--command")
    assert_bash_syntax(command)
    assert command.startswith('pip install --quiet -e ".[tpu]" && export LIBTPU_INIT_ARGS=')
    assert libtpu_flags(command) == LIBTPU_FLAGS[accelerator.split("-")[0]]
    train = shlex.split(command.split(" && ")[-1])
    assert train == [
        "sora-jax",
        "train",
        "--config",
        "experiments/sora_1b.py",
        "--workdir",
        "gs://my-bucket/runs/sora-1b",
    ]


def test_xpk_multislice_with_an_image_list_and_delete(env):
    args = ["--cluster", "c", "--workload", "sora-8b", "--accelerator", "v5p-256", "--num-slices", "2"]
    args += ["--workdir", "gs://b/r", "--docker-image", "gcr.io/p/sora:1", "--max-restarts", "10"]
    args += ["--priority", "high", "--xpk-arg=--spot", "--dry-run"]
    [create] = plan(env, XPK, "create", *args, "--", "--config", "experiments/sora_8b.py")
    assert option(create, "--num-slices") == "2" and option(create, "--docker-image") == "gcr.io/p/sora:1"
    assert option(create, "--max-restarts") == "10" and option(create, "--priority") == "high"
    assert "--spot" in create and not any(arg.startswith("--script-dir") for arg in create)
    command = option(create, "--command")
    assert libtpu_flags(command) == OVERLAP | V5P_EXTRA | MULTISLICE
    assert shlex.split(command.split(" && ")[-1])[-1] == "--config.mesh.dcn_data=2"
    assert plan(env, XPK, "list", "--cluster", "c", "--dry-run") == [
        ["xpk", "workload", "list", "--cluster=c"]
    ]
    [delete] = plan(env, XPK, "delete", "--cluster", "c", "--workload", "sora-8b", "--dry-run")
    assert delete == ["xpk", "workload", "delete", "--cluster=c", "--workload=sora-8b"]


# --- slurm.sbatch ---------------------------------------------------------------------------------

SLURM_ENV = {  # What sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 sets.
    "SLURM_NTASKS": "16",
    "SLURM_NTASKS_PER_NODE": "8",
    "SLURM_GPUS_PER_NODE": "8",
    "SLURM_JOB_NODELIST": "gpu-[01-02]",
}


def test_slurm_starts_one_process_per_gpu_with_explicit_distributed_env(env, tmp_path):
    args = ["--workdir", "/shared/runs/r", "--dry-run", "--", "--config", "experiments/sora_1b.py"]
    result = launch(env, SLURM, *args, **SLURM_ENV)
    assert result.returncode == 0, result.stderr
    export, srun = [shlex.split(line[2:]) for line in result.stdout.splitlines()]
    assert export == [
        "export",
        "SORA_JAX_COORDINATOR=gpu-01:12355",
        "SORA_JAX_NUM_PROCESSES=16",
        "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
    ]
    assert srun[:5] == ["srun", "--ntasks=16", "--kill-on-bad-exit=1", "bash", "-c"]
    assert srun[6:] == [
        ".venv/bin/sora-jax",
        "--config",
        "experiments/sora_1b.py",
        "--workdir",
        "/shared/runs/r",
    ]
    # What each task runs: its process id from SLURM_PROCID, the arguments untouched.
    echo_args = tmp_path / "echo_args"
    echo_args.write_text('#!/bin/sh\necho "id=$SORA_JAX_PROCESS_ID args=$*"\n')
    echo_args.chmod(0o755)
    task = subprocess.run(
        ["bash", "-c", srun[5], str(echo_args), "--config", "a b.py"],
        env={"PATH": "/usr/bin:/bin", "SLURM_PROCID": "1"},
        capture_output=True,
        text=True,
    )
    assert task.stdout == "id=1 args=train --config a b.py\n"
    # Flags the user already set are kept; the coordinator can be given.
    args = ["--coordinator", "head", "--port", "999", *args]
    result = launch(env, SLURM, *args, **SLURM_ENV, XLA_FLAGS="--xla_mine=1")
    export = shlex.split(result.stdout.splitlines()[0][2:])
    assert export[1] == "SORA_JAX_COORDINATOR=head:999"
    assert export[3] == "XLA_FLAGS=--xla_mine=1 --xla_gpu_enable_latency_hiding_scheduler=true"
    # Fewer tasks than GPUs on a node would leave GPUs idle.
    result = launch(env, SLURM, *args, **{**SLURM_ENV, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1(x2)"})
    assert result.returncode == 2 and "--ntasks-per-node=1 must equal the GPUs per node (8)" in result.stderr


# --- the flags file, the scripts themselves, and the walk-through ----------------------------------


def test_every_flag_is_documented_and_commented():
    lines = (REPO / "launch" / "xla_flags.sh").read_text().splitlines()
    flags = [(i, line.strip()) for i, line in enumerate(lines) if line.strip().startswith("--xla")]
    assert {flag.split("=")[0] for _, flag in flags} == DOCUMENTED_FLAGS
    for i, flag in flags:
        assert lines[i - 1].strip().startswith("# "), f"{flag} has no comment above it"


@pytest.mark.parametrize(
    "script",
    ["tpu_vm.sh", "xpk.sh", "slurm.sbatch", "slurm_data.sbatch", "gke_data.sh", "lib.sh", "xla_flags.sh"],
)
def test_scripts_are_strict_and_lint_clean(script):
    path = REPO / "launch" / script
    text = path.read_text()
    if not script.endswith(("lib.sh", "xla_flags.sh")):  # The sourced files run in their callers' shell.
        assert "set -euo pipefail" in text and os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", str(path)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    lint = subprocess.run(["shellcheck", "-x", f"launch/{script}"], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def doc_examples() -> list[tuple[str, str]]:
    """The walk-through's launch commands, each with the output block that follows it."""
    text = (REPO / "docs" / "pod_run.md").read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, re.S)
    examples = []
    for (lang, body), (next_lang, next_body) in zip(blocks, blocks[1:] + [("", "")], strict=True):
        if lang == "bash" and body.startswith("launch/"):
            assert next_lang == "text", f"no output block after {body!r}"
            examples.append((body.replace("\\\n", " "), next_body))
    return examples


def test_the_walk_through_shows_what_the_scripts_run(env):
    examples = doc_examples()
    commands = [shlex.split(command) for command, _ in examples]
    assert {argv[1] for argv in commands} >= {"create", "status", "setup", "train", "logs", "stop", "delete"}
    assert any("--num-slices" in argv for argv in commands)
    for argv, (command, shown) in zip(commands, examples, strict=True):
        cut = argv.index("--") if "--" in argv else len(argv)
        result = launch(env, argv[0], *argv[1:cut], "--dry-run", *argv[cut:])
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout == shown, f"docs/pod_run.md is out of date for: {command}"


def test_the_walk_through_covers_a_first_run_end_to_end():
    text = (REPO / "docs" / "pod_run.md").read_text()
    for step in [
        'pip install -e ".[tpu]"',
        "sora-jax aot --config experiments/sora_1b.py --topology v5p-64",
        "sora-jax prepare --input my_videos/ --output gs://my-bucket/clips",
        "sora-jax evaluate --workdir gs://my-bucket/runs/sora-1b --follow",
        "launch/xpk.sh create",
        "launch/slurm.sbatch",
    ]:
        assert step in text, step


# --- sharded data: slurm_data.sbatch, gke_data.sh, tpu_vm.sh prepare/encode -------------------------

DATA_ARGS = [
    "--input",
    "/shared/videos",
    "--output",
    "gs://my-bucket/clips",
    "--caption-default",
    "a 'quoted' clip",
]
ENCODE_ARGS = ["--autoencoder", "gs://b/runs/vae", "--input", "gs://b/clips", "--output", "gs://b/latents"]
ARRAY_ENV = {  # What sbatch --array=0-15 sets in task 3.
    "SLURM_ARRAY_TASK_ID": "3",
    "SLURM_ARRAY_TASK_COUNT": "16",
    "SLURM_ARRAY_TASK_MIN": "0",
    "SLURM_ARRAY_TASK_MAX": "15",
}
GKE = ["--job", "prepare-clips", "--image", "gcr.io/p/sora:1", "--shards", "64"]


def worker_shard(argv: list[str], environ: dict[str, str]) -> tuple[str, tuple[int, int] | None]:
    """The sora-jax command a printed worker line runs and the shard it writes, as sora-jax itself
    reads them: its own argument parser on ``argv`` (``sora-jax COMMAND ARGS``), then its engine's
    ``environ``."""
    from sora_jax.cli import _parser
    from sora_jax.data.shards import shard_from_environment

    assert Path(argv[0]).name == "sora-jax", argv
    args = _parser().parse_args(argv[1:])
    shard = shard_from_environment(args.shard, args.num_shards, environ)
    return args.command, None if shard is None else (shard.index, shard.count)


def usage_covers_every_option(script: str, usage: str) -> None:
    """Every option the script's argument loop (and its option tables) accepts is in its --help."""
    text = (REPO / script).read_text()
    loop = text[
        text.index("while [[ $# -gt 0 ]]") : text.index("\ndone\n", text.index("while [[ $# -gt 0 ]]"))
    ]
    tables = re.findall(r"^(?:declare -A OPTIONS=\(.*?^\)|COMMON_OPTIONS=.*?)$", text, re.S | re.M)
    code = "\n".join(line.split(" #")[0] for line in "\n".join([loop, *tables]).splitlines())
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", code)) - {"--option"}
    assert options, script
    for name in sorted(options):
        assert name in usage, f"{script} --help does not document {name}"


@pytest.mark.parametrize("script", [TPU_VM, XPK, SLURM, SLURM_DATA, GKE_DATA])
def test_help_documents_every_option_the_script_takes(env, script):
    result = launch(env, script, "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage:")
    usage_covers_every_option(script, result.stdout)


@pytest.mark.parametrize(
    "script, args, words",
    [
        (
            TPU_VM,
            ["--help"],
            ["prepare", "encode", "agent-worker-number", "TPU_PROCESS_BOUNDS", "NAME-prepare"],
        ),
        (
            SLURM_DATA,
            ["--help"],
            ["--array=0-15", "SLURM_ARRAY_TASK_ID", "--num-shards", "shard-0000I-of-0000N"],
        ),
        (GKE_DATA, ["--help"], ["completionMode: Indexed", "JOB_COMPLETION_INDEX", "backoffLimitPerIndex"]),
    ],
)
def test_data_help_says_how_workers_find_their_shard(env, script, args, words):
    result = launch(env, script, *args)
    assert result.returncode == 0, result.stderr
    for word in words:
        assert word in result.stdout, word


@pytest.mark.parametrize(
    "script, args, extra_env, message",
    [
        (SLURM_DATA, ["prepare", *DATA_ARGS], {}, "not a SLURM array task (SLURM_ARRAY_TASK_ID is unset)"),
        (
            SLURM_DATA,
            ["prepare", *DATA_ARGS],
            {**ARRAY_ENV, "SLURM_ARRAY_TASK_MAX": "30"},
            "is not contiguous",
        ),
        (
            SLURM_DATA,
            ["prepare", *DATA_ARGS],
            {**ARRAY_ENV, "SLURM_ARRAY_TASK_STEP": "2"},
            "is not contiguous",
        ),
        (
            SLURM_DATA,
            ["prepare", "--num-shards", "3", *DATA_ARGS],
            ARRAY_ENV,
            "array task 3 is not a shard of 3: with --num-shards the task ids are shard numbers, 0 to 2",
        ),
        (
            SLURM_DATA,
            ["prepare", "--num-shards", "x", *DATA_ARGS],
            ARRAY_ENV,
            "--num-shards must be a positive",
        ),
        (
            SLURM_DATA,
            ["prepare", *DATA_ARGS, "--shard", "1"],
            ARRAY_ENV,
            "leave --shard out of the 'sora-jax prepare'",
        ),
        (SLURM_DATA, ["encode", *ENCODE_ARGS, "--num-shards=4"], ARRAY_ENV, "leave --num-shards out"),
        (SLURM_DATA, ["prepare", "--input", "v"], ARRAY_ENV, "must include --output"),
        (SLURM_DATA, ["encode", "--output", "gs://b/l"], ARRAY_ENV, "must include --input (or --world)"),
        (
            SLURM_DATA,
            ["prepare", "--input", "v", "--output", "out"],
            ARRAY_ENV,
            "--output 'out' must be an absolute",
        ),
        (
            SLURM_DATA,
            ["prepare", "--input", "v", "--sora-jax", "x"],
            ARRAY_ENV,
            "--sora-jax goes right after",
        ),
        (
            SLURM_DATA,
            ["train", "--config", "c.py"],
            ARRAY_ENV,
            "unknown command 'train'; expected prepare or encode",
        ),
        (GKE_DATA, ["prepare", "--image", "i", "--shards", "4", "--", *DATA_ARGS], {}, "--job is required"),
        (GKE_DATA, ["prepare", "--job", "j", "--shards", "4", "--", *DATA_ARGS], {}, "--image is required"),
        (GKE_DATA, ["prepare", "--job", "j", "--image", "i", "--", *DATA_ARGS], {}, "--shards is required"),
        (
            GKE_DATA,
            ["prepare", *GKE, "--shards", "0", "--", *DATA_ARGS],
            {},
            "--shards must be a positive integer",
        ),
        (
            GKE_DATA,
            ["prepare", "--job", "Prep_1", "--image", "i", "--shards", "2", "--", *DATA_ARGS],
            {},
            "lowercase",
        ),
        (
            GKE_DATA,
            ["prepare", *GKE, "--memory", "lots", "--", *DATA_ARGS],
            {},
            "--memory 'lots' is not a memory",
        ),
        (
            GKE_DATA,
            ["prepare", *GKE, "--gpus", "1", "--tpus", "4", "--", *DATA_ARGS],
            {},
            "exclude each other",
        ),
        (GKE_DATA, ["encode", *GKE, "--tpus", "4", "--", *ENCODE_ARGS], {}, "--tpus needs --node-selector"),
        (GKE_DATA, ["prepare", *GKE, "--mount", "videos", "--", *DATA_ARGS], {}, "is not BUCKET:/PATH"),
        (GKE_DATA, ["prepare", *GKE, "--node-selector", "pool", "--", *DATA_ARGS], {}, "is not KEY=VALUE"),
        (
            GKE_DATA,
            ["prepare", *GKE, "--", "--input", "v", "--output", "/data/c"],
            {},
            "must be a URL every pod",
        ),
        (GKE_DATA, ["prepare", *GKE, "--", *DATA_ARGS, "--shard=2"], {}, "leave --shard out"),
        (GKE_DATA, ["prepare", *GKE], {}, "the arguments for 'sora-jax prepare' go after '--'"),
        (GKE_DATA, ["prepare", *GKE, "--workers", "8"], {}, "unknown option '--workers'"),
        (TPU_VM, ["prepare", *SLICE, "--", *DATA_ARGS], {}, "--accelerator is required by prepare"),
        (
            TPU_VM,
            [
                "encode",
                *SLICE,
                "--accelerator",
                "v5p-64",
                "--",
                "--autoencoder",
                "r",
                "--world",
                "8",
                "--output",
                "/x",
            ],
            {},
            "--output '/x' must be a gs:// path",
        ),
        (
            TPU_VM,
            ["prepare", *SLICE, "--accelerator", "v5p-64", "--", *DATA_ARGS, "--num-shards", "8"],
            {},
            "leave",
        ),
        (
            TPU_VM,
            ["encode", *SLICE, "--accelerator", "v5p-64", "--workdir", "gs://b/r"],
            {},
            "does not apply to encode",
        ),
    ],
)
def test_bad_data_arguments_fail_with_a_message_naming_the_problem(env, script, args, extra_env, message):
    cut = args.index("--") if "--" in args else len(args)
    result = launch(env, script, *args[:1], "--dry-run", *args[1:cut], *args[cut:], **extra_env)
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"{Path(script).name}: error: ")


def test_slurm_array_task_runs_one_shard_worker_and_reruns_chosen_shards(env):
    [worker] = plan(env, SLURM_DATA, "prepare", "--dry-run", *DATA_ARGS, **ARRAY_ENV)
    assert worker == [".venv/bin/sora-jax", "prepare", *DATA_ARGS, "--num-shards", "16"]
    assert worker_shard(worker, ARRAY_ENV) == ("prepare", (3, 16))  # The index from the task's id.
    # An array that does not start at 0 still numbers its shards from 0.
    shifted = {
        **ARRAY_ENV,
        "SLURM_ARRAY_TASK_ID": "12",
        "SLURM_ARRAY_TASK_MIN": "10",
        "SLURM_ARRAY_TASK_MAX": "25",
    }
    [worker] = plan(env, SLURM_DATA, "encode", "--dry-run", "--", *ENCODE_ARGS, **shifted)
    assert worker_shard(worker, shifted) == ("encode", (2, 16))
    # A rerun of shards 3 and 7 of 16 (sbatch --array=3,7): the task ids are the shard numbers.
    rerun = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "3"}
    args = ["--num-shards=16", "--sora-jax", "/opt/bin/sora-jax", "--dry-run", "--", *ENCODE_ARGS]
    [worker] = plan(env, SLURM_DATA, "encode", *args, **rerun)
    assert worker == ["/opt/bin/sora-jax", "encode", *ENCODE_ARGS, "--shard", "7", "--num-shards", "16"]
    assert worker_shard(worker, rerun) == ("encode", (7, 16))


def gke_manifest(env, *args: str) -> dict:
    result = launch(env, GKE_DATA, *args)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return yaml.safe_load(result.stdout)


def test_gke_indexed_job_runs_shard_i_in_pod_i(env):
    args = [*GKE, "--parallelism", "16", "--cpu", "8", "--memory", "32Gi", "--service-account", "sora-data"]
    args += ["--mount", "my-videos:/videos", "--namespace", "data"]
    result = launch(env, GKE_DATA, "prepare", *args, "--dry-run", "--", *DATA_ARGS)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "+ kubectl apply -f - --namespace=data" and lines[1].startswith("# with this manifest")
    shown = yaml.safe_load("\n".join(line[2:] for line in lines[2:]))
    job = gke_manifest(env, "prepare", *args, "--print-manifest", "--", *DATA_ARGS)
    assert shown == job  # The dry run shows what kubectl is given.
    assert (job["apiVersion"], job["kind"], job["metadata"]["name"]) == ("batch/v1", "Job", "prepare-clips")
    assert job["metadata"]["namespace"] == "data"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 64 and spec["parallelism"] == 16
    assert spec["backoffLimitPerIndex"] == 3  # A failed shard is retried alone (and resumes).
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "sora-data"
    [container] = pod["containers"]
    assert container["image"] == "gcr.io/p/sora:1"
    assert container["command"] == ["sora-jax", "prepare", *DATA_ARGS, "--num-shards", "64"]
    assert container["resources"] == {"requests": {"cpu": "8", "memory": "32Gi"}}
    for index in (0, 41, 63):  # Kubernetes gives pod I its index; sora-jax makes it the shard.
        assert worker_shard(container["command"], {"JOB_COMPLETION_INDEX": str(index)}) == (
            "prepare",
            (index, 64),
        )
    # The videos' bucket, mounted read-only through GKE's Cloud Storage FUSE driver.
    assert spec["template"]["metadata"]["annotations"] == {"gke-gcsfuse/volumes": "true"}
    assert container["volumeMounts"] == [{"name": "bucket-0", "mountPath": "/videos", "readOnly": True}]
    [volume] = pod["volumes"]
    assert volume["csi"]["driver"] == "gcsfuse.csi.storage.gke.io" and volume["csi"]["readOnly"] is True
    assert volume["csi"]["volumeAttributes"]["bucketName"] == "my-videos"


def test_gke_encode_on_gpu_or_tpu_nodes(env):
    job = gke_manifest(
        env, "encode", *GKE, "--gpus", "8", "--retries", "0", "--print-manifest", "--", *ENCODE_ARGS
    )
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 8} and job["spec"]["parallelism"] == 64
    assert job["spec"]["backoffLimitPerIndex"] == 0 and "volumes" not in job["spec"]["template"]["spec"]
    tpu = ["--tpus", "4", "--node-selector", "cloud.google.com/gke-tpu-accelerator=tpu-v5-lite-podslice"]
    tpu += ["--node-selector=cloud.google.com/gke-tpu-topology=2x2"]
    job = gke_manifest(env, "encode", *GKE, *tpu, "--print-manifest", "--", *ENCODE_ARGS)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2",
    }
    assert pod["containers"][0]["resources"]["limits"] == {"google.com/tpu": 4}
    assert worker_shard(pod["containers"][0]["command"], {"JOB_COMPLETION_INDEX": "5"}) == ("encode", (5, 64))


def test_gke_without_dry_run_gives_kubectl_the_manifest(env, tmp_path):
    stubs = Path(env["PATH"].split(":")[0])
    (stubs / "kubectl").write_text('#!/bin/sh\necho "$*" > "$KUBECTL_ARGS"\ncat > "$KUBECTL_STDIN"\n')
    args, stdin = tmp_path / "kubectl_args", tmp_path / "kubectl_stdin"
    run_env = {**env, "KUBECTL_ARGS": str(args), "KUBECTL_STDIN": str(stdin)}
    result = launch(run_env, GKE_DATA, "encode", *GKE, "--", *ENCODE_ARGS)
    assert result.returncode == 0 and result.stdout == "", result.stderr
    assert (
        result.stderr.startswith("+ kubectl apply -f -\n")
        and "kubectl logs job/prepare-clips" in result.stderr
    )
    assert args.read_text() == "apply -f -\n"
    printed = launch(env, GKE_DATA, "encode", *GKE, "--print-manifest", "--", *ENCODE_ARGS).stdout
    assert stdin.read_text() == printed


@pytest.mark.parametrize(
    "accelerator, slices, shards, bounds",
    [("v5p-64", 1, 8, True), ("v6e-64", 2, 32, True), ("v5litepod-8", 1, 1, False), ("v4-32", 1, 4, True)],
)
def test_tpu_vm_data_runs_one_shard_worker_on_every_vm(env, accelerator, slices, shards, bounds):
    args = [*SLICE, "--accelerator", accelerator, "--num-slices", str(slices), "--dry-run"]
    commands = plan(env, TPU_VM, "prepare", *args, "--", *DATA_ARGS)
    assert len(commands) == slices  # One ssh per slice: each knows its slice's first shard.
    for slice_index, ssh in enumerate(commands):
        if slices > 1:
            assert ssh[3:6] == ["queued-resources", "ssh", "sora-1b"] and option(ssh, "--node") == str(
                slice_index
            )
        else:
            assert ssh[3:6] == ["tpu-vm", "ssh", "sora-1b"]
        assert option(ssh, "--worker") == "all"
        remote = option(ssh, "--command")
        assert_bash_syntax(remote)
        assert ("export TPU_PROCESS_BOUNDS=1,1,1 TPU_CHIPS_PER_PROCESS_BOUNDS=2,2,1" in remote) == bounds
        assert "LIBTPU_INIT_ARGS" not in remote  # Training's collective flags: nothing to do here.
        words = shlex.split(remote.split("nohup bash -c ", 1)[1])
        argv = words[2 : words.index(">")]
        first = slice_index * shards // slices  # VM w of slice s: shard s * (VMs a slice) + w.
        assert f"; shard=$(({first} + worker)); " in remote
        assert argv == [*DATA_ARGS, "--shard", "$shard", "--num-shards", str(shards)]
        assert "> ~/sora_jax_logs/sora-1b-prepare.log" in remote


def test_tpu_vm_shell_starts_the_vms_shard_from_its_worker_number(env, vm):
    home, shell_env = vm
    bin_dir = home / "bin"
    bin_dir.mkdir()
    curl = bin_dir / "curl"  # The VM's metadata server, as JAX and this script ask it.
    curl.write_text(
        '#!/bin/sh\ncase "$*" in *Metadata-Flavor:Google*agent-worker-number) echo 5 ;; *) exit 22 ;; esac\n'
    )
    curl.chmod(0o755)
    shell_env = {**shell_env, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    args = [*SLICE, "--run", "r", "--accelerator", "v5p-64", "--dry-run", "--", *ENCODE_ARGS]
    [ssh] = plan(env, TPU_VM, "encode", *args)
    logs = home / "sora_jax_logs"
    started = on_vm(shell_env, option(ssh, "--command"), FAKE_EXIT="0")
    assert started.returncode == 0, started.stderr
    assert wait_for(logs / "r.exit") == "0"
    log = (logs / "r.log").read_text()
    assert f"args: encode {' '.join(ENCODE_ARGS)} --shard 5 --num-shards 8" in log
    assert "TPU_PROCESS_BOUNDS=1,1,1\nTPU_CHIPS_PER_PROCESS_BOUNDS=2,2,1\n" in log
    # Not on a TPU VM (no metadata server): nothing starts, and the message says why.
    curl.write_text("#!/bin/sh\nexit 7\n")
    (logs / "r.exit").unlink()
    failed = on_vm(shell_env, option(ssh, "--command"))
    assert failed.returncode == 1 and "no TPU worker number from the metadata server" in failed.stderr
    assert not (logs / "r.exit").exists()


def _videos(folder: Path, count: int) -> set[str]:
    """``count`` captioned two-second videos, 32x32 at 8 fps: a ramp drifting a pixel a frame, each
    video in its own brightness."""
    from sora_jax.data.video_io import write_video

    folder.mkdir()
    drift = (np.arange(32)[None, None, :, None] + np.arange(16)[:, None, None, None]) % 32
    for index in range(count):
        frames = (drift * 4 + 30 * index).astype(np.uint8).repeat(32, 1).repeat(3, 3)
        write_video(folder / f"v{index}.mp4", frames, 8)
        (folder / f"v{index}.txt").write_text(f"a ramp drifting right, brightness {index}\n")
    return {f"v{index}.mp4" for index in range(count)}


def test_two_slurm_array_tasks_prepare_the_union_of_one_unsharded_prepare(tmp_path):
    """slurm_data.sbatch run for real as tasks 0 and 1 of a 2-task array (no SLURM needed: the
    environment is all a task has), beside one unsharded prepare of the same videos."""
    from sora_jax.data.clip_store import ClipStore
    from sora_jax.data.shards import open_clips, shard_of

    sources = _videos(tmp_path / "videos", 5)
    sora_jax = Path(sys.executable).with_name("sora-jax")
    settings = ["--input", str(tmp_path / "videos"), "--workers", "1", "--max-seconds", "1", "--no-audio"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JOB_", "TPU_WORKER"))}
    pipes = {"cwd": REPO, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    dataset, plain = tmp_path / "dataset", tmp_path / "plain"
    runs = [
        subprocess.Popen(
            ["bash", SLURM_DATA, "prepare", "--sora-jax", str(sora_jax), *settings, "--output", str(dataset)],
            env={
                **env,
                "SLURM_ARRAY_TASK_ID": str(task),
                "SLURM_ARRAY_TASK_COUNT": "2",
                "SLURM_ARRAY_TASK_MIN": "0",
            },
            **pipes,
        )
        for task in (0, 1)
    ]
    runs.append(
        subprocess.Popen([str(sora_jax), "prepare", *settings, "--output", str(plain)], env=env, **pipes)
    )
    for process in runs:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    union, whole = open_clips(dataset), ClipStore.open(plain)
    assert union.count == 2 and not union.missing and len(union) == len(whole) > 0
    assert all(len(store) for _, store in union.shards)  # Both tasks had sources of their own.
    assert union.sources_done() == whole.sources_done() == sources
    for shard, store in union.shards:  # Each task took the sources of its shard, and only those.
        assert store.sources_done() == {source for source in sources if shard_of(source, 2) == shard.index}
    for record in whole.records:
        assert union.record(record.clip_id).caption == record.caption
        np.testing.assert_array_equal(union.read(record.clip_id), whole.read(record.clip_id))
