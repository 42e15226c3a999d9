"""Sound end to end on a tiny checkpoint of world_av:test (sound on, every audio task in its mix):
the samples training writes, ``sora-jax sample`` making a video with its sound, the sound of a
given video (``--add-sound``) and the picture of a given sound (``--audio``), and the world
evaluation's sound scores."""

import wave

import av
import numpy as np
import pytest

from sora_jax.audio.codec import clip_samples
from sora_jax.cli import main
from sora_jax.data import world
from sora_jax.data.video_io import read_audio, read_video, write_video, write_wav
from sora_jax.data.world_audio import clip_audio
from sora_jax.eval.generate import make_generator
from sora_jax.eval.inputs import ClipLayout
from sora_jax.eval.world_eval import WorldEvaluation
from sora_jax.train.state import model_graphdef
from sora_jax.train.trained_run import TrainedRun, local_config

FPS = 8.0
SHAPE = ["--frames", "8", "--height", "16", "--width", "16", "--fps", "8", "--steps", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sound")
    # ``sora-jax train`` in this process: the tests here are about sampling from what it writes.
    assert main(["train", "--config", "experiments/world_av.py:test", "--workdir", str(root / "run")]) == 0
    clip = world.make_clip(7, 3, frames=8, height=16, width=16, fps=FPS)
    write_video(root / "given.mp4", clip.frames, FPS, audio=clip_audio(clip))
    write_wav(root / "given.wav", clip_audio(clip), 16000)
    return root, clip


def _streams(path) -> dict[str, float]:
    """Each stream's type -> its duration in seconds."""
    with av.open(str(path)) as container:
        return {s.type: float(s.duration * s.time_base) for s in container.streams}


def _sample(root, out, *args) -> None:
    argv = ["sample", "--workdir", str(root / "run"), "--prompt", "a red ball falls", *SHAPE]
    assert main([*argv, "--out", str(root / out), *args]) == 0


def test_training_writes_samples_with_their_sound(run):
    root, _ = run
    samples = root / "run" / "samples"
    mp4 = sorted(samples.glob("*.mp4"))[-1]
    assert mp4.with_suffix(".wav").is_file() and mp4.with_suffix(".gif").is_file()
    streams = _streams(mp4)
    assert set(streams) == {"video", "audio"}
    assert streams["audio"] == pytest.approx(streams["video"], abs=0.07)  # Within one AAC frame.


def test_sample_writes_an_mp4_with_sound_as_long_as_the_video_and_a_wav(run):
    root, _ = run
    _sample(root, "t2av.mp4")
    streams = _streams(root / "t2av.mp4")
    assert streams["video"] == pytest.approx(1.0)  # 8 frames at 8 fps.
    assert streams["audio"] == pytest.approx(1.0, abs=0.07)
    with wave.open(str(root / "t2av.wav")) as wav:
        assert (wav.getnframes(), wav.getframerate(), wav.getnchannels()) == (16000, 16000, 1)


def test_add_sound_keeps_the_video_and_makes_its_sound(run):
    root, clip = run
    _sample(root, "add.mp4", "--video", str(root / "given.mp4"), "--add-sound")
    given, made = read_video(root / "given.mp4")[0], read_video(root / "add.mp4")[0]
    # The given frames are kept (put back clean); both mp4s are lossy by a few levels.
    assert np.abs(made.astype(int) - given.astype(int)).mean() < 4
    sound = read_audio(root / "add.wav", sample_rate=16000, channels=1)
    assert sound.shape == (clip_samples(8, FPS, 16000), 1)


def test_audio_makes_a_picture_for_a_sound(run):
    root, _ = run
    _sample(root, "a2v.mp4", "--audio", str(root / "given.wav"))
    assert read_video(root / "a2v.mp4")[0].shape == (8, 16, 16, 3)
    assert set(_streams(root / "a2v.mp4")) == {"video", "audio"}


def test_given_sound_comes_back_and_the_made_one_fills_the_clip(run):
    root, clip = run
    config = local_config(root / "run")
    sound = clip_audio(clip)
    with TrainedRun(root / "run") as trained:
        params = trained.params(None)
    generate = make_generator(
        model_graphdef(config), config, frames=8, height=16, width=16, steps=2, guidance=4.0,
        method="euler", fps=FPS, with_sound=True,
    )  # fmt: skip
    layout = ClipLayout(8, 16, 16, 3, config.model.patch_size[0])
    video, made = generate(params, "a ball", 0, condition=layout.sound_only(sound))
    assert video.shape == (8, 16, 16, 3) and made.shape == sound.shape
    # What is given comes back through the codec: its tokens are put back clean, then decoded.
    codec = generate.layout.codec
    assert np.abs(made - codec.decode(codec.encode(sound), len(sound))).max() < 1e-5
    silent, _ = generate(params, "a ball", 0)  # Text to audio and video: both made.
    assert silent.shape == video.shape


def test_sound_flags_are_refused_where_they_cannot_work(run, tmp_path, capsys):
    root, _ = run
    argv = ["sample", "--workdir", str(root / "run"), "--prompt", "x", "--out", str(tmp_path / "o.mp4")]
    for args, message in (
        (["--add-sound"], "--add-sound makes the sound of a video: give --video FILE"),
        (
            ["--frames", "1", "--height", "16", "--width", "16", "--audio", str(root / "given.wav")],
            "one frame has no duration to sound over",
        ),
        ([*SHAPE, "--audio", str(root / "run" / "samples" / "step_000004_0.gif")], "has no audio stream"),
    ):
        assert main([*argv, *args]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_world_evaluation_scores_sound_per_task(run):
    root, _ = run
    config = local_config(root / "run")
    with TrainedRun(root / "run") as trained:
        params = trained.params(None)
    evaluation = WorldEvaluation(model_graphdef(config), config, tasks=("text_to_video",))
    assert evaluation.tasks == ("text_to_video", "video_to_audio")
    scores = evaluation.scores(params)
    for task in evaluation.tasks:
        for name in ("sound_count", "sound"):
            assert 0.0 <= scores[f"world/{task}/{name}"] <= 1.0
    assert "world/video_to_audio/overall" not in scores  # Its picture is the given one.
    assert scores["world/overall"] == scores["world/text_to_video/overall"]
    assert 0.0 <= scores["world/sound"] <= 1.0


def test_evaluate_writes_its_samples_with_their_sound(run):
    root, _ = run
    assert main(["evaluate", "--workdir", str(root / "run")]) == 0
    out = root / "run" / "eval"
    assert len(list(out.glob("step_*.json"))) == 1
    mp4 = sorted(out.glob("*.mp4"))[-1]
    assert mp4.with_suffix(".wav").is_file() and mp4.with_suffix(".gif").is_file()
    assert set(_streams(mp4)) == {"video", "audio"}
