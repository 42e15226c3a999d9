"""`sora-jax aot` compiles the real train step for a TPU slice on this CPU-only machine."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sora_jax.cli import main
from sora_jax.config import load_config
from sora_jax.parallel.mesh import make_mesh
from sora_jax.parallel.tpu import COMPILE_ONLY_HOST, parse_accelerator, topology_devices
from sora_jax.train.aot import compile_train_step, estimated_step_seconds, step_seconds_from_costs
from sora_jax.train.metrics import model_flops_per_token
from sora_jax.train.state import abstract_train_state

SMOKE = "experiments/sora_1b.py:smoke"


def fresh_environment() -> dict[str, str]:
    """This environment as a user's shell has it: without what describing a slice here added to it."""
    return {name: value for name, value in os.environ.items() if name not in COMPILE_ONLY_HOST}


# ``sora-jax aot`` in a fresh process, as its entry point runs it (``sys.exit(main())``), that also
# writes out the optimized HLO of the train step it compiles: each compile for the slice takes about
# a minute, and the same compiled step serves the report's checks and the look at its kernels.
AOT_KEEPING_THE_TRAIN_STEP = """
import sys
from pathlib import Path

from sora_jax import cli

hlo, argv = Path(sys.argv[1]), sys.argv[2:]
aot_command = cli._aot


def aot_keeping_the_train_step(args, overrides):
    # Imported where the command imports it: after main set up logging, which JAX's imports touch.
    from sora_jax.train import aot

    compile_logged = aot._compile_logged

    def keeping_the_train_step(config, devices, tpu, what):
        compiled, seconds = compile_logged(config, devices, tpu, what)
        if what == "the train step":
            hlo.write_text(compiled.as_text())
        return compiled, seconds

    aot._compile_logged = keeping_the_train_step
    return aot_command(args, overrides)


cli._aot = aot_keeping_the_train_step
sys.exit(cli.main(argv))
"""


