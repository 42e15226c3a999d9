"""Mistakes and mishaps around a run end in one clear line and lose nothing: a resume with another
config, a missing data store, a damaged checkpoint, a run already done, an unwritable workdir."""

import json
import logging
import os
import shutil

import jax
import pytest

from sora_jax.cli import main
from sora_jax.config import load_config
from sora_jax.data.clip_store import ClipStore
from sora_jax.errors import ConfigError
from sora_jax.kinds.registry import run_kind
from sora_jax.parallel.mesh import make_mesh
from sora_jax.train import checkpoint
from sora_jax.train.resume import check_resumable
from sora_jax.train.state import abstract_train_state
from sora_jax.train.trained_run import TrainedRun
from tests.cli import sora_jax

TINY = "experiments/world_tiny.py:test"
# Checkpoints at steps 2 and 4; no sample prompts, so nothing but the train step compiles.
RUN = ("train.steps=4", "checkpoint.every=2", "train.sample_prompts=()")
ARGS = tuple(f"--config.{item}" for item in RUN)


def _train(workdir, *extra: str) -> int:
    return main(["train", "--config", TINY, "--workdir", str(workdir), *ARGS, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 4-step run; tests that change it work on a copy (:func:`_copy`)."""
    workdir = tmp_path_factory.mktemp("mistakes") / "run"
    assert _train(workdir) == 0
    assert checkpoint.saved_steps(workdir) == [2, 4]
    return workdir


def _copy(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def _snapshot(workdir) -> dict[str, bytes]:
    """Every file of ``workdir`` and its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


def _damage_arrays(workdir, step: int) -> None:
    """Truncate every array file of checkpoint ``step``, as a full disk or a crash of the storage
    layer after the save completed would."""
    files = list((workdir / "checkpoints" / str(step) / "state").rglob("ocdbt.process_0/d/*"))
    assert files
    for file in files:
        with open(file, "r+b") as handle:
            handle.truncate(100)


def _refusal(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_resuming_with_another_model_is_refused_and_changes_nothing(trained, tmp_path, capsys):
    workdir = _copy(trained, tmp_path)
    before = _snapshot(workdir)
    assert _train(workdir, "--config.model.dim=64", "--config.seed=1", "--config.train.steps=8") == 2
    line = _refusal(capsys)
    assert line.startswith("sora-jax train: ")
    assert "model.dim 48 -> 64" in line and "seed 0 -> 1" in line and "train.steps" not in line
    assert "--config.model.dim=48 --config.seed=0" in line and "new --workdir" in line
    assert _snapshot(workdir) == before  # config.json too: the run still samples.


def test_resuming_a_store_run_without_its_store_is_refused(trained, tmp_path, capsys):
    workdir = _copy(trained, tmp_path)
    stored = json.loads((workdir / "config.json").read_text())
    stored["data"]["store"] = str(tmp_path / "clips")  # As if it had trained on a clip store.
    (workdir / "config.json").write_text(json.dumps(stored))
    before = _snapshot(workdir)
    assert _train(workdir) == 2
    line = _refusal(capsys)
    assert f"data.store '{tmp_path / 'clips'}' -> ''" in line
    assert f"--config.data.store={tmp_path / 'clips'}" in line
    assert _snapshot(workdir) == before


def test_turning_gradient_clipping_on_or_off_is_refused_changing_its_norm_is_not(trained):
    check_resumable(load_config(TINY, (*RUN, "optim.grad_clip=0.5")), trained)
    with pytest.raises(ConfigError, match=r"optim.grad_clip 1.0 -> 0.0; .* --config.optim.grad_clip=1.0"):
        check_resumable(load_config(TINY, (*RUN, "optim.grad_clip=0")), trained)


def test_changes_meant_for_a_resume_are_not_refused(trained, tmp_path, caplog):
    """train.steps, checkpoint and logging intervals, the mesh, the attention kernel: a run already
    at step 4 told to stop at 4 says so, without compiling or writing anything."""
    workdir = _copy(trained, tmp_path)
    before = _snapshot(workdir)
    caplog.set_level(logging.INFO, logger="sora_jax")
    extra = ("--config.checkpoint.every=1", "--config.train.log_every=2", "--config.mesh.ici_fsdp=2")
    assert _train(workdir, *extra, "--config.train.steps=3", "--config.optim.lr=0.0005") == 0
    assert "already at step 4 (train.steps=3)" in caplog.text
    assert "--config.train.steps=N with N > 4" in caplog.text
    assert "starting at step" not in caplog.text  # Returned before the step compiled.
    assert _snapshot(workdir) == before


def test_a_damaged_newest_checkpoint_is_set_aside_and_training_resumes_before_it(trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    _damage_arrays(workdir, 4)
    caplog.set_level(logging.INFO, logger="sora_jax")
    # The same train.steps as the finished run (so the same compiled step): from step 2 it trains
    # steps 3 and 4 again and saves a new step 4 where the damaged one was.
    assert _train(workdir) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoint of step 4 cannot be read" in w and "OUT_OF_RANGE" in w for w in warnings), warnings
    assert "starting at step 2" in caplog.text
    assert (workdir / "checkpoints" / "4.damaged" / "state").is_dir()  # Kept, out of orbax's way.
    assert checkpoint.saved_steps(workdir) == [2, 4]
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def _restore_newest(workdir):
    config = load_config(TINY, RUN)
    mesh = make_mesh(config)
    batches = run_kind(config).batches(0, config.data.batch_size)
    mgr = checkpoint.manager(workdir, config)
    try:
        return checkpoint.restore_newest(mgr, abstract_train_state(config, mesh), batches)
    finally:
        mgr.close()


def test_an_emptied_input_position_falls_back_to_the_step_before(trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    (workdir / "checkpoints" / "4" / "data" / "process_0-of-1.json").write_text("")
    with jax.set_mesh(make_mesh(load_config(TINY, RUN))):
        state = _restore_newest(workdir)
    assert int(state.step) == 2
    assert "checkpoint of step 4 cannot be read (JSONDecodeError" in caplog.text
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4.damaged"]


def test_when_no_checkpoint_reads_the_error_is_one_line_and_nothing_moves(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    for step in (2, 4):
        _damage_arrays(workdir, step)
    with jax.set_mesh(make_mesh(load_config(TINY, RUN))), pytest.raises(ConfigError) as refused:
        _restore_newest(workdir)
    message = str(refused.value)
    assert "\n" not in message and "step 4: ValueError: OUT_OF_RANGE" in message and "1 older" in message
    assert checkpoint.saved_steps(workdir) == [2, 4]


def test_sampling_and_evaluation_load_the_newest_readable_checkpoint(trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    _damage_arrays(workdir, 4)
    with TrainedRun(workdir) as run:
        assert run.load()[0] == 2
        assert "checkpoint of step 4 cannot be read (ValueError: OUT_OF_RANGE" in caplog.text
        with pytest.raises(ConfigError, match="checkpoint of step 4 in .* cannot be read"):
            run.load(4)  # An explicit step is not replaced by another.
    assert (workdir / "checkpoints" / "4").is_dir()  # Reading never moves anything.


def test_a_missing_or_empty_data_store_is_refused_before_anything_is_written(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert _train(workdir, f"--config.data.store={tmp_path / 'nowhere'}") == 2
    line = _refusal(capsys)
    assert "data.store" in line and str(tmp_path / "nowhere") in line
    ClipStore.create(tmp_path / "empty")
    assert _train(workdir, f"--config.data.store={tmp_path / 'empty'}") == 2
    assert "holds no clips" in _refusal(capsys)
    assert not workdir.exists()


def test_an_unwritable_workdir_is_refused_before_anything_is_computed(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert _train(tmp_path / "file" / "run") == 2
    assert f"--workdir {tmp_path / 'file' / 'run'} is not writable" in _refusal(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_workdir_is_refused_by_train_and_evaluate(trained, tmp_path, capsys):
    workdir = _copy(trained, tmp_path)
    before = _snapshot(workdir)
    workdir.chmod(0o555)
    try:
        assert _train(workdir, "--config.train.steps=6") == 2
        assert "is not writable" in _refusal(capsys)
        assert main(["evaluate", "--workdir", str(workdir)]) == 2
        assert "is not writable" in _refusal(capsys)
    finally:
        workdir.chmod(0o755)
    assert _snapshot(workdir) == before


def test_evaluate_all_says_when_nothing_is_new(trained, tmp_path, capsys):
    workdir = _copy(trained, tmp_path)
    (workdir / "eval").mkdir()
    for step in (2, 4):  # What evaluate leaves once a checkpoint is done.
        (workdir / "eval" / f"step_{step}.json").write_text(json.dumps({"step": step}))
    assert main(["evaluate", "--workdir", str(workdir), "--all"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "nothing new to evaluate" in err and "steps 2, 4" in err


def test_evaluate_on_a_missing_workdir_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--workdir", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'} does not exist" in _refusal(capsys)


def test_sample_of_a_missing_step_is_one_line_without_orbax_notices(trained, tmp_path):
    result = sora_jax(
        "sample",
        "--workdir",
        str(trained),
        "--prompt",
        "a ball",
        "--out",
        str(tmp_path / "a.mp4"),
        "--step",
        "7",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"sora-jax sample: {trained} has no checkpoint of step 7; it has [2, 4]"
    ]
