"""The physics world's sound: impacts recorded where the simulation makes them, and heard there."""

import dataclasses
import re

import numpy as np
import pytest

from sora_jax.audio.codec import clip_samples
from sora_jax.data import world, world_audio
from sora_jax.data.world import Impact, make_clip
from sora_jax.data.world_audio import clip_audio

RATE = 16000


def _clip_with(*impacts: Impact, frames: int = 16, fps: float = 8.0) -> world.WorldClip:
    """A world clip whose sound is only ``impacts``."""
    clip = make_clip(0, 0, frames=frames, height=16, width=16, fps=fps)
    return dataclasses.replace(clip, impacts=impacts)


def _impact(time=0.3, material="box", size=0.075, speed=1.5, pan=0.0) -> Impact:
    return Impact(time, "floor", (0,), speed, pan, material, size)


def _centroid(sound: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(sound)) ** 2
    freqs = np.fft.rfftfreq(len(sound), 1.0 / RATE)
    return float((spectrum * freqs).sum() / spectrum.sum())


def test_impacts_are_steps_of_the_simulation_within_the_clip():
    kinds, checked = set(), 0
    for index in range(20):
        clip = make_clip(1, index, frames=24, height=32, width=32, fps=12.0)
        times = [impact.time for impact in clip.impacts]
        assert times == sorted(times) and all(0 < t < 24 / 12.0 for t in times)
        for impact in clip.impacts:
            steps = impact.time * world.STEPS_PER_SECOND
            assert abs(steps - round(steps)) < 1e-9, impact
            assert impact.speed > 0.1 and -1.0 <= impact.pan <= 1.0, impact
            objs = [clip.scene["objects"][n] for n in impact.objects]
            sizes = [obj.get("radius", obj.get("half_size")) for obj in objs]
            assert impact.size == min(sizes)
            assert impact.material == ("box" if any(o["kind"] == "box" for o in objs) else "ball")
            kinds.add(impact.kind)
            checked += 1
    assert kinds == {"floor", "wall", "collision"} and checked > 100


def test_floor_impacts_and_pan_match_the_frames_at_the_step():
    # At 240 fps every physics step is a frame: a floor impact's object sits on the floor in the
    # frame of its step, and its pan is where the frame shows it, camera pan included.
    panned = 0
    for index in range(12):
        clip = make_clip(0, index, frames=120, height=64, width=96, fps=240.0)
        floor = clip.scene["world"]["floor"]
        for impact in clip.impacts:
            if impact.kind != "floor":
                continue
            (n,) = impact.objects
            frame = round(impact.time * 240)
            x, y = clip.positions[frame, n]
            assert y == pytest.approx((1.0 - floor - impact.size) * 64, abs=1e-3), (index, impact)
            if 0 <= x < 96:
                assert impact.pan == pytest.approx(2.0 * x / 96 - 1.0, abs=1e-4), (index, impact)
            panned += clip.scene["camera"]["velocity"] != 0.0
    assert panned >= 3


def test_audio_is_a_deterministic_function_of_the_clip_with_clip_samples_length():
    for frames, fps in ((16, 8.0), (7, 12.5), (5, 3.0), (1, 24.0)):
        clip = make_clip(2, 3, frames=frames, height=16, width=16, fps=fps)
        again = make_clip(2, 3, frames=frames, height=16, width=16, fps=fps)
        assert clip.impacts == again.impacts
        for channels in (1, 2):
            audio = clip_audio(clip, channels=channels, room_tone=0.01)
            assert audio.shape == (clip_samples(frames, fps, RATE), channels) and audio.dtype == np.float32
            assert audio.tobytes() == clip_audio(again, channels=channels, room_tone=0.01).tobytes()
            assert np.abs(audio).max() <= 1.0


def test_a_sound_starts_on_the_exact_sample_of_its_impact():
    for material in ("ball", "box"):
        time = 37 / 240  # a step: 2466.67 samples, so the sound starts on sample 2467
        audio = clip_audio(_clip_with(_impact(time, material)))[:, 0]
        start = round(time * RATE)
        assert start == 2467
        assert not audio[:start].any(), material
        assert np.abs(audio[start : start + 2]).max() > 1e-4, material
    silent = clip_audio(_clip_with())
    assert not silent.any()


def test_stereo_pans_with_constant_power_and_mono_is_the_sum():
    mono = clip_audio(_clip_with(_impact(pan=0.0)))[:, 0].astype(np.float64)
    for pan, (left_share, right_share) in ((-1.0, (1.0, 0.0)), (1.0, (0.0, 1.0)), (0.0, (0.5, 0.5))):
        stereo = clip_audio(_clip_with(_impact(pan=pan)), channels=2).astype(np.float64)
        energy = (stereo**2).sum(axis=0) / (mono**2).sum()
        np.testing.assert_allclose(energy, [left_share, right_share], atol=1e-6)
    both = clip_audio(_clip_with(_impact(pan=-1.0), _impact(time=1.0, pan=1.0)), channels=2)
    left_heavy, right_heavy = both[: round(0.9 * RATE)], both[round(1.0 * RATE) :]
    assert np.abs(left_heavy[:, 0]).max() > 0.1 and np.abs(left_heavy[:, 1]).max() < 1e-6
    assert np.abs(right_heavy[:, 1]).max() > 0.1 and np.abs(right_heavy[:, 0]).max() < 1e-6


