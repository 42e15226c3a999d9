"""Latent caching and the latent DiT: encode with a trained autoencoder, train on latents, decode samples.

One tiny autoencoder run (vae_world:test, shared with the other data tests) and one latent store with
caption embeddings of a tiny BERT are made once for the module; the tests read them.
"""

import json

import numpy as np
import pytest

from sora_jax.autoencoder.trained import TrainedAutoencoder
from sora_jax.cli import main
from sora_jax.config import load_config
from sora_jax.data import world
from sora_jax.data.clip_store import STATS_KEY, ClipStore
from sora_jax.data.pipeline import check_store
from sora_jax.data.sources import LatentStoreSource
from sora_jax.data.video_io import read_video
from sora_jax.text.embedder import CaptionEmbedder
from sora_jax.text.tiny import write_tiny_bert
from tests.cli import sora_jax

CLIPS = 10


def _world(clips: int = CLIPS) -> list[str]:
    return ["--world", str(clips), "--frames", "5", "--height", "16", "--width", "16", "--seed", "3"]


WORLD = _world()


@pytest.fixture(scope="module")
def made(vae_run, tmp_path_factory):
    """(autoencoder run, tiny BERT directory, latent store), made through the command line (the run
    is the shared read-only ``vae_run``, see tests/conftest.py)."""
    root = tmp_path_factory.mktemp("latents")
    run, bert, store = vae_run, write_tiny_bert(root / "tiny-bert"), root / "latents"
    result = sora_jax(
        "encode", "--autoencoder", str(run), "--output", str(store), *WORLD,
        "--text-encoder", str(bert), "--caption-tokens", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{CLIPS} clips encoded" in result.stdout
    return run, bert, store


def test_encode_stores_the_autoencoders_latents_captions_and_statistics(made):
    run, bert, path = made
    store = ClipStore.open(path)
    vae = TrainedAutoencoder.load(run)
    assert (store.dtype, store.channels, len(store)) == (np.float16, 8, CLIPS)
    assert store.extra["autoencoder"] == vae.describe() and vae.step == 4
    embedder = CaptionEmbedder(bert, 8)
    everything = []
    for index, record in enumerate(store.records):
        assert record.shape == (3, 8, 8, 8)  # 5 x 16 x 16 pixels at 2x2x2 compression.
        clip = world.make_clip(3, index, frames=5, height=16, width=16, fps=record.fps)
        assert record.caption == clip.caption and 4.0 <= record.fps <= 8.0
        np.testing.assert_allclose(store.read(index), vae.encode(clip.frames), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(
            store.read_caption_embedding(index), embedder(clip.caption), rtol=1e-2, atol=1e-2
        )
        everything.append(store.read(index).reshape(-1, 8).astype(np.float64))
    stats, values = store.extra[STATS_KEY], np.concatenate(everything)
    np.testing.assert_allclose(stats["mean"], values.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["std"], values.std(0), rtol=1e-6)


def test_encode_resumes_and_refuses_another_checkpoint(made, tmp_path, capsys):
    # In this process: the command (exit status, output) is the same; the fixture ran it as one.
    run, _, path = made
    encode = ["encode", "--autoencoder", str(run)]
    capsys.readouterr()
    assert main([*encode, "--output", str(path), *WORLD]) == 2
    # Without --text-encoder the caption embeddings differ: refused before anything is written.
    assert "caption embeddings" in capsys.readouterr().err
    assert main([*encode, "--output", str(tmp_path / "a"), *_world(3)]) == 0
    assert "3 clips encoded" in capsys.readouterr().out
    assert main([*encode, "--output", str(tmp_path / "a"), *WORLD]) == 0
    resumed = capsys.readouterr().out
    assert f"{CLIPS - 3} clips encoded" in resumed and "3 already there" in resumed
    assert main([*encode, "--step", "2", "--output", str(tmp_path / "a"), *WORLD]) == 2
    assert "encode into a new store" in capsys.readouterr().err


def _latent_config(made, *overrides):
    run, bert, store = made
    return load_config(
        "experiments/world_latent.py:test",
        [f"model.autoencoder={run}", f"data.store={store}", "model.channels=8", *overrides],
    )


def test_a_latent_clip_is_a_prefix_of_the_stored_latents_cropped_and_normalised(made):
    config = _latent_config(made)
    source = LatentStoreSource(str(made[2]), config.data, tuple(config.model.patch_size), 8)
    options = source.shapes(0)
    assert list(options.frames) == [1, 2, 3]  # data.frames = (1, 3) latent frames.
    assert [tuple(s) for s in options.sizes] == [(4, 4), (6, 6), (8, 8)]  # Latent pixels, patch multiples.
    stored = source.store.read(0).astype(np.float32)
    loaded = source.load(0, 2, 2, 2, np.random.default_rng(0))
    assert loaded.frames.shape == (2, 2, 2, 8) and loaded.caption_embedding.dtype == np.float32
    normalised = (stored - source.mean) / source.std
    crops = [normalised[:2, top : top + 2, left : left + 2] for top in range(7) for left in range(7)]
    assert any(np.array_equal(loaded.frames, crop) for crop in crops)


def test_a_store_that_cannot_feed_the_model_is_refused_naming_the_key(made, tmp_path):
    store = ClipStore.open(made[2])
    with pytest.raises(ValueError, match="set model.autoencoder"):
        check_store(load_config("experiments/world_tiny.py:test", [f"data.store={made[2]}"]), store)
    with pytest.raises(ValueError, match="not of"):
        check_store(_latent_config(made, f"model.autoencoder={tmp_path / 'other_vae'}"), store)
    with pytest.raises(ValueError, match="model.text_encoder"):
        bert = write_tiny_bert(tmp_path / "another-bert")
        check_store(_latent_config(made, f"model.text_encoder={bert}"), store)
    pixels = ClipStore.create(tmp_path / "pixels")
    with pytest.raises(ValueError, match="holds pixels"):
        check_store(_latent_config(made), pixels)


def test_a_latent_dit_with_a_frozen_text_encoder_trains_and_samples_decoded_video(made, tmp_path, capsys):
    """Trains through ``sora-jax train``; evaluates and samples through the command's ``main`` here
    (the same command, without another process start-up)."""
    run, bert, store = made
    workdir = tmp_path / "latent_dit"
    overrides = [f"--config.model.autoencoder={run}", f"--config.data.store={store}"]
    overrides += ["--config.model.channels=8", f"--config.model.text_encoder={bert}"]
    overrides += ["--config.conditioning.image_to_video=1.0"]
    result = sora_jax(
        "train", "--config", "experiments/world_latent.py:test", "--workdir", str(workdir), *overrides
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite([line["loss"] for line in lines if "loss" in line]).all()
    # The trainer's sample: 3 x 8 x 8 latents decoded to 5 x 16 x 16 pixels.
    frames, _ = read_video(workdir / "samples" / "step_000004_0.mp4")
    assert frames.shape == (5, 16, 16, 3)
    # Evaluation draws its batches from the latent store (the world renders pixels).
    capsys.readouterr()
    assert main(["evaluate", "--workdir", str(workdir)]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out.splitlines()[-1])["val_loss"])
    assert read_video(workdir / "eval" / "step_000004_0.mp4")[0].shape == (5, 16, 16, 3)

    out = tmp_path / "ball.mp4"
    assert main([
        "sample", "--workdir", str(workdir), "--prompt", "a red ball falls", "--frames", "9",
        "--height", "16", "--width", "8", "--steps", "2", "--out", str(out),
    ]) == 0  # fmt: skip
    assert read_video(out)[0].shape == (9, 16, 8, 3)  # From 5 x 8 x 4 latents.
    assert main([
        "sample", "--workdir", str(workdir), "--prompt", "a ball", "--frames", "8",
        "--height", "16", "--width", "16", "--out", str(out),
    ]) == 2  # fmt: skip
    assert "--frames 8: a latent run makes 1 + 2 k frames" in capsys.readouterr().err

    # Image-to-video: the given latent frame is the image's own, and the causal decoder makes frame 0
    # from latent frame 0 alone, so frame 0 is the autoencoder's reconstruction of the image. (Checked
    # on the generator's output: mp4 and gif files are lossy.)
    from sora_jax.eval.generate import make_generator
    from sora_jax.eval.inputs import ClipLayout
    from sora_jax.train.trained_run import TrainedRun

    with TrainedRun(workdir) as trained:
        config, params = trained.config, trained.params()
        generate = make_generator(
            trained.graphdef, config, frames=3, height=8, width=8, steps=2, guidance=2.0, method="euler"
        )
    image = world.make_clip(5, 0, frames=1, height=16, width=16, fps=6.0).frames
    condition = ClipLayout(3, 8, 8, 8, 1, generate.space).condition([("start", image)])
    assert condition.groups.tolist() == [True, False, False]
    video = generate(params, "a ball", 0, condition=condition)
    vae = TrainedAutoencoder.load(run)
    reconstruction = vae.decode(vae.encode(image))[0].astype(np.int32)
    assert video.shape == (5, 16, 16, 3)
    assert np.abs(video[0].astype(np.int32) - reconstruction).max() <= 1  # Float rounding only.
    assert np.abs(video[1:].astype(np.int32) - reconstruction).mean() > 1  # The rest is generated.


def test_latent_clips_smaller_than_a_patch_are_skipped_and_counted(made, tmp_path):
    store = ClipStore.create(tmp_path / "small", dtype="float16", channels=4, extra={STATS_KEY: {
        "mean": [0.0] * 4, "std": [1.0] * 4, "clips": 2}})  # fmt: skip
    store.append(
        np.ones((2, 1, 4, 4), np.float16), clip_id="thin", fps=4.0, caption="a", source="s", start=0.0
    )
    store.append(
        np.ones((2, 4, 4, 4), np.float16), clip_id="fine", fps=4.0, caption="b", source="s", start=0.5
    )
    store.flush()
    config = _latent_config(made)
    source = LatentStoreSource(str(tmp_path / "small"), config.data, (1, 2, 2), 4)
    assert len(source) == 1 and source.skipped == 1
    assert source.load(0, 1, 2, 2, np.random.default_rng(0)).caption == "b"


def test_autoencoder_features_for_fvd_are_latent_statistics(made):
    from sora_jax.eval.fvd import AutoencoderFeatures

    vae = TrainedAutoencoder.load(made[0])
    clips = np.stack([world.make_clip(3, i, frames=5, height=16, width=16, fps=6.0).frames for i in range(3)])
    features = AutoencoderFeatures(vae)(clips)
    latents = vae.encode(clips[1])
    assert features.shape == (3, 16)
    np.testing.assert_allclose(features[1, :8], latents.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)


def test_a_latent_run_decodes_with_the_autoencoder_step_that_encoded_its_store(made, tmp_path):
    """The autoencoder run trains on after encoding: samples must still decode with the weights that
    made the latents (the step the store records), not the run's newest checkpoint. A store encoded
    from the run's step 2 while it holds step 4 is that case, without training the run on."""
    from sora_jax.autoencoder.latent_space import LatentSpace

    run, _, _ = made
    store = tmp_path / "older"
    encode = ["encode", "--autoencoder", str(run), "--step", "2", "--output", str(store), *_world(2)]
    assert main(encode) == 0
    assert TrainedAutoencoder.load(run).step == 4

    config = _latent_config(made, f"data.store={store}")
    space = LatentSpace.of_run(config)
    assert space.autoencoder.step == ClipStore.open(store).extra["autoencoder"]["step"] == 2
    latents = ClipStore.open(store).read(0).astype(np.float32)
    normalised = (latents - space.mean) / space.std
    expected = TrainedAutoencoder.load(run, 2).decode(latents)
    np.testing.assert_array_equal(space.to_pixels(normalised), expected)
    newest = TrainedAutoencoder.load(run).decode(latents)
    assert np.abs(newest.astype(int) - expected.astype(int)).max() > 0  # The step matters.
