"""Ingest filters: scene cuts, letterbox crops, motion/brightness scores and perceptual hashes,
measured by the decoding worker and stored by prepare."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from sora_jax import cli
from sora_jax.data.clip_filters import (
    MIN_SCENE_SECONDS,
    SceneCuts,
    content_box,
    flagged,
    measure_clip,
    motion,
    phash,
)
from sora_jax.data.clip_shaping import ClipSettings, SkipSource, decode_source
from sora_jax.data.clip_store import PREPARE_KEY, ClipStore
from sora_jax.data.prepare import prepare
from sora_jax.data.video_io import read_video, write_video
from sora_jax.errors import ConfigError

VIDEOS = Path(__file__).parent / "videos"


def _texture(height: int, width: int, seed: int, sigma: float = 3.0) -> np.ndarray:
    """A smooth random RGB picture (optical flow needs texture to follow)."""
    noise = np.random.default_rng(seed).normal(size=(height, width, 3))
    smooth = gaussian_filter(noise, (sigma, sigma, 0), mode="wrap")
    return np.clip(128 + smooth / smooth.std() * 50, 0, 255).astype(np.uint8)


def _panning(frames: int, size: int, pixels_per_frame: int, seed: int = 0) -> np.ndarray:
    """``frames`` views of a wrapped texture, each shifted right by ``pixels_per_frame``."""
    picture = _texture(size, size, seed, sigma=size / 20)
    return np.stack([np.roll(picture, k * pixels_per_frame, axis=1) for k in range(frames)])


def test_motion_measures_how_fast_the_picture_moves():
    still = _panning(8, 64, 0)
    assert motion(still, 8.0) == pytest.approx(0.0, abs=1e-3)
    # 2 px a frame on a 64 px frame at 8 fps: a quarter of the frame a second.
    assert motion(_panning(8, 64, 2), 8.0) == pytest.approx(2 / 64 * 8, rel=0.2)
    # A larger frame is shrunk to 64 px first: 8 px a frame of 256 px is the same speed.
    assert motion(_panning(8, 256, 8), 8.0) == pytest.approx(2 / 64 * 8, rel=0.2)
    assert motion(_panning(8, 64, 2), 4.0) == pytest.approx(2 / 64 * 4, rel=0.2)  # Per second.
    assert motion(still[:1], 8.0) is None and motion(still, 0.0) is None  # One frame; an image.


def test_letterbox_bars_are_found_cropped_to_multiples_of_8_and_scored():
    picture = _panning(6, 64, 1)
    framed = np.zeros((6, 64, 80, 3), np.uint8)
    framed[:, 10:54, 8:72] = picture[:, :44]  # Bars: 10 rows top and bottom, 8 columns each side.
    framed[:, 2, 40] = 200  # A bright speck in a bar (a logo's pixel) leaves it a bar.
    assert content_box(framed) == (10, 54, 8, 72)
    measured = measure_clip(framed, 8.0, crop_letterbox=True)
    assert measured.cropped and measured.frames.shape == (6, 40, 64, 3)  # 44 rows -> 40, centred.
    np.testing.assert_array_equal(measured.frames, framed[:, 12:52, 8:72])
    assert measured.scores["letterbox"] == pytest.approx(1 - 44 * 64 / (64 * 80))
    kept = measure_clip(framed, 8.0, crop_letterbox=False)
    assert not kept.cropped and kept.frames.shape == framed.shape
    assert kept.scores["letterbox"] == measured.scores["letterbox"]
    # Not bars: a dark edge on one side only, a frame dark all over, dark rows in one frame only.
    one_side = framed.copy()
    one_side[:, 54:] = 100
    one_side[:, :, 72:] = 100
    assert content_box(one_side) is None
    assert content_box(np.zeros_like(framed)) is None
    fade = framed.copy()
    fade[0] = 90  # The first frame grey all over: the bars are not dark in every frame.
    assert content_box(fade) is None


def test_brightness_flags_and_the_phash_of_the_middle_frame():
    dark = (_panning(4, 32, 1) // 12).astype(np.uint8)  # Luma under 0.1.
    measured = measure_clip(dark, 8.0, crop_letterbox=True)
    assert measured.scores["brightness"] < 0.1 and "dark" in flagged(measured.scores)
    assert not measured.cropped  # Dark all over is no letterbox.
    assert flagged({"brightness": 0.5, "motion": 0.2, "letterbox": 0.0}) == []
    assert flagged({"brightness": 0.95, "motion": 0.001}) == ["bright", "static"]
    video = _panning(5, 64, 3)
    assert measure_clip(video, 8.0, True).phash == phash(video[2])
    # The hash is ImageHash's phash: 16 hex digits; a resized copy is near, another picture far.
    near = np.asarray(Image.fromarray(video[2]).resize((48, 48)))
    far = _texture(64, 64, seed=7)
    bits = [bin(int(phash(video[2]), 16) ^ int(phash(other), 16)).count("1") for other in (near, far)]
    assert len(phash(video[2])) == 16 and bits[0] <= 4 < 16 <= bits[1]


def test_scene_cuts_are_detected_on_the_frames_given():
    detector = SceneCuts()
    first, second = _panning(6, 64, 1, seed=1), _panning(6, 64, 1, seed=2)
    starts = [detector.starts_scene(frame) for frame in np.concatenate([first, second])]
    assert starts == [False] * 6 + [True] + [False] * 5
    wide = SceneCuts()  # Frames wider than PySceneDetect's working width are shrunk first.
    big = np.concatenate([_panning(3, 512, 4, seed=1), _panning(3, 512, 4, seed=2)])
    assert [wide.starts_scene(frame) for frame in big] == [False, False, False, True, False, False]
    # Black to a dark grey with a tint (hue and saturation jump) is no cut; to a lit frame it is.
    dark = SceneCuts()
    greys = [np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), (6, 8, 6), np.uint8)]
    assert [dark.starts_scene(frame) for frame in greys + [_texture(32, 32, seed=3)]] == [False, False, True]


_SETTINGS = ClipSettings(max_seconds=1.0, fps=8.0, max_area=64 * 64, min_side=16, max_input_pixels=1 << 24)


def test_no_clip_spans_a_cut_in_real_footage_and_short_scenes_are_dropped(tmp_path):
    # Two real shots joined (one cut), then a 2-frame flash of a third: two more cuts, and a scene
    # too short to keep.
    woman, _ = read_video(VIDEOS / "megamind_woman.avi", max_frames=30)
    cup, _ = read_video(VIDEOS / "cup.mp4", max_frames=30)
    shots = [
        np.stack([np.asarray(Image.fromarray(f).resize((64, 48))) for f in shot])
        for shot in (woman[::3], cup[::3][:9])
    ]
    flash = np.full((2, 48, 64, 3), 255, np.uint8)
    video = np.concatenate([shots[0], shots[1], flash, shots[1][::-1]])  # 10 + 9 + 2 + 9 frames.
    write_video(tmp_path / "joined.mp4", video, 8)
    decoded = decode_source(str(tmp_path / "joined.mp4"), str(tmp_path / "spool"), _SETTINGS, 0.0)
    assert decoded.fps == 8.0 and decoded.scene_cuts == 3
    assert (decoded.short_scenes, decoded.short_scene_frames) == (1, 2)
    assert 2 < MIN_SCENE_SECONDS * 8
    frames = [np.load(clip.file) for clip in decoded.clips]
    # Each scene is cut on its own: 10 frames of 8 a clip -> 5 + 5 (a short tail is merged and
    # split evenly); 9 -> 5 + 4 twice; the flash is gone.
    assert [len(f) for f in frames] == [5, 5, 5, 4, 5, 4]
    assert [clip.start for clip in decoded.clips] == pytest.approx(
        [0, 5 / 8, 10 / 8, 15 / 8, 21 / 8, 26 / 8], abs=1e-6
    )
    for clip, pixels in zip(decoded.clips, frames, strict=True):
        assert set(clip.scores) == {"motion", "brightness", "letterbox"} and len(clip.phash) == 16
        assert clip.phash == phash(pixels[len(pixels) // 2])
    # The two halves of the cup shot (one reversed) look alike; the woman does not.
    distance = [
        bin(int(decoded.clips[i].phash, 16) ^ int(decoded.clips[2].phash, 16)).count("1") for i in (0, 5)
    ]
    assert distance[1] < distance[0]


def test_cuts_faster_than_a_scene_make_one_scene_and_a_lone_short_one_is_skipped(tmp_path):
    strobe = np.stack([_texture(32, 32, seed=k) for k in range(12)])  # Every frame a new shot.
    shot = _panning(6, 32, 1, seed=20)
    write_video(tmp_path / "strobe.mp4", np.concatenate([shot, strobe]), 8)
    decoded = decode_source(str(tmp_path / "strobe.mp4"), str(tmp_path / "a"), _SETTINGS, 0.0)
    # The shot, then the strobe as one scene of its own (8 + 4 frames).
    assert decoded.scene_cuts == 12 and decoded.short_scenes == 0
    assert [len(np.load(c.file)) for c in decoded.clips] == [6, 8, 4]
    assert [c.start for c in decoded.clips] == pytest.approx([0.0, 0.75, 1.75])
    # Three strobe frames: shorter than a scene, and nothing else.
    write_video(tmp_path / "flashes.mp4", strobe[:3], 8)
    with pytest.raises(SkipSource) as raised:
        decode_source(str(tmp_path / "flashes.mp4"), str(tmp_path / "b"), _SETTINGS, 0.0)
    assert raised.value.args[0] == "short_scenes" and "--no-scene-cuts" in raised.value.args[1]
    off = dataclasses.replace(_SETTINGS, scene_threshold=None)
    decoded = decode_source(str(tmp_path / "flashes.mp4"), str(tmp_path / "c"), off, 0.0)
    assert [len(np.load(c.file)) for c in decoded.clips] == [3] and decoded.scene_cuts == 0


def test_prepare_stores_scores_crops_bars_and_keeps_its_filter_settings(tmp_path, capsys):
    videos = tmp_path / "in"
    boxed = np.zeros((16, 64, 64, 3), np.uint8)
    boxed[:, 8:56] = _panning(16, 64, 2)[:, 8:56]  # Letterboxed: 8 black rows top and bottom.
    write_video(videos / "boxed.mp4", boxed, 8)
    write_video(videos / "dark.mp4", (_panning(16, 64, 0) // 12).astype(np.uint8), 8)
    for name in ("boxed", "dark"):
        (videos / f"{name}.txt").write_text(f"a {name} clip")
    out = tmp_path / "store"
    report = prepare(videos, out, workers=0, max_seconds=2.0, fps=8.0, max_area=64 * 64, audio_rate=None)
    assert report.clips_written == 2
    assert report.letterboxed == 1 and report.flagged == {"dark": 1, "static": 1}
    assert json.loads((out / "prepare_report.json").read_text())["flagged"] == report.flagged
    store = ClipStore.open(out)
    boxed_clip, dark_clip = store.record("boxed.mp4#0"), store.record("dark.mp4#0")
    assert boxed_clip.shape == (16, 48, 64, 3) and boxed_clip.scores["letterbox"] == pytest.approx(
        0.25, abs=0.02
    )
    assert boxed_clip.scores["motion"] == pytest.approx(2 / 64 * 8, rel=0.25)
    assert dark_clip.scores["brightness"] < 0.1 and dark_clip.scores["motion"] < 0.005
    assert dark_clip.phash == phash(store.read("dark.mp4#0")[8])
    assert store.extra[PREPARE_KEY]["scene_threshold"] == 27.0 and store.extra[PREPARE_KEY]["letterbox_crop"]

    # Resuming with other filter settings is refused, naming them; through the CLI too.
    shape = {"max_seconds": 2.0, "fps": 8.0, "max_area": 64 * 64, "audio_rate": None}
    with pytest.raises(ConfigError, match=r"--scene-threshold 27 -> --no-scene-cuts"):
        prepare(videos, out, workers=0, scene_threshold=None, **shape)
    args = [
        "prepare",
        "--input",
        str(videos),
        "--output",
        str(out),
        "--max-seconds",
        "2",
        "--max-area",
        "4096",
    ]
    assert cli.main([*args, "--no-audio", "--no-letterbox-crop"]) == 2
    assert "--letterbox-crop -> --no-letterbox-crop" in capsys.readouterr().err
    assert cli.main([*args, "--no-audio", "--scene-threshold", "0"]) == 2
    assert "--scene-threshold must be positive" in capsys.readouterr().err
    assert cli.main([*args, "--no-audio"]) == 0  # The stored settings: everything is done already.
    assert "0 clips" in capsys.readouterr().out