def test_loudness_grows_with_impact_speed_and_stays_below_full_scale():
    for material in ("ball", "box"):
        peaks = [
            np.abs(clip_audio(_clip_with(_impact(material=material, speed=speed)))).max()
            for speed in (0.15, 0.3, 0.6, 1.2, 2.4, 3.0, 6.0)
        ]
        assert all(a < b for a, b in zip(peaks[:-2], peaks[1:-1], strict=True)), peaks
        assert peaks[-1] == pytest.approx(peaks[-2]) and peaks[-1] <= world_audio.LOUDEST_PEAK + 1e-6
        assert peaks[0] > 0.05  # the softest impact is still well above a quiet room


def test_smaller_objects_sound_higher_and_materials_differ():
    rng = np.random.default_rng(0)
    for material in ("ball", "box"):
        centroids = [
            _centroid(world_audio.impact_sound(material, size, RATE, rng)) for size in (0.05, 0.075, 0.1)
        ]
        assert centroids[0] > centroids[1] > centroids[2], (material, centroids)
        assert centroids[0] / centroids[2] == pytest.approx(2.0, rel=0.15)  # pitch ~ 1 / size
    ball = world_audio.impact_sound("ball", 0.075, RATE, rng)
    box = world_audio.impact_sound("box", 0.075, RATE, rng)
    assert len(box) < len(ball)  # a knock dies away faster than a thump
    assert _centroid(box) > 2 * _centroid(ball)  # and is brighter (noise, inharmonic partials)


def test_room_tone_has_the_asked_level_between_impacts():
    clip = make_clip(0, 3, frames=16, height=16, width=16, fps=8.0)
    quiet = clip_audio(dataclasses.replace(clip, impacts=()), channels=2, room_tone=0.01).astype(np.float64)
    np.testing.assert_allclose(np.sqrt((quiet**2).mean(axis=0)), [0.01, 0.01], rtol=1e-3)
    assert abs(np.corrcoef(quiet.T)[0, 1]) < 0.1  # independent per channel
    first = round(clip.impacts[0].time * RATE)
    with_impacts = clip_audio(clip, channels=2, room_tone=0.01)
    np.testing.assert_allclose(with_impacts[:first], quiet[:first], atol=1e-7)
    assert not clip_audio(dataclasses.replace(clip, impacts=())).any()  # no room tone: silence


_COUNTS = {"a": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
_COUNTS |= {"nine": 9, "ten": 10, "many": 11}  # many: more than ten
_PHRASE = re.compile(r"(?:, with ([^;]+)|; ([^;]+) can be heard|; no sound is heard|, in silence)$")


def _said_sounds(caption: str) -> dict[tuple[str, str], int]:
    """``{(material, loudness): count}`` the caption's sound phrase says."""
    match = _PHRASE.search(caption)
    assert match, caption
    listed = match.group(1) or match.group(2)
    said: dict[tuple[str, str], int] = {}
    for item in re.split(r", | and ", listed) if listed else []:
        words = item.split()
        material = {"thump": "ball", "knock": "box"}[words[-1].rstrip("s")]
        level = words[1] if len(words) == 3 else ""
        said[material, level] = said.get((material, level), 0) + _COUNTS[words[0]]
    return said


def test_caption_sounds_off_leaves_captions_unchanged_and_on_tells_the_truth():
    loud = soft = silent = 0
    for index in range(30):
        args = dict(frames=16, height=32, width=32, fps=8.0)
        plain = make_clip(5, index, **args)
        assert make_clip(5, index, caption_sounds=0.0, **args).caption == plain.caption
        told = make_clip(5, index, caption_sounds=1.0, **args)
        assert told.caption.startswith(plain.caption) and len(told.caption) > len(plain.caption)
        assert told.frames.tobytes() == plain.frames.tobytes() and told.impacts == plain.impacts
        assert re.fullmatch(r"[a-z ,;]+", told.caption)
        expected: dict[tuple[str, str], int] = {}
        for sound in world_audio.heard(told.impacts):
            key = (sound.material, world_audio.loudness(sound))
            expected[key] = expected.get(key, 0) + 1
        many = {key: min(count, 11) for key, count in expected.items()}
        assert _said_sounds(told.caption) == many, (told.caption, told.impacts)
        loud += any(level == "loud" for _, level in expected)
        soft += any(level == "soft" for _, level in expected)
        silent += not expected
    assert loud and soft  # both words were checked
    half = [
        make_clip(5, index, frames=16, height=32, width=32, fps=8.0, caption_sounds=0.5)
        for index in range(30)
    ]
    assert 5 < sum(bool(_PHRASE.search(clip.caption)) for clip in half) < 25
    still = make_clip(5, 0, frames=1, height=32, width=32, fps=8.0, caption_sounds=1.0)
    assert still.caption == make_clip(5, 0, frames=1, height=32, width=32, fps=8.0).caption


def test_loud_and_soft_words_follow_speed():
    assert world_audio.loudness(_impact(speed=2.0)) == "loud"
    assert world_audio.loudness(_impact(speed=0.2)) == "soft"
    assert world_audio.loudness(_impact(speed=0.6)) == ""
    rng = np.random.default_rng(0)
    phrase = world_audio.sound_phrase([_impact(0.1, "box", speed=2.5), _impact(0.5, "ball", speed=0.2)], rng)
    assert re.search(r"a loud knock and a soft thump", phrase)


@pytest.mark.parametrize("kwargs", [dict(channels=3), dict(sample_rate=100), dict(room_tone=-0.1)])
def test_bad_audio_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        clip_audio(_clip_with(), **kwargs)
