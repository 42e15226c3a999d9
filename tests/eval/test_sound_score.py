"""The sound scores are trustworthy before anything is tuned to them: the world's own audio with its
own video scores near 100%, silence, noise and a knock on every frame score near nothing, and the
true audio a quarter second late is out of sync."""

import dataclasses

import numpy as np
import pytest

from sora_jax.data import world, world_audio
from sora_jax.eval.sound_score import (
    SOUND_SCORES,
    detect_onsets,
    seen_impacts,
    sound_check,
    sound_reference_scores,
    sound_scores,
)

RATE = 16000
CLIPS = 24


@pytest.fixture(scope="module")
def references():
    return sound_check(CLIPS)


def test_the_worlds_own_audio_scores_near_100_percent(references):
    for name in ("real", "room_tone"):
        assert all(references[name][score] >= 0.9 for score in SOUND_SCORES), (name, references[name])


def test_silence_noise_and_sound_on_every_frame_score_near_nothing(references):
    for name in ("silence", "noise", "every_frame"):
        assert references[name]["sound"] <= 0.1, (name, references[name])
    assert references["every_frame"]["sound_sync"] <= 0.1  # sound everywhere is no timing


def test_audio_a_quarter_second_late_is_out_of_sync(references):
    shifted = references["shifted"]
    assert shifted["sound_count"] >= 0.8  # the right number of sounds ...
    assert shifted["sound_sync"] < 0.3 and shifted["sound"] < 0.3, shifted  # ... at the wrong times


def test_the_sound_of_another_scene_scores_well_below_its_own(references):
    assert references["other_scene"]["sound"] <= references["real"]["sound"] - 0.4, references


def _group_starts(clip: world.WorldClip) -> list[float]:
    """When each sound a listener tells apart starts (its first impact)."""
    starts: list[float] = []
    for impact in clip.impacts:
        if not starts or impact.time - starts[-1] >= world_audio.HEARD_APART:
            starts.append(impact.time)
    return starts


def test_onsets_fall_within_a_few_milliseconds_of_the_impacts():
    errors = {0.0: [], 0.003: []}
    missed = heard = 0
    for index in range(30):
        clip = world.make_clip(1_000_003, index, frames=16, height=16, width=16, fps=8.0)
        starts = np.asarray(_group_starts(clip))
        heard += len(starts)
        for room_tone, found in errors.items():
            onsets = detect_onsets(world_audio.clip_audio(clip, room_tone=room_tone), RATE)
            near = [np.abs(onsets - start).min() for start in starts if onsets.size]
            found += [d for d in near if d < 0.02]
            missed += sum(d >= 0.02 for d in near) + (len(starts) if not onsets.size else 0)
    assert missed <= 0.03 * 2 * heard, (missed, heard)
    assert np.max(errors[0.0]) <= 0.002, np.max(errors[0.0])  # out of silence: the attack itself
    assert np.percentile(errors[0.003], 90) <= 0.005, np.percentile(errors[0.003], 90)


def test_steady_noise_has_no_onsets_and_stereo_is_mixed_down():
    rng = np.random.default_rng(1)
    for level in (0.001, 0.03, 0.3):
        assert detect_onsets(level * rng.standard_normal((2 * RATE, 1)), RATE).size == 0, level
    assert detect_onsets(np.zeros((RATE, 2)), RATE).size == 0
    clip = world.make_clip(1_000_003, 2, frames=16, height=16, width=16, fps=8.0)
    mono, stereo = (world_audio.clip_audio(clip, channels=c) for c in (1, 2))
    np.testing.assert_allclose(detect_onsets(stereo, RATE), detect_onsets(mono, RATE), atol=0.002)


def test_sync_needs_a_video_showing_impacts():
    clip = world.make_clip(1_000_003, 0, frames=16, height=32, width=32, fps=8.0)
    audio = world_audio.clip_audio(clip)
    assert seen_impacts(clip.frames, clip, clip.fps)  # the clip's own video shows its bounces
    alone = sound_scores(clip, audio, RATE)
    assert np.isnan(alone["sound_sync"]) and alone["sound"] == alone["sound_count"] == 1.0
    frozen = np.repeat(clip.frames[:1], len(clip.frames), axis=0)
    still = sound_scores(clip, audio, RATE, frozen)
    assert np.isnan(still["sound_sync"]) and still["sound"] == still["sound_count"]


def test_a_silent_scene_is_scored_on_silence():
    clip = world.make_clip(1_000_003, 0, frames=16, height=32, width=32, fps=8.0)
    silent_scene = dataclasses.replace(clip, impacts=())
    assert sound_scores(silent_scene, np.zeros((2 * RATE, 1)), RATE)["sound_count"] == 1.0
    assert sound_scores(silent_scene, world_audio.clip_audio(clip), RATE)["sound_count"] == 0.0


def test_reference_scores_need_another_clip_to_compare():
    with pytest.raises(ValueError, match="at least 2 clips"):
        sound_reference_scores([world.make_clip(0, 0, frames=4, height=16, width=16, fps=8.0)])
