"""read_video_end: a video's last frames, decoded without the rest of the file."""

import numpy as np
import pytest

from sora_jax.data import video_io
from sora_jax.data.video_io import read_video, read_video_end, write_video

FRAMES = 400  # libx264 puts keyframes at most 250 frames apart: the last one is in the second half.


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """A smooth 400-frame clip, each frame told apart by a bar as long as its index mod 64."""
    frames = np.zeros((FRAMES, 16, 64, 3), np.uint8)
    frames[..., 2] = 90
    for i in range(FRAMES):
        frames[i, 4:12, : i % 64 + 1] = 200
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    write_video(path, frames, 25.0)
    return path, read_video(path)[0]


@pytest.fixture
def decoded(monkeypatch):
    """Counts the frames the decoder gives, whoever asks for them."""
    count = [0]
    real = video_io._decoded

    def counting(container, stream):
        for item in real(container, stream):
            count[0] += 1
            yield item

    monkeypatch.setattr(video_io, "_decoded", counting)
    return count


@pytest.mark.parametrize("count", [1, 4, 30])
def test_the_last_frames_come_back_as_a_whole_decode_ends(long_video, decoded, count):
    path, whole = long_video
    frames, fps = read_video_end(path, count)
    np.testing.assert_array_equal(frames, whole[-count:])
    assert fps == 25.0
    # From the last keyframe before them, not from the start of the file.
    assert count <= decoded[0] < FRAMES // 2


def test_more_frames_than_the_video_has_give_all_of_them(long_video, decoded):
    path, whole = long_video
    frames, _ = read_video_end(path, FRAMES + 50)
    np.testing.assert_array_equal(frames, whole)
    assert decoded[0] == FRAMES


def test_a_still_image_and_a_gif_give_their_last_frames(tmp_path):
    clip = np.stack([np.full((8, 8, 3), 30 * i, np.uint8) for i in range(6)])
    write_video(tmp_path / "still.png", clip[:1], 1.0)
    write_video(tmp_path / "clip.gif", clip, 6.0)
    assert read_video_end(tmp_path / "still.png", 3)[0].shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(
        read_video_end(tmp_path / "clip.gif", 2)[0], read_video(tmp_path / "clip.gif")[0][-2:]
    )
    with pytest.raises(ValueError, match="count must be >= 1"):
        read_video_end(tmp_path / "clip.gif", 0)
    with pytest.raises(FileNotFoundError):
        read_video_end(tmp_path / "missing.mp4", 1)
