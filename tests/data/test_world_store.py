"""Physics-world clips into a pixel store with a frozen encoder's caption states (`prepare --world`),
and a pixel DiT that reads those states: trains on the store and samples from a prompt."""

import json

import numpy as np
import pytest

from sora_jax.cli import main
from sora_jax.data import world
from sora_jax.data.clip_store import ClipStore
from sora_jax.data.video_io import read_video
from sora_jax.data.world_store import write_world_store
from sora_jax.text.embedder import CaptionEmbedder
from sora_jax.text.tiny import write_tiny_bert

CLIPS = 6
SHAPE = ["--frames", "8", "--height", "24", "--width", "24", "--seed", "3"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(tiny BERT directory, world store of CLIPS clips with its caption states), made by the command."""
    root = tmp_path_factory.mktemp("world_store")
    bert, store = write_tiny_bert(root / "tiny-bert"), root / "world"
    args = ["prepare", "--world", str(CLIPS), "--output", str(store), *SHAPE]
    assert main([*args, "--text-encoder", str(bert), "--caption-tokens", "8"]) == 0
    return bert, store


def test_prepare_world_stores_the_worlds_clips_captions_and_caption_states(made):
    bert, path = made
    store = ClipStore.open(path)
    assert (store.dtype, store.channels, len(store), store.caption_dim) == (np.uint8, 3, CLIPS, 32)
    assert store.extra["world"] == {"seed": 3, "shape": [8, 24, 24], "fps": [4.0, 8.0]}
    embed = CaptionEmbedder(bert, 8)
    rates = set()
    for index, record in enumerate(store.records):
        clip = world.make_clip(3, index, frames=8, height=24, width=24, fps=record.fps)
        assert record.clip_id == f"world/3/{index}" and record.source == "world"
        assert record.caption == clip.caption
        np.testing.assert_array_equal(store.read(index), clip.frames)
        states = store.read_caption_embedding(index)
        assert states.shape[0] <= 8
        np.testing.assert_allclose(states, embed(clip.caption), atol=2e-3, rtol=2e-3)  # Kept in float16.
        rates.add(record.fps)
    assert len(rates) == CLIPS and all(4.0 <= r <= 8.0 for r in rates)  # Each clip its own rate.


def test_a_rerun_resumes_and_other_settings_or_shards_are_refused(made, tmp_path, capsys):
    bert, _ = made
    path = tmp_path / "world"
    args = ["prepare", "--output", str(path), *SHAPE]
    assert main([*args, "--world", "3"]) == 0
    capsys.readouterr()
    assert main([*args, "--world", "5"]) == 0
    assert "2 world clips written" in capsys.readouterr().out and len(ClipStore.open(path)) == 5
    assert [r.clip_id for r in ClipStore.open(path).records] == [f"world/3/{i}" for i in range(5)]
    # Other clips, other caption states, a shard, no clips: each refused by name, nothing written.
    assert main([*args, "--seed", "4", "--world", "5"]) == 2  # The last --seed counts.
    assert "holds world clips of {'seed': 3, 'shape': [8, 24, 24]" in capsys.readouterr().err
    assert main([*args, "--world", "5", "--text-encoder", str(bert)]) == 2
    assert "caption embeddings" in capsys.readouterr().err
    assert main([*args, "--world", "5", "--shard", "0", "--num-shards", "2"]) == 2
    assert "--world renders its clips on one host" in capsys.readouterr().err
    assert main(["prepare", "--output", str(tmp_path / "none"), "--world", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert len(ClipStore.open(path)) == 5
    with pytest.raises(ValueError, match="not physics-world clips"):
        plain = ClipStore.create(tmp_path / "plain")
        plain.append(
            np.zeros((1, 8, 8, 3), np.uint8), clip_id="a", fps=8.0, caption="", source="s", start=0.0
        )
        plain.flush()
        write_world_store(2, str(tmp_path / "plain"))


def test_a_pixel_dit_reads_the_frozen_encoders_states_of_a_world_store(made, tmp_path, capsys):
    """world_tiny's test scale, trained on the store with the frozen encoder, then sampled from a
    prompt the encoder embeds (the store's token limit)."""
    bert, store = made
    workdir = tmp_path / "frozen"
    overrides = [f"--config.data.store={store}", f"--config.model.text_encoder={bert}"]
    assert (
        main(["train", "--config", "experiments/world_tiny.py:test", "--workdir", str(workdir), *overrides])
        == 0
    )
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite([line["loss"] for line in lines if "loss" in line]).all()
    out = tmp_path / "ball.mp4"
    capsys.readouterr()
    assert main([
        "sample", "--workdir", str(workdir), "--prompt", "a large red ball falls", "--frames", "4",
        "--height", "16", "--width", "16", "--steps", "2", "--out", str(out),
    ]) == 0  # fmt: skip
    assert read_video(out)[0].shape == (4, 16, 16, 3)
    # A frozen encoder on the world alone (no store) is refused, with the command that makes one.
    assert main(["train", "--config", "experiments/world_tiny.py:test", "--workdir", str(tmp_path / "w"),
                 f"--config.model.text_encoder={bert}"]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert "model.text_encoder': a frozen text encoder needs data.store" in error
    assert "sora-jax prepare --world N --text-encoder DIR" in error
