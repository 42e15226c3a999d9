"""``sora-jax sample`` requests: bad flags are refused in one line before anything is loaded, and given
images and videos are read as documented (aspect kept, only the frames used decoded). No run is
trained here: refusals come before a run would be needed, or from a workdir holding only its config.
"""

import os

import numpy as np
import pytest
from PIL import Image

from sora_jax.cli import main
from sora_jax.config import config_to_json, load_config
from sora_jax.data.video_io import write_video
from sora_jax.errors import ConfigError
from sora_jax.eval.inputs import read_frames
from sora_jax.eval.requests import model_shape, validate_sample
from sora_jax.kinds.base import SampleRequest

SHAPE = {"frames": 4, "height": 16, "width": 16}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An image and a video to give, in a folder of their own."""
    root = tmp_path_factory.mktemp("given")
    clip = np.full((6, 16, 16, 3), 100, np.uint8)
    write_video(root / "a.mp4", clip, 6.0)
    Image.fromarray(clip[0]).save(root / "a.png")
    return root


BAD_REQUESTS = [
    ({"frames": 0, "height": 16, "width": 16}, "--frames 0: must be >= 1"),
    ({"frames": 4, "height": 16}, "give all of --frames, --height and --width"),
    ({"steps": -1}, "--steps -1: must be >= 1"),
    ({"steps": 0}, "--steps 0: must be >= 1"),
    ({"guidance": float("nan")}, "--guidance nan: must be a finite number"),
    ({"cond_guidance": float("inf"), "image": "a.png"}, "--cond-guidance inf: must be a finite number"),
    ({"edit": "a.mp4", "strength": float("nan")}, "--strength nan: must be a number in (0, 1]"),
    ({"edit": "a.mp4", "strength": 0.0}, "--strength 0.0: must be a number in (0, 1]"),
    ({"extend": "backward"}, "--extend backward extends a video: give --video FILE"),
    ({"extend": "sideways", "video": "a.mp4"}, "--extend 'sideways': must be one of forward, backward"),
    ({"given_frames": 4}, "--given-frames counts frames of given videos: give --video or --connect"),
    ({"video": "a.mp4", "given_frames": 0}, "--given-frames 0: must be >= 1"),
    ({"strength": 0.5}, "--strength is how much of a video --edit redoes: give --edit FILE"),
    ({"cond_guidance": 2.0}, "--cond-guidance scales the given frames"),
    ({"cond_guidance": 2.0, "edit": "a.mp4"}, "--cond-guidance scales the given frames"),
    ({"image": "a.png", "video": "a.mp4"}, "--image and --video: give one of them at most"),
    ({"image": "missing.png"}, "--image {root}/missing.png: no such file"),
    ({"interpolate": ("a.png", "missing.png")}, "--interpolate {root}/missing.png: no such file"),
    ({"connect": ("missing.mp4", "a.mp4")}, "--connect {root}/missing.mp4: no such file"),
    ({"edit": "missing.mp4"}, "--edit {root}/missing.mp4: no such file"),
    ({"seed": -1}, "--seed -1: must be an integer in 0 .. 4294967295"),
    ({"sampler": "rk4"}, "--sampler 'rk4': must be one of euler, heun"),
    ({"guidance_interval": (0.6, 0.2)}, "--guidance-interval 0.6 0.2: must be two times LO HI"),
    ({"guidance_interval": (0.0, 1.5)}, "--guidance-interval 0 1.5: must be two times LO HI"),
    ({"guidance_interval": (float("nan"), 1.0)}, "--guidance-interval nan 1: must be two times LO HI"),
]


def _in(root, fields: dict) -> dict:
    """``fields`` with file names made paths under ``root``."""

    def path(name):
        return str(root / name) if isinstance(name, str) and "." in name else name

    return {k: tuple(map(path, v)) if isinstance(v, tuple) else path(v) for k, v in fields.items()}


@pytest.mark.parametrize(("fields", "message"), BAD_REQUESTS, ids=[m.split(":")[0] for _, m in BAD_REQUESTS])
def test_a_request_that_cannot_work_is_refused_naming_its_flag(files, fields, message):
    with pytest.raises(ConfigError) as refused:
        SampleRequest("a red ball", **_in(files, fields)).validate()
    assert message.format(root=files) in str(refused.value)


def test_every_mode_with_its_inputs_is_accepted(files):
    for fields in (
        {},
        {"image": "a.png", "cond_guidance": 2.0},
        {"video": "a.mp4", "extend": "backward", "given_frames": 2},
        {"interpolate": ("a.png", "a.png")},
        {"connect": ("a.mp4", "a.mp4"), "given_frames": 2},
        {"edit": "a.mp4", "strength": 1.0},
        {**SHAPE, "steps": 1, "guidance": -1.0, "sampler": "heun", "seed": 2**32 - 1},
        {"guidance": 4.0, "guidance_interval": (0.3, 1.0)},
    ):
        SampleRequest("a red ball", **_in(files, fields)).validate()


@pytest.mark.parametrize(
    ("out", "fps", "message"),
    [
        ("clip", 8.0, "--out {root}/clip: must name an .mp4 file"),
        ("clip.gif", 8.0, "--out {root}/clip.gif: must name an .mp4 file"),
        ("clip.mp4", float("nan"), "--fps nan: must be a number of frames/s in [1/1001, 100]"),
        ("clip.mp4", 0.0, "--fps 0.0: must be a number"),
        ("clip.mp4", 120.0, "--fps 120.0: must be a number"),
        ("a.png/clip.mp4", 8.0, "--out {root}/a.png/clip.mp4: {root}/a.png is a file, not a folder"),
        ("a.png/new/clip.mp4", 8.0, "--out {root}/a.png/new/clip.mp4: {root}/a.png is a file, not"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_generating(files, out, fps, message):
    with pytest.raises(ConfigError) as refused:
        validate_sample(SampleRequest("x"), str(files / out), fps)
    assert str(refused.value).startswith(message.format(root=files))


def test_an_output_folder_that_takes_no_files_is_refused(tmp_path):
    # /proc takes no new files, even for root; a folder without write permission only for others.
    with pytest.raises(ConfigError, match="--out /proc/clip.mp4: cannot write in /proc"):
        validate_sample(SampleRequest("x"), "/proc/clip.mp4", 8.0)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(ConfigError, match="cannot write in"):
            validate_sample(SampleRequest("x"), str(locked / "new" / "clip.mp4"), 8.0)


def test_a_missing_output_folder_is_accepted_and_not_made_until_the_video_is(tmp_path):
    out = tmp_path / "new" / "deeper" / "clip.MP4"
    validate_sample(SampleRequest("x"), str(out), 8.0)
    assert list(tmp_path.iterdir()) == []  # Checked without writing anything.


@pytest.fixture(scope="module")
def config():
    return load_config("experiments/world_tiny.py:test")  # Patches of 4 x 4 x 4 pixels.


def test_sizes_are_checked_against_the_runs_patches(config):
    shape = dict(frames=5, height=32, width=12)
    assert model_shape(config, SampleRequest("x", **shape)) == (5, 32, 12)
    assert model_shape(config, SampleRequest("x")) == (
        config.train.sample_frames,
        config.train.sample_height,
        config.train.sample_width,
    )
    with pytest.raises(
        ConfigError, match=r"^--height 33: must be a multiple of 4 \(model.patch_size 4\), e.g. 32 or 36$"
    ):
        model_shape(config, SampleRequest("x", **{**shape, "height": 33}))
    with pytest.raises(ConfigError, match=r"^--width 2: must be a multiple of 4 .*e.g. 4$"):
        model_shape(config, SampleRequest("x", **{**shape, "width": 2}))


def test_a_latent_runs_sizes_are_checked_against_its_autoencoder_without_loading_it(config, tmp_path):
    autoencoder = tmp_path / "vae"  # A workdir with its config alone: no weights to load.
    autoencoder.mkdir()
    (autoencoder / "config.json").write_text(config_to_json(load_config("experiments/vae_world.py:test")))
    latent = config.copy_and_resolve_references()
    with latent.unlocked():
        latent.model.autoencoder = str(autoencoder)  # vae_world compresses 2 x 2 x 2.
    assert model_shape(latent, SampleRequest("x", frames=9, height=32, width=24)) == (5, 16, 12)
    with pytest.raises(ConfigError, match=r"^--frames 8: a latent run makes 1 \+ 2 k frames .* e.g. 7 or 9$"):
        model_shape(latent, SampleRequest("x", frames=8, height=32, width=24))
    message = (
        r"^--height 20: must be a multiple of 8 \(the autoencoder's spatial factor 2 x model.patch_size 4\)"
    )
    with pytest.raises(ConfigError, match=message):
        model_shape(latent, SampleRequest("x", frames=9, height=20, width=24))


def _sample(tmp_path, *args: str) -> list:
    return ["sample", "--workdir", str(tmp_path / "run"), "--prompt", "x", *args]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "0", "--height", "16", "--width", "16"], "--frames 0: must be >= 1"),
        (["--steps", "-1"], "--steps -1: must be >= 1"),
        (["--steps", "0"], "--steps 0: must be >= 1"),
        (["--guidance", "nan"], "--guidance nan: must be a finite number"),
        (["--extend", "backward"], "--extend backward extends a video: give --video FILE"),
        (["--fps", "inf"], "--fps inf: must be a number"),
    ],
)
def test_the_command_refuses_in_one_line_before_opening_the_run(tmp_path, capsys, args, message):
    """The workdir does not even exist: the refusal comes first, and nothing is written."""
    assert main([*_sample(tmp_path, *args), "--out", str(tmp_path / "out" / "clip.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sora-jax sample: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_the_command_refuses_an_out_without_suffix_and_an_unwritable_one(tmp_path, capsys):
    assert main([*_sample(tmp_path), "--out", str(tmp_path / "clip")]) == 2
    assert capsys.readouterr().err.startswith(
        f"sora-jax sample: --out {tmp_path / 'clip'}: must name an .mp4"
    )
    (tmp_path / "file").write_text("")
    assert main([*_sample(tmp_path), "--out", str(tmp_path / "file" / "clip.mp4")]) == 2
    assert f"{tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


def test_the_runs_patches_are_checked_before_its_checkpoints_are_looked_at(tmp_path, capsys, config):
    run = tmp_path / "run"  # The run's config and no checkpoint: the size is refused first.
    run.mkdir()
    (run / "config.json").write_text(config_to_json(config))
    out = str(tmp_path / "clip.mp4")
    assert main([*_sample(tmp_path, "--frames", "4", "--height", "33", "--width", "16"), "--out", out]) == 2
    assert (
        capsys.readouterr().err
        == "sora-jax sample: --height 33: must be a multiple of 4 (model.patch_size 4), e.g. 32 or 36\n"
    )


def test_a_given_image_keeps_its_aspect_ratio(tmp_path):
    """A wide image fitted to a square clip is its centre, not the whole image squashed."""
    image = np.zeros((16, 48, 3), np.uint8)
    image[:, :16, 0] = image[:, 16:32, 1] = image[:, 32:, 2] = 255  # Red, green, blue thirds.
    Image.fromarray(image).save(tmp_path / "wide.png")
    fitted = read_frames(tmp_path / "wide.png", 16, 16)
    assert fitted.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(fitted[0], image[:, 16:32])  # All green.
    # Scaled to cover: a 2:1 clip from the 3:1 image keeps its height and the middle 32 columns.
    tall = read_frames(tmp_path / "wide.png", 32, 64)
    assert tall.shape == (1, 32, 64, 3)
    assert (tall[0, :, :8, 0] > 200).all() and (tall[0, :, 24:40, 1] > 200).all()


def test_a_given_videos_first_or_last_frames_are_read(tmp_path):
    frames = np.stack([np.full((8, 8, 3), 10 * i, np.uint8) for i in range(20)])
    write_video(tmp_path / "v.mp4", frames, 8.0)
    last = read_frames(tmp_path / "v.mp4", 8, 8, 3, from_end=True)
    first = read_frames(tmp_path / "v.mp4", 8, 8, 3)
    assert (
        np.abs(last.astype(int) - frames[-3:]).max() <= 3
        and np.abs(first.astype(int) - frames[:3]).max() <= 3
    )
