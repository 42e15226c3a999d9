"""Every ``sora-jax sample`` mode end to end on a tiny checkpoint trained with all conditioning tasks
(world_small:test: world_small's task mix, on a model of seconds).

It has temporal patches of 2 frames, so what is given is whole pairs of frames, except an image,
which is given as one frame inside a generated pair (``conditioning.frame_level``); given frames
come back exactly (they are put back clean), the rest is generated.
"""

import json

import numpy as np
import pytest
from PIL import Image

from sora_jax.cli import main
from sora_jax.data import world
from sora_jax.data.video_io import read_video, write_video
from sora_jax.eval.world_eval import WorldEvaluation
from sora_jax.eval.world_score import SCORES
from sora_jax.train.state import model_graphdef
from sora_jax.train.trained_run import local_config

SIZE = ["--height", "16", "--width", "16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    # ``sora-jax train`` in this process: the tests here are about sampling from what it writes.
    argv = ["train", "--config", "experiments/world_small.py:test", "--workdir", str(root / "run")]
    assert main([*argv, "--config.conditioning.frame_level=True"]) == 0
    clips = [world.make_clip(7, i, frames=8, height=16, width=16, fps=6.0).frames for i in range(2)]
    for name, clip in zip(("a", "b"), clips, strict=True):
        write_video(root / f"{name}.mp4", clip, 6.0)
        Image.fromarray(clip[0]).save(root / f"{name}.png")
    return root, clips


def _error(a, b) -> float:
    """Mean absolute difference in levels (outputs are mp4: lossy by a few levels)."""
    return float(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).mean())


def _sample(root, out, *args):
    argv = ["sample", "--workdir", str(root / "run"), "--prompt", "a red ball", "--steps", "2"]
    assert main([*argv, *SIZE, "--out", str(root / out), *args]) == 0
    return read_video(root / out)[0]


def test_image_to_video_starts_with_the_image(run):
    root, clips = run
    frames = _sample(root, "i2v.mp4", "--frames", "8", "--image", str(root / "a.png"))
    assert frames.shape == (8, 16, 16, 3)
    # The mp4 is lossy: compare within a few levels (a different image would be far off).
    assert _error(frames[0], clips[0][0]) < 6
    assert _error(frames[0], clips[1][0]) > 3 * _error(frames[0], clips[0][0])
    # The image is one frame: the rest of its temporal patch is generated, not a copy of it.
    assert _error(frames[1], frames[0]) > 3 * _error(frames[0], clips[0][0])


def test_extension_forward_and_backward_keep_the_given_frames(run):
    root, clips = run
    video = read_video(root / "a.mp4")[0]
    forward = _sample(root, "fwd.mp4", "--frames", "8", "--video", str(root / "a.mp4"), "--given-frames", "4")
    assert _error(forward[:4], video[-4:]) < 6  # The video's end, then new frames.
    backward = _sample(
        root, "bwd.mp4", "--frames", "8", "--video", str(root / "a.mp4"), "--extend", "backward",
        "--given-frames", "4", "--cond-guidance", "2.0",
    )  # fmt: skip
    assert _error(backward[-4:], video[:4]) < 6  # New frames, then the video's start.


def test_interpolation_and_connection_hold_both_ends(run):
    root, clips = run
    between = _sample(
        root, "int.mp4", "--frames", "8", "--interpolate", str(root / "a.png"), str(root / "b.png")
    )
    assert _error(between[0], clips[0][0]) < 6
    assert _error(between[-1], clips[1][0]) < 6
    a, b = read_video(root / "a.mp4")[0], read_video(root / "b.mp4")[0]
    joined = _sample(
        root, "con.mp4", "--frames", "12", "--connect", str(root / "a.mp4"), str(root / "b.mp4"),
        "--given-frames", "4",
    )  # fmt: skip
    assert _error(joined[:4], a[-4:]) < 6
    assert _error(joined[-4:], b[:4]) < 6


def test_edit_follows_the_input_more_at_lower_strength_and_images_are_one_frame(run):
    root, _ = run
    source = read_video(root / "a.mp4")[0]
    # A 4-step model's clean-clip guess is poor, so only a strength below diffusion.min_t keeps most of
    # the input: the start point and the truncated schedule are what is checked here.
    light = _sample(root, "light.mp4", "--frames", "8", "--edit", str(root / "a.mp4"), "--strength", "0.01")
    heavy = _sample(root, "heavy.mp4", "--frames", "8", "--edit", str(root / "a.mp4"), "--strength", "1.0")
    assert _error(light, source) < _error(heavy, source) / 2
    assert _sample(root, "image.mp4", "--frames", "1").shape == (1, 16, 16, 3)


def test_given_inputs_that_cannot_work_are_refused_by_name(run, capsys):
    root, _ = run
    argv = ["sample", "--workdir", str(root / "run"), "--prompt", "x", *SIZE, "--out", str(root / "x.mp4")]
    assert main([*argv, "--frames", "8", "--image", str(root / "missing.png")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    assert main([*argv, "--frames", "4", "--video", str(root / "a.mp4"), "--given-frames", "8"]) == 2
    assert "nothing is left to generate" in capsys.readouterr().err
    assert main([*argv, "--frames", "8", "--edit", str(root / "a.png")]) == 2
    assert "the video to edit gives 1 frames" in capsys.readouterr().err


def test_evaluate_world_scores_each_task_against_the_held_out_scenes(run, capsys):
    root, _ = run
    assert main(["evaluate", "--workdir", str(root / "run"), "--world"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    for task in ("text_to_video", "image_to_video", "extend_forward"):
        for score in (*SCORES, "overall"):
            value = result[f"world/{task}/{score}"]
            assert np.isnan(value) or 0.0 <= value <= 1.0, (task, score, value)
        assert result[f"world/{task}/fvd"] > 0  # Generated videos against the held-out clips.
    assert 0.0 <= result["world/overall"] <= 1.0 and np.isfinite(result["val_loss"])
    saved = json.loads((root / "run" / "eval" / f"step_{result['step']}.json").read_text())
    assert saved["world/overall"] == result["world/overall"]


def test_world_copy_baselines_hold_the_given_frames(run):
    root, _ = run
    config = local_config(root / "run")
    world_eval = WorldEvaluation(model_graphdef(config), config)
    assert world_eval.given_frames("text_to_video") == 0 and world_eval.given_frames("image_to_video") == 1
    assert world_eval.given_frames("extend_forward") == 2  # 4 frames: 2 groups of 2, the first given.
    # Copying the one given image and holding it is the frozen reference exactly.
    frozen = world_eval.references()["frozen"]
    assert world_eval.copy_baseline("image_to_video") == pytest.approx(frozen, nan_ok=True)
    with pytest.raises(ValueError, match="gives no frames"):
        world_eval.copy_baseline("text_to_video")


def test_guidance_outside_its_interval_samples_as_unguided(run):
    root, _ = run
    unguided = _sample(root, "g1.mp4", "--frames", "4", "--guidance", "1")
    # Every step's t is above 0: guidance confined to [0, 0] never acts.
    never = _sample(
        root, "g50_never.mp4", "--frames", "4", "--guidance", "50", "--guidance-interval", "0", "0"
    )
    guided = _sample(root, "g50.mp4", "--frames", "4", "--guidance", "50")
    np.testing.assert_array_equal(never, unguided)
    assert _error(guided, unguided) > 1.0
