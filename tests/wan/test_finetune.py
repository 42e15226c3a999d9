"""LoRA fine-tuning of a Wan pipeline, end to end through the commands a user runs, on the tiny random
pipeline diffusers wrote (``data/tiny_pipeline``):

    sora-jax encode --autoencoder WAN_DIR --world N --text-encoder WAN_DIR --output LATENTS
    sora-jax train --config experiments/wan2_1_t2v_1_3b.py:test --config.wan.pretrained=WAN_DIR ...
    sora-jax export --workdir RUN --out DIR ; sora-jax sample --workdir DIR ...

The loss falls, a resumed run ends bit for bit where an uninterrupted one does, and the exported
directory loads (with our loader, and is what diffusers reads) to the same outputs as the run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from sora_jax.cli import main
from sora_jax.config import load_config
from sora_jax.data.clip_store import STATS_KEY, ClipStore
from sora_jax.errors import ConfigError
from sora_jax.train.trained_run import TrainedRun
from sora_jax.wan.pipeline import WanPipeline

TINY = Path(__file__).parent / "data" / "tiny_pipeline"
EXPERIMENT = "experiments/wan2_1_t2v_1_3b.py:test"


def train(workdir: Path, store: Path, steps: int, *extra: str) -> None:
    args = ["train", "--config", EXPERIMENT, "--workdir", str(workdir)]
    args += [
        f"--config.wan.pretrained={TINY}",
        f"--config.data.store={store}",
        f"--config.train.steps={steps}",
    ]
    assert main([*args, *extra]) == 0


def losses(workdir: Path) -> list[float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    """12 physics-world clips through the tiny pipeline's Wan VAE and UMT5 encoder."""
    out = tmp_path_factory.mktemp("wan") / "latents"
    args = ["encode", "--autoencoder", str(TINY), "--world", "12", "--frames", "9", "--height", "32"]
    args += ["--width", "48", "--text-encoder", str(TINY), "--caption-tokens", "16", "--output", str(out)]
    assert main(args) == 0
    return out


def test_encode_keeps_wan_latents_and_umt5_states_with_wans_own_statistics(latents):
    store = ClipStore.open(str(latents))
    assert len(store) == 12 and store.channels == 4
    assert store.read(0).shape == (3, 4, 6, 4)  # 9 x 32 x 48 pixels -> 3 x 4 x 6 latents
    assert store.caption_dim == 32  # The tiny UMT5's width.
    vae = json.loads((TINY / "vae" / "config.json").read_text())
    assert store.extra[STATS_KEY]["mean"] == vae["latents_mean"]  # Not the store's own statistics.
    assert store.extra[STATS_KEY]["std"] == vae["latents_std"]


def test_encode_takes_a_prepared_store_with_umt5_states_through_the_wan_vae(tmp_path):
    """The path of real videos: a pixel store whose captions ``prepare --text-encoder WAN_DIR``
    embedded, encoded into Wan latents that keep those states."""
    from sora_jax.data import world
    from sora_jax.text.embedder import CaptionEmbedder
    from sora_jax.wan.autoencoder import WanAutoencoder

    embedder = CaptionEmbedder(TINY, 16)
    pixels = ClipStore.create(
        tmp_path / "pixels", caption_dim=embedder.dim, caption_encoder=embedder.description
    )
    clips = [world.make_clip(5, i, frames=11, height=40, width=40, fps=8.0) for i in range(2)]
    for i, clip in enumerate(clips):
        pixels.append(
            clip.frames,
            clip_id=f"clip{i}",
            fps=8.0,
            caption=clip.caption,
            source="world",
            start=0.0,
            caption_embedding=embedder(clip.caption),
        )
    pixels.flush()
    out = tmp_path / "latents"
    assert (
        main(
            ["encode", "--autoencoder", str(TINY), "--input", str(tmp_path / "pixels"), "--output", str(out)]
        )
        == 0
    )
    latents, vae = ClipStore.open(str(out)), WanAutoencoder.load(TINY)
    for i, clip in enumerate(clips):  # 11 frames of 40 x 40 -> the first 9, centre 40 x 40: 3 x 5 x 5.
        np.testing.assert_allclose(latents.read(i), vae.encode(clip.frames), rtol=2e-3, atol=2e-3)
        np.testing.assert_array_equal(latents.read_caption_embedding(i), pixels.read_caption_embedding(i))
    assert latents.read(0).shape == (3, 5, 5, 4)


@pytest.fixture(scope="module")
def runs(latents, tmp_path_factory) -> tuple[Path, Path]:
    """A 16-step LoRA run (checkpoints at 8 and 16), and a copy of it taken back to step 8, as a
    run stopped there would be, then resumed to 16."""
    root = tmp_path_factory.mktemp("runs")
    whole, resumed = root / "whole", root / "resumed"
    train(whole, latents, 16, "--config.checkpoint.every=8")
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "16")
    train(resumed, latents, 16, "--config.checkpoint.every=8")
    return whole, resumed


