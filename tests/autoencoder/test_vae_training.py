"""The autoencoder trained by the trainer: its step, its input stream, and the CLI end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.autoencoder.training import (
    autoencoder_optimizer,
    clip_batches,
    fit_clip,
    held_out_clips,
    make_autoencoder_step,
    world_clips,
)
from sora_jax.config import load_config
from sora_jax.parallel.mesh import make_mesh
from sora_jax.train.optimizer import make_optimizer
from sora_jax.train.state import create_train_state
from tests.autoencoder.vae_run import CONSTANT_LR, TEST
from tests.cli import sora_jax


def _state_and_step(overrides=()):
    config = load_config(TEST, ["mesh.ici_data=1", *overrides])
    mesh = make_mesh(config, jax.devices()[:1])
    graphdef, state, _ = create_train_state(config, mesh)
    return config, state, jax.jit(make_autoencoder_step(graphdef, config, autoencoder_optimizer(config)))


# The learning and the clip-store tests train with one optimiser setting.
LEARNING = ["optim.warmup_steps=0", "train.steps=40"]


def test_the_step_learns_to_reconstruct_a_batch():
    config, state, step = _state_and_step(LEARNING)
    batch = next(clip_batches(config))
    assert batch["videos"].shape == (8, 5, 16, 16, 3) and batch["videos"].dtype == np.float32
    psnrs = []
    for _ in range(10):  # Measured: +3.4 dB by step 3, +7.8 by step 10 (+9.6 by step 40).
        state, metrics = step(state, batch)
        psnrs.append(float(metrics["psnr"]))
    assert int(state.step) == 10 and int(metrics["skipped_nonfinite"]) == 0
    assert psnrs[-1] > psnrs[0] + 3.0, psnrs  # dB


def test_the_discriminator_and_adversarial_loss_count_from_disc_start():
    config, state, step = _state_and_step(["autoencoder.disc_weight=0.5", "autoencoder.disc_start=2"])
    assert set(state.params) == {"autoencoder", "discriminator"}
    batches = clip_batches(config)
    initial = [np.asarray(x) for x in jax.tree.leaves(state.params["discriminator"])]
    for expected_weight in (0.0, 0.0, 0.5):
        state, metrics = step(state, next(batches))
        assert float(metrics["adversarial_weight"]) == expected_weight
        assert np.isfinite(float(metrics["disc_loss"])) and 0 <= float(metrics["disc_accuracy"]) <= 1
        now = jax.tree.leaves(state.params["discriminator"])
        moved = any(not np.array_equal(a, np.asarray(b)) for a, b in zip(initial, now, strict=True))
        assert moved == (expected_weight > 0)  # Still before disc_start; learning at step 2.


def test_the_clip_stream_splits_rows_between_processes_and_resumes():
    config = load_config(TEST)
    whole = clip_batches(config)
    first, second = next(whole)["videos"], next(whole)["videos"]
    # Process 1 of 2 holds rows 4..7 of every batch, the same clips the single process renders there.
    share = clip_batches(config, first_row=4, rows=4)
    np.testing.assert_array_equal(next(share)["videos"], first[4:])
    state = share.get_state()
    resumed = clip_batches(config, first_row=4, rows=4)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["videos"], second[4:])
    # Held-out clips come from eval.seed and differ from training clips.
    held = held_out_clips(config, 2)
    assert held.shape == (2, 5, 16, 16, 3) and not np.array_equal(held, first[:2])


def test_the_discriminator_has_its_own_clipping_and_weight_decay():
    config = load_config(
        TEST,
        ["autoencoder.disc_weight=0.5", "autoencoder.disc_grad_clip=1.0", "autoencoder.disc_weight_decay=0.5",
         "optim.grad_clip=1.0", "optim.weight_decay=0.0", "optim.warmup_steps=0"],
    )  # fmt: skip
    params = {"autoencoder": {"w": jnp.ones((2, 2))}, "discriminator": {"w": jnp.ones((2, 2))}}
    grads = {"autoencoder": {"w": jnp.full((2, 2), 0.01)}, "discriminator": {"w": jnp.full((2, 2), 1e3)}}
    optimizer = autoencoder_optimizer(config)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # The autoencoder's step is what its own optimizer makes of its own gradient: the
    # discriminator's huge gradient does not shrink it through a shared global norm.
    alone = make_optimizer(config)
    expected, _ = alone.update(grads["autoencoder"], alone.init(params["autoencoder"]), params["autoencoder"])
    np.testing.assert_allclose(updates["autoencoder"]["w"], expected["w"], rtol=1e-6)
    # The discriminator's matrices decay (zero gradient: only the decay moves them).
    zero = jax.tree.map(jnp.zeros_like, grads)
    updates, _ = optimizer.update(zero, optimizer.init(params), params)
    assert float(updates["discriminator"]["w"][0, 0]) < 0 and float(updates["autoencoder"]["w"][0, 0]) == 0


def test_an_autoencoder_trains_on_a_clip_store_of_videos(tmp_path):
    from sora_jax.data import world
    from sora_jax.data.clip_store import ClipStore
    from sora_jax.data.prepare import prepare
    from sora_jax.data.video_io import write_video

    videos = tmp_path / "videos"
    for index, (frames, height, width) in enumerate([(12, 40, 56), (3, 24, 20), (20, 32, 32)]):
        clip = world.make_clip(1, index, frames=frames, height=height, width=width, fps=8.0)
        write_video(videos / f"clip{index}.mp4", clip.frames, 8.0)
        (videos / f"clip{index}.txt").write_text(clip.caption)
    store = tmp_path / "store"
    report = prepare(videos, store, max_seconds=4.0, fps=8.0, max_area=64 * 64, workers=1)
    assert report.clips_written == 3

    config, state, step = _state_and_step([f"data.store={store}", *LEARNING])
    batch = next(clip_batches(config))["videos"]
    assert batch.shape == (8, 5, 16, 16, 3) and -1.0 <= batch.min() and batch.max() <= 1.0
    # Each row is a piece of a stored clip, chosen and fitted by the generator of its row index.
    opened = ClipStore.open(store)
    rng = np.random.default_rng((config.seed, 0))
    rng.random()  # The draw that chose the store over the world (it always does at store_weight 1).
    piece = fit_clip(opened.read(int(rng.integers(len(opened)))), (5, 16, 16), rng)
    np.testing.assert_array_equal(batch[0], piece.astype(np.float32) / 127.5 - 1.0)
    state, metrics = step(state, {"videos": batch})
    assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped_nonfinite"]) == 0
    # A store mixed with the world: some rows are physics-world clips.
    mixed = load_config(TEST, ["mesh.ici_data=1", f"data.store={store}", "data.store_weight=0.5"])
    world_rows = [
        i for i, row in enumerate(next(clip_batches(mixed))["videos"])
        if np.array_equal(row, world_clips(mixed.seed, i, 1, (5, 16, 16))[0])
    ]  # fmt: skip
    assert 0 < len(world_rows) < 8


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_resume_and_evaluate_an_autoencoder_from_the_cli(vae_run, tmp_path, capsys):
    """``vae_run`` is the whole run (``sora-jax train`` at a constant learning rate, 4 steps); here
    the same run stops at step 2 and resumes, then the command line evaluates and refuses."""
    import shutil

    from sora_jax.cli import main

    split = ["--workdir", str(tmp_path / "split")]
    first = sora_jax("train", "--config", TEST, *split, "--config.train.steps=2", *CONSTANT_LR)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = sora_jax("train", "--config", TEST, *split, *CONSTANT_LR)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "starting at step 2" in resumed.stderr
    assert _losses(tmp_path / "split") == _losses(vae_run)  # Bit-identical on CPU.

    lines = [json.loads(line) for line in (vae_run / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "reconstruction", "kl", "psnr", "grad_norm", "clips_per_s"):
        assert all(np.isfinite(line[key]) for line in lines), key
    assert sorted(p.name for p in (vae_run / "samples").iterdir()) == [
        f"step_000004_{i}.{ext}" for i in range(2) for ext in ("gif", "mp4")
    ]

    run = tmp_path / "whole"  # Evaluation writes into the run: a copy, the shared run stays as trained.
    shutil.copytree(vae_run, run)
    capsys.readouterr()
    assert main(["evaluate", "--workdir", str(run), "--all"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["step"] for r in results] == [2, 4]
    for result in results:
        assert 0 < result["psnr"] < 60 and -1 <= result["ssim"] <= 1
        assert json.loads((run / "eval" / f"step_{result['step']}.json").read_text()) == result
    assert (run / "eval" / "step_000004_1.mp4").is_file()

    assert main(["evaluate", "--workdir", str(run), "--world"]) == 2  # Nothing generated to score.
    assert (
        main(["sample", "--workdir", str(run), "--prompt", "a ball", "--out", str(tmp_path / "x.mp4")]) == 2
    )
    assert "does not generate videos from a prompt" in capsys.readouterr().err
