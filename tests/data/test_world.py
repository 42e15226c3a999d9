"""Properties of the built-in physics world that training and evaluation rely on."""

import json
import re

import numpy as np
import pytest

from sora_jax.data.world import COLOURS, PILLAR_COLOURS, WorldClip, make_clip

_COUNTS = {"once": 1, "twice": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}


def _extent(obj: dict) -> float:
    return obj["radius"] if obj["kind"] == "ball" else obj["half_size"]


def _clause(clip: WorldClip, obj: dict) -> str:
    """The part of the caption about ``obj``; objects have distinct colours, so this is unique."""
    name = f"{obj['size']} {obj['colour']} {obj['kind']}"
    (part,) = [p for p in clip.caption.split(";") if name in p]
    return part


def _bounces_said(clip: WorldClip, obj: dict) -> int:
    match = re.search(r"bounces(?: on the floor)? (once|twice|\w+ times)", _clause(clip, obj))
    return _COUNTS[match.group(1).split()[0]] if match else 0


def _bounces_seen(clip: WorldClip, n: int, height: int) -> int:
    """Turns from falling to rising in the pixel track, close enough to the floor to be impacts.

    Near the floor means within one frame's travel at the highest possible impact speed.
    """
    obj, world = clip.scene["objects"][n], clip.scene["world"]
    y = clip.positions[:, n, 1]  # pixels, growing downward
    resting = (1.0 - world["floor"] - _extent(obj)) * height
    reach = np.sqrt(2.0 * world["gravity"]) * height / clip.fps
    dy = np.diff(y)
    turns = [k for k in range(1, len(dy)) if dy[k - 1] > 0 > dy[k] and resting - y[k] <= reach]
    return len(turns)


def test_same_arguments_give_identical_clip():
    args = dict(frames=8, height=32, width=48, fps=8.0)
    first = make_clip(3, 11, **args)
    make_clip(3, 12, **args)  # no hidden state carried between calls
    again = make_clip(3, 11, **args)
    assert first.frames.tobytes() == again.frames.tobytes()
    assert first.positions.tobytes() == again.positions.tobytes()
    assert np.array_equal(first.visible, again.visible)
    assert first.caption == again.caption
    assert first.scene == again.scene


def test_different_index_or_seed_gives_different_clip():
    args = dict(frames=4, height=32, width=32, fps=8.0)
    base = make_clip(0, 0, **args)
    for other in (make_clip(0, 1, **args), make_clip(1, 0, **args)):
        assert not np.array_equal(base.frames, other.frames)
        assert base.scene != other.scene


@pytest.mark.parametrize(
    ("frames", "height", "width"),
    [(1, 16, 16), (1, 24, 64), (7, 32, 48), (16, 64, 24), (32, 16, 32)],
)
def test_shapes_dtypes_and_caption_form(frames, height, width):
    clip = make_clip(0, 5, frames=frames, height=height, width=width, fps=12.0)
    n = len(clip.scene["objects"])
    assert 1 <= n <= 3
    assert clip.frames.shape == (frames, height, width, 3) and clip.frames.dtype == np.uint8
    assert clip.positions.shape == (frames, n, 2) and clip.positions.dtype == np.float32
    assert clip.visible.shape == (frames, n) and clip.visible.dtype == np.bool_
    assert clip.fps == 12.0
    assert json.loads(json.dumps(clip.scene)) == clip.scene
    assert clip.scene["world"]["aspect"] == width / height
    assert re.fullmatch(r"[a-z ,;]+", clip.caption)


def test_still_image_caption_has_no_motion():
    for index in range(10):
        clip = make_clip(0, index, frames=1, height=32, width=32, fps=8.0)
        assert not re.search(r"falls|drops|bounces|rolls|slides|pans|moves|behind", clip.caption)
        for obj in clip.scene["objects"]:
            assert f"{obj['size']} {obj['colour']} {obj['kind']}" in clip.caption


def test_same_scene_at_two_resolutions():
    small = make_clip(2, 7, frames=12, height=32, width=48, fps=10.0)
    large = make_clip(2, 7, frames=12, height=64, width=96, fps=10.0)
    assert small.scene == large.scene
    assert small.caption == large.caption
    np.testing.assert_allclose(large.positions, 2.0 * small.positions, rtol=1e-6, atol=1e-4)
    assert np.array_equal(small.visible, large.visible)


def test_fps_samples_the_same_trajectory():
    slow = make_clip(4, 2, frames=10, height=32, width=32, fps=10.0)
    fast = make_clip(4, 2, frames=20, height=32, width=32, fps=20.0)
    np.testing.assert_array_equal(fast.positions[::2], slow.positions)