def test_lora_fine_tuning_lowers_the_loss_and_resumes_exactly(runs):
    whole, resumed = runs
    loss = losses(whole)
    assert len(loss) == 16
    assert np.mean(loss[-4:]) < np.mean(loss[:4]), loss
    assert losses(resumed) == loss  # Same batches, noise and updates after the resume.
    with TrainedRun(whole) as a, TrainedRun(resumed) as b:
        assert a.steps() == b.steps() and a.steps()[-1] == 16
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params()), jax.device_get(b.params()))
        adapters = jax.device_get(a.params())
    assert all(
        "lora_" in "".join(map(str, path)) for path, _ in jax.tree_util.tree_flatten_with_path(adapters)[0]
    )


def test_export_then_load_gives_the_runs_outputs(runs, tmp_path):
    whole, _ = runs
    out = tmp_path / "finetuned"
    assert main(["export", "--workdir", str(whole), "--out", str(out)]) == 0
    for part in ("model_index.json", "transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / part).exists(), part
    kwargs = dict(frames=5, height=32, width=32, steps=2, guidance=3.0, seed=7)
    with TrainedRun(whole) as run:
        ours = WanPipeline.from_run(run.kind, run.params()).generate("a red ball falls", **kwargs)
    exported = WanPipeline.from_pretrained(out).generate("a red ball falls", **kwargs)
    np.testing.assert_array_equal(exported, ours)
    base = WanPipeline.from_pretrained(TINY).generate("a red ball falls", **kwargs)
    assert np.abs(base.astype(int) - ours).max() > 0  # The fine-tuning did change the model.


def test_sample_of_a_fine_tuned_run_uses_its_sample_size_and_checkpoints(runs, tmp_path):
    from sora_jax.data.video_io import read_video

    whole, _ = runs
    out = tmp_path / "s.mp4"
    args = ["sample", "--workdir", str(whole), "--prompt", "a red ball falls", "--steps", "2"]
    assert main([*args, "--step", "8", "--out", str(out)]) == 0
    frames = read_video(out)
    frames = frames[0] if isinstance(frames, tuple) else frames
    assert frames.shape == (9, 32, 32, 3)  # train.sample_* of 3 x 4 x 4 latents, decoded by the Wan VAE.


def test_a_wan_run_refuses_a_guidance_interval_its_pipeline_cannot_follow(runs, tmp_path, capsys):
    whole, _ = runs
    args = ["sample", "--workdir", str(whole), "--prompt", "a red ball", "--out", str(tmp_path / "s.mp4")]
    assert main([*args, "--guidance-interval", "0.3", "1"]) == 2
    assert "--guidance-interval: a Wan directory's pipeline guides at every step" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'diffusion.guidance_interval': a Wan run samples through"):
        load_config(EXPERIMENT, [f"wan.pretrained={TINY}", "diffusion.guidance_interval=(0.3,1.0)"])


def test_a_wan_config_refuses_joint_text_attention_by_name():
    with pytest.raises(
        ConfigError, match="'model.text_attention': Wan's transformer reads its caption by cross"
    ):
        load_config(EXPERIMENT, [f"wan.pretrained={TINY}", "model.text_attention=joint"])


def test_export_refuses_to_overwrite_the_pretrained_directory(runs, capsys):
    whole, _ = runs
    assert main(["export", "--workdir", str(whole), "--out", str(TINY)]) == 2
    assert "pretrained directory" in capsys.readouterr().err


def test_full_fine_tuning_starts_from_the_pretrained_weights(latents, tmp_path):
    """Every parameter trains (FSDP over the 8 devices), starting from the directory's weights."""
    config = load_config(
        "experiments/wan2_1_t2v_1_3b.py:test",
        [
            f"wan.pretrained={TINY}",
            f"data.store={latents}",
            "lora.rank=0",
            "mesh.ici_data=1",
            "mesh.ici_fsdp=-1",
        ],
    )
    from sora_jax.kinds.registry import run_kind
    from sora_jax.parallel.mesh import make_mesh
    from sora_jax.train.state import create_train_state
    from sora_jax.wan.transformer_weights import load_transformer

    mesh = make_mesh(config)
    with jax.set_mesh(mesh):
        _, state, _ = create_train_state(config, mesh, run_kind(config))
    assert state.frozen is None
    expected = load_transformer(TINY, jax.eval_shape(lambda: state.params))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), jax.device_get(expected))
    mlp = [a for p, a in jax.tree_util.tree_flatten_with_path(state.params)[0] if "mlp_in" in str(p)]
    assert any(not a.sharding.is_fully_replicated for a in mlp)  # Sharded as it loaded.
    train(tmp_path / "full", latents, 2, "--config.lora.rank=0")
    assert len(losses(tmp_path / "full")) == 2
