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
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TPU_VM = "launch/tpu_vm.sh"
XPK = "launch/xpk.sh"
SLURM = "launch/slurm.sbatch"
SLICE = ["--name", "sora-1b", "--zone", "us-east5-a"]
TINY = "experiments/world_tiny.py"
STUBBED = ("gcloud", "xpk", "srun", "git", "tar", "mkdir", "rm")

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
        (TPU_VM, ["logs", *SLICE, "--", "--config", "c.py"], "only train takes arguments after '--'"),
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


@pytest.mark.parametrize("script", ["tpu_vm.sh", "xpk.sh", "slurm.sbatch", "lib.sh", "xla_flags.sh"])
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