def test_falling_object_accelerates_at_scene_gravity():
    height, fps, checked = 64, 30.0, 0
    for index in range(30):
        clip = make_clip(0, index, frames=16, height=height, width=64, fps=fps)
        world = clip.scene["world"]
        for n, obj in enumerate(clip.scene["objects"]):
            resting = (1.0 - world["floor"] - _extent(obj)) * height
            if obj["velocity"][1] != 0.0 or resting - clip.positions[0, n, 1] < 10:
                continue  # only objects dropped from rest well above the floor
            y = clip.positions[:, n, 1].astype(np.float64)
            # Free fall lasts until the first impact, on the floor or on another object; after
            # it the track stops curving downward.
            stopped = np.flatnonzero(np.diff(y, 2) <= 0.0)
            end = stopped[0] + 1 if stopped.size else len(y)
            if end < 5:
                continue
            t = np.arange(end) / fps
            accel = 2.0 * np.polyfit(t, y[:end], 2)[0]  # pixels / s^2, downward
            assert accel == pytest.approx(world["gravity"] * height, rel=0.01), index
            checked += 1
    assert checked >= 5


def test_caption_bounce_count_matches_trajectory():
    height, counted = 64, []
    for index in range(40):
        clip = make_clip(0, index, frames=48, height=height, width=64, fps=40.0)
        for n, obj in enumerate(clip.scene["objects"]):
            said = _bounces_said(clip, obj)
            assert said == _bounces_seen(clip, n, height), (index, clip.caption)
            counted.append(said)
    assert max(counted) >= 2 and counted.count(0) > 0  # the check saw both cases


def test_object_passing_behind_pillar_disappears_and_reappears():
    passes = 0
    for index in range(60):
        clip = make_clip(0, index, frames=24, height=32, width=48, fps=12.0)
        pillar = clip.scene["occluder"]
        for n, obj in enumerate(clip.scene["objects"]):
            clause = _clause(clip, obj)
            shown = clip.visible[:, n]
            if re.search(r"comes out|reappears", clause):
                gone = np.flatnonzero(~shown)
                assert gone.size and shown[: gone[0]].any() and shown[gone[0] :].any(), clause
                passes += 1
            elif re.search(r"disappears|stays hidden", clause):
                assert shown.any() and not shown[-1], clause
            if pillar is None:
                assert "pillar" not in clip.caption
                continue
            # Conversely, a visible object moving behind the pillar is mentioned doing so.
            camera = clip.scene["camera"]
            times = np.arange(len(shown)) / clip.fps
            x = clip.positions[:, n, 0] / 32 + camera["x0"] + camera["velocity"] * times
            inside = (x >= pillar["x_range"][0]) & (x <= pillar["x_range"][1])
            if (inside[1:] & shown[:-1]).any():
                assert "pillar" in clause, clip.caption
    assert passes >= 3


def test_caption_colours_are_in_the_frames():
    colours = COLOURS | PILLAR_COLOURS
    for index in range(12):
        clip = make_clip(1, index, frames=6, height=48, width=64, fps=8.0)
        named = [word for word in re.findall(r"[a-z]+", clip.caption) if word in colours]
        assert {obj["colour"] for obj in clip.scene["objects"]} <= set(named)
        pixels = clip.frames.reshape(-1, 3).astype(np.int16)
        for name in named:
            near = np.abs(pixels - np.array(colours[name])).max(axis=1) <= 2
            assert near.any(), (name, clip.caption)


def test_camera_pan_is_captioned_with_its_direction():
    pans, height, width = 0, 64, 64
    for index in range(30):
        clip = make_clip(0, index, frames=2, height=height, width=width, fps=4.0)
        velocity = clip.scene["camera"]["velocity"]
        said = re.search(r"(?:pans|moves)(?: to the)? (left|right)$", clip.caption)
        if velocity == 0.0:
            assert said is None, clip.caption
            continue
        pans += 1
        assert said and said.group(1) == ("right" if velocity > 0 else "left"), clip.caption
        # The floor's planks slide the other way on screen, by the camera's travel per frame.
        floor = clip.frames[:, -1].astype(np.float64).mean(axis=-1)  # bottom row [T, W]
        step = velocity / clip.fps * height
        misfit = {s: np.abs(floor[1, 8:-8] - floor[0, 8 + s : width - 8 + s]).mean() for s in range(-7, 8)}
        assert abs(min(misfit, key=misfit.get) - step) <= 1.0, (step, misfit)
    assert pans >= 3


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(seed=0, index=0, frames=0, height=32, width=32, fps=8.0),
        dict(seed=-1, index=0, frames=4, height=32, width=32, fps=8.0),
        dict(seed=0, index=0, frames=4, height=32, width=32, fps=0.0),
    ],
)
def test_bad_arguments_are_rejected(kwargs):
    seed, index = kwargs.pop("seed"), kwargs.pop("index")
    with pytest.raises(ValueError):
        make_clip(seed, index, **kwargs)