@pytest.fixture(scope="module")
def splash_aot(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, str]:
    """``sora-jax aot --config SMOKE --topology v5p-8 --json OUT``, run once for the module: the
    finished process, OUT, and the optimized HLO of the train step it compiled."""
    out = tmp_path_factory.mktemp("aot")
    result = subprocess.run(
        [sys.executable, "-c", AOT_KEEPING_THE_TRAIN_STEP, str(out / "train_step.hlo"),
         "aot", "--config", SMOKE, "--topology", "v5p-8", "--json", str(out / "aot.json")],
        capture_output=True,
        text=True,
        env={**fresh_environment(), "JAX_PLATFORMS": "cpu"},
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result, out / "aot.json", (out / "train_step.hlo").read_text()


@pytest.mark.slow
def test_aot_of_a_small_splash_preset_reports_memory_flops_and_mfu(splash_aot):
    result, out, _ = splash_aot
    assert "fits" in result.stdout and "MFU" in result.stdout
    # stderr: what is being compiled, for which slice, and how long each took; no libtpu noise.
    assert_no_libtpu_noise(result.stderr)
    progress = [line.split(" INFO ", 1)[1] for line in result.stderr.splitlines() if " INFO " in line]
    assert progress[0].startswith("libtpu described v5p-8: 4 chips (")
    compiles = [line for line in progress if line.startswith("compil")]
    steps = [
        "the train step",
        "the step-time probe with 1 unrolled block",
        "the step-time probe with 2 unrolled blocks",
    ]
    for what in steps:
        assert f"compiling {what} for v5p-8 (4 chips) ..." in compiles, compiles
        assert any(re.fullmatch(rf"compiled {what} in \d+\.\d s", line) for line in compiles), compiles
    assert len(compiles) == 6
    report = json.loads(out.read_text())
    config = load_config(SMOKE)
    assert report["fits"] and report["chips"] == 4
    assert report["mesh"] == {"data": 1, "fsdp": 2, "sequence": 2, "tensor": 1}

    # Arguments on a chip are its shards of the train state plus its rows of the batch.
    devices = topology_devices("v5p-8")
    state = abstract_train_state(config, make_mesh(config, devices))
    shard_bytes = sum(
        np.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(state)
    )
    per_chip = report["per_chip_bytes"]
    assert shard_bytes < per_chip["arguments"] < 1.2 * shard_bytes + 2**20 * 32
    assert per_chip["total"] < report["hbm_bytes_per_chip"]
    assert 0 < report["spare_fraction"] < 1

    tokens = config.data.batch_size * config.data.seq_len
    assert report["flops_per_step"] == pytest.approx(
        model_flops_per_token(config, config.data.seq_len) * tokens
    )
    assert 0 < report["estimated_mfu"] < 1 and report["estimated_step_seconds"] > 0
    assert report["estimate_method"] == "xla-roofline"


# What libtpu logs when it looks for the TPU system of a machine that has none.
LIBTPU_NOISE = ("E0000", "unexpected worker hostname", "could not determine TPU", "Logging before InitGoogle")


def assert_no_libtpu_noise(stderr: str) -> None:
    noise = [line for line in stderr.splitlines() if any(mark in line for mark in LIBTPU_NOISE)]
    assert not noise, noise


def test_describing_a_slice_without_a_tpu_logs_nothing():
    """libtpu loads (in a fresh process: it reads its environment once) and describes the slice
    quietly, as ``sora-jax aot`` needs it to."""
    script = "from sora_jax.parallel.tpu import topology_devices; print(len(topology_devices('v5p-8')))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**fresh_environment(), "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0 and result.stdout == "4\n", result.stderr
    assert_no_libtpu_noise(result.stderr)


def test_without_libtpu_aot_says_what_to_install_in_one_line():
    """An environment where ``import libtpu`` fails, as where it is not installed."""
    script = (
        "import sys; sys.modules['libtpu'] = None; from sora_jax.cli import main; "
        f"sys.exit(main(['aot', '--config', '{SMOKE}', '--topology', 'v5p-8']))"
    )
    env = {name: value for name, value in fresh_environment().items() if name != "TPU_LIBRARY_PATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**env, "JAX_PLATFORMS": "cpu"}
    )
    assert result.returncode == 2
    [error] = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert error.startswith("sora-jax aot: cannot describe TPU topology v5p:2x2x1 for v5p-8: ")
    assert error.endswith('needs libtpu: pip install -e ".[tpu]" in the checkout')


@pytest.mark.slow
def test_compiled_step_runs_the_splash_kernel_split_over_the_sequence_axis(splash_aot):
    _, _, hlo = splash_aot  # compile_train_step(load_config(SMOKE), topology_devices("v5p-8")).as_text()
    assert "tpu_custom_call" in hlo  # the Pallas splash kernel, not XLA's dense attention
    assert "all-to-all" in hlo  # tokens traded for heads across the sequence axis


# Refusals print one line and return before libtpu or a compile is reached: the command's own
# function, run here, says and returns what its process would.
def test_a_mesh_that_does_not_divide_the_model_is_refused_before_compiling(capsys):
    assert main(["aot", "--config", SMOKE, "--topology", "v5p-8", "--config.model.heads=3"]) == 2
    assert "model." in capsys.readouterr().err


def test_an_unknown_topology_is_named(capsys):
    assert main(["aot", "--config", SMOKE, "--topology", "v9x-8"]) == 2
    assert "v9x" in capsys.readouterr().err


@pytest.mark.slow
def test_step_time_extrapolated_from_one_and_two_blocks_matches_the_unrolled_model():
    """The MFU estimate's step time: XLA's roofline of 1 and 2 unrolled blocks, extrapolated to the
    full depth, agrees with compiling all blocks unrolled (XLA costs a scanned stack only once)."""
    config = load_config(SMOKE, ["model.attention=xla", "model.depth=4"])
    devices = topology_devices("v5p-8")
    extrapolated, method = estimated_step_seconds(config, devices, parse_accelerator("v5p-8"))
    assert method == "xla-roofline"
    unrolled = load_config(SMOKE, ["model.attention=xla", "model.depth=4", "model.scan_layers=False"])
    measured = compile_train_step(unrolled, devices).cost_analysis()["optimal_seconds"]
    assert extrapolated == pytest.approx(measured, rel=0.02)


def test_without_a_usable_xla_roofline_the_estimate_bounds_by_flops_and_bytes():
    """libtpu can report a negative ``optimal_seconds`` (as for the v6e-64 preset); the estimate then
    extrapolates FLOPs and bytes accessed per chip and takes the slower of peak compute and HBM."""
    config = load_config(SMOKE, ["model.attention=xla", "model.depth=10"])
    tpu = parse_accelerator("v6e-4")
    one = {"optimal_seconds": -57.9, "flops": 2e12, "bytes accessed": 1e9}
    two = {"optimal_seconds": -60.0, "flops": 3e12, "bytes accessed": 3e9}
    seconds, method = step_seconds_from_costs(config, [one, two], 4, tpu)
    assert method == "flops-bytes-bound"
    # 10 blocks: 11e12 FLOPs (12.0 ms at 918 TFLOP/s) and 19e9 bytes (11.6 ms at 1640 GB/s).
    assert seconds == pytest.approx(11e12 / 918e12)
    two["bytes accessed"] = 5e9  # 37e9 bytes: now memory traffic is the longer.
    assert step_seconds_from_costs(config, [one, two], 4, tpu)[0] == pytest.approx(37e9 / 1640e9)
    good = [dict(one, optimal_seconds=0.5), dict(two, optimal_seconds=0.75)]
    assert step_seconds_from_costs(config, good, 4, tpu) == (pytest.approx(0.5 + 9 * 0.25), "xla-roofline")
    flat = [dict(one, flops=2e12), dict(two, flops=2e12)]  # Costs that do not grow with depth.
    assert step_seconds_from_costs(config, flat, 4, tpu) == (None, None)
