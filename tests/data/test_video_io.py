"""Tests for sora_jax.data.video_io: round trips per container, metadata, atomicity, errors."""

import os
import pickle

import av
import numpy as np
import pytest

from sora_jax.data.video_io import (
    DecodedFrame,
    VideoDecodeError,
    VideoInfo,
    iter_frames,
    open_video,
    probe_video,
    read_video,
    write_video,
)


def _clip(t: int = 8, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth gradient background with a yellow square moving right: uint8 [t, h, w, 3]."""
    y, x = np.mgrid[:h, :w]
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = x * 255 // max(w - 1, 1)
        frames[i, ..., 1] = y * 255 // max(h - 1, 1)
        frames[i, ..., 2] = 40 + 20 * i
        s = max(min(h, w) // 4, 1)
        x0 = min(2 * i, w - s)
        frames[i, :s, x0 : x0 + s] = (250, 220, 20)
    return frames


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_mp4_round_trip(tmp_path):
    clip = _clip()
    path = tmp_path / "clip.mp4"
    write_video(path, clip, fps=24)
    frames, fps = read_video(path)
    assert frames.dtype == np.uint8 and frames.shape == clip.shape
    assert _mae(frames, clip) < 8
    assert fps == pytest.approx(24)
    # The square must move with the clip, not be averaged away.
    assert _mae(frames[-1], clip[-1]) < _mae(frames[-1], clip[0])


def test_mp4_odd_size_is_edge_padded_to_even(tmp_path):
    clip = _clip(t=3, h=33, w=47)
    path = tmp_path / "odd.mp4"
    write_video(path, clip, fps=10)
    frames, _ = read_video(path)
    assert frames.shape == (3, 34, 48, 3)
    assert _mae(frames[:, :33, :47], clip) < 8
    # Edge replication: the extra row/column repeats the last original one.
    assert _mae(frames[:, 33, :47], clip[:, 32]) < 8
    assert _mae(frames[:, :33, 47], clip[:, :, 46]) < 8


def test_mp4_tiny_clip(tmp_path):
    clip = _clip(t=4, h=16, w=16)
    write_video(tmp_path / "tiny.mp4", clip, fps=8)
    frames, _ = read_video(tmp_path / "tiny.mp4")
    assert frames.shape == clip.shape
    assert _mae(frames, clip) < 12


def test_gif_round_trip_loops_forever(tmp_path):
    clip = _clip()
    path = tmp_path / "clip.gif"
    write_video(path, clip, fps=12.5)  # 8 cs per frame: exactly representable.
    frames, fps = read_video(path)
    assert frames.shape == clip.shape
    assert _mae(frames, clip) < 16  # 256-colour palette plus dithering.
    assert fps == pytest.approx(12.5)
    assert b"NETSCAPE2.0\x03\x01\x00\x00" in path.read_bytes()  # Loop count 0 = forever.


def test_png_single_frame_is_lossless(tmp_path):
    clip = _clip(t=1, h=15, w=9)  # PNG keeps odd sizes.
    path = tmp_path / "still.png"
    write_video(path, clip, fps=1)
    frames, fps = read_video(path)
    np.testing.assert_array_equal(frames, clip)
    assert fps == 0.0
    assert probe_video(path) == VideoInfo(9, 15, 0.0, 1, 0.0, "png")
    assert probe_video(path).is_still
    with pytest.raises(ValueError, match="single frame"):
        write_video(tmp_path / "two.png", _clip(t=2), fps=1)


def test_non_integer_fps_survives(tmp_path):
    path = tmp_path / "ntsc.mp4"
    write_video(path, _clip(t=6), fps=30000 / 1001)
    _, fps = read_video(path)
    assert fps == pytest.approx(29.97, abs=1e-3)
    timestamps = [t for t, _ in iter_frames(path)]
    np.testing.assert_allclose(timestamps, np.arange(6) * 1001 / 30000, atol=1e-4)


def test_probe_video(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, _clip(t=10, h=32, w=48), fps=20)
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames, info.codec) == (48, 32, 10, "h264")
    assert info.fps == pytest.approx(20)
    assert info.duration == pytest.approx(0.5, abs=0.01)
    assert not info.is_still


def test_iter_frames_start_and_max_frames(tmp_path):
    path = tmp_path / "clip.mp4"
    clip = _clip(t=8)
    write_video(path, clip, fps=8)
    items = list(iter_frames(path, start=0.5))
    assert [t for t, _ in items] == pytest.approx([0.5, 0.625, 0.75, 0.875])
    assert items[0][1].shape == (48, 64, 3) and _mae(items[0][1], clip[4]) < 8
    frames, _ = read_video(path, max_frames=3)
    assert frames.shape == (3, 48, 64, 3)


def test_write_creates_parents_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "clip.mp4"
    write_video(path, _clip(t=2), fps=4)
    write_video(path, _clip(t=3), fps=4)  # Overwrite goes through the same rename.
    assert os.listdir(path.parent) == ["clip.mp4"]
    assert read_video(path)[0].shape[0] == 3


def test_open_video_converts_and_shrinks_frames_on_request(tmp_path):
    clip = _clip(t=8)  # 48 x 64
    path = tmp_path / "clip.mp4"
    write_video(path, clip, fps=8)
    with open_video(path) as video:
        assert video.path == str(path)
        assert video.info == probe_video(path)
        frames = list(video.frames(start=0.5))
    assert all(isinstance(f, DecodedFrame) for f in frames)
    assert [f.time for f in frames] == pytest.approx([0.5, 0.625, 0.75, 0.875])
    first = frames[0]
    assert (first.height, first.width) == (48, 64)
    # Frames convert after the file is closed: a resampler may keep one past the last decode.
    rgb = first.to_rgb()
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3) and _mae(rgb, clip[4]) < 8
    np.testing.assert_array_equal(rgb, dict(iter_frames(path))[0.5])
    small = first.to_rgb(24, 32)
    assert small.dtype == np.uint8 and small.shape == (24, 32, 3)
    # Area averaging: each output pixel is the mean of the 2 x 2 input pixels it covers.
    pooled = clip[4].reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    assert _mae(small, pooled) < 8
    for size in ({"height": 24}, {"width": 32}, {"height": 0, "width": 32}):
        with pytest.raises(ValueError, match="height"):
            first.to_rgb(**size)


def test_open_video_still_image_and_errors(tmp_path):
    still = tmp_path / "still.png"
    image = _clip(t=1, h=15, w=9)
    write_video(still, image, fps=1)
    with open_video(still) as video:
        assert video.info.is_still
        frames = list(video.frames())
    assert len(frames) == 1
    np.testing.assert_array_equal(frames[0].to_rgb(), image[0])

    with pytest.raises(FileNotFoundError):
        with open_video(tmp_path / "missing.mp4"):
            pass
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoDecodeError, match="notes.mp4"):
        with open_video(text) as video:
            list(video.frames())
    good = tmp_path / "good.mp4"
    write_video(good, _clip(), fps=24)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        with open_video(truncated) as video:
            for frame in video.frames():
                frame.to_rgb()
    # Errors of the caller's own pass through the block unchanged.
    with pytest.raises(KeyError):
        with open_video(good):
            raise KeyError("caller")


def test_failed_encode_keeps_target_untouched(tmp_path, monkeypatch):
    def broken_open(f, *args, **kwargs):
        f.write(b"partial mp4 bytes")
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(av, "open", broken_open)
    new, old = tmp_path / "new.mp4", tmp_path / "old.mp4"
    old.write_bytes(b"previous")
    for path in (new, old):
        with pytest.raises(RuntimeError, match="encoder crashed"):
            write_video(path, _clip(t=2), fps=4)
    assert sorted(os.listdir(tmp_path)) == ["old.mp4"]
    assert old.read_bytes() == b"previous"


def test_corrupt_files_raise_video_decode_error(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, _clip(), fps=24)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    for path in (truncated, text):
        for fn in (read_video, probe_video, lambda p: list(iter_frames(p))):
            with pytest.raises(VideoDecodeError, match=path.name):
                fn(path)
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    err = pickle.loads(pickle.dumps(VideoDecodeError("x.mp4", "bad")))
    assert (err.path, err.reason) == ("x.mp4", "bad") and isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("name", "frames", "fps", "match"),
    [
        ("a.mp4", np.zeros((2, 8, 8, 3), np.float32), 4, "uint8"),
        ("a.mp4", np.zeros((8, 8, 3), np.uint8), 4, "shape"),
        ("a.mp4", np.zeros((2, 8, 8, 4), np.uint8), 4, "shape"),
        ("a.mp4", np.zeros((0, 8, 8, 3), np.uint8), 4, "shape"),
        ("a.avi", np.zeros((2, 8, 8, 3), np.uint8), 4, "suffix"),
        ("a.mp4", np.zeros((2, 8, 8, 3), np.uint8), 0, "fps"),
        ("a.gif", np.zeros((2, 8, 8, 3), np.uint8), 120, "fps"),
    ],
)
def test_write_rejects_bad_input(tmp_path, name, frames, fps, match):
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / name, frames, fps)
    assert os.listdir(tmp_path) == []
