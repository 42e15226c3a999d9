"""The world-simulator metric is trustworthy before anything is tuned to it: the world's own clips
score near 100%, and noise, frozen, shuffled and wrong-colour videos, or a real clip of another
scene, score near chance or below."""

import pytest

from sora_jax.data import world
from sora_jax.eval.world_score import SCORES, corruption_check, reference_scores

CLIPS = 40


@pytest.fixture(scope="module")
def scored():
    return corruption_check(CLIPS)


def test_the_worlds_own_clips_score_near_100_percent(scored):
    real = scored["real"]
    assert real["overall"] >= 0.95, real
    assert all(real[score] >= 0.85 for score in SCORES), real


def test_noise_and_wrong_colours_score_near_nothing(scored):
    assert scored["noise"]["overall"] <= 0.1, scored["noise"]
    wrong = scored["wrong_colour"]
    assert wrong["colours"] <= 0.3 and wrong["overall"] <= 0.3, wrong


def test_frozen_and_shuffled_clips_fail_the_scores_of_motion(scored):
    frozen, shuffled = scored["frozen"], scored["shuffled"]
    # A frozen clip shows the right objects, but nothing moves, falls or passes behind the pillar.
    assert frozen["direction"] <= 0.1 and frozen["gravity"] <= 0.1 and frozen["permanence"] <= 0.1, frozen
    # Shuffled frames: directions are a coin toss, falls and bounces rarely survive, objects jump.
    assert shuffled["direction"] <= 0.7 and shuffled["gravity"] <= 0.6, shuffled
    assert shuffled["bounces"] <= 0.5 and shuffled["consistency"] <= 0.75, shuffled
    for corrupted in (frozen, shuffled):
        assert corrupted["overall"] <= scored["real"]["overall"] - 0.25, corrupted


def test_a_real_clip_of_another_scene_scores_near_chance(scored):
    # The world rendered right, but not the scene the caption asked for: the objects asked for are
    # rarely there, so little can be followed.
    other = scored["other_scene"]
    assert other["colours"] <= 0.3 and other["overall"] <= 0.3, other


def test_reference_scores_need_another_clip_to_compare():
    with pytest.raises(ValueError, match="at least 2 clips"):
        reference_scores([world.make_clip(0, 0, frames=4, height=16, width=16, fps=8.0)])
