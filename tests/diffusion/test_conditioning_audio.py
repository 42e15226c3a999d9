"""Conditioning with sound: the whole-modality tasks, temporal groups that carry their sound along, and
the draws of the video tasks left as they were."""

import numpy as np
import pytest

from sora_jax.config import ConfigError, load_config
from sora_jax.data.pipeline import batch_stream
from sora_jax.diffusion.conditioning import (
    TASKS,
    audio_token_groups,
    conditioning_section,
    draw_task,
    given_groups,
    given_tokens,
    task_weights,
)

TINY = "experiments/world_tiny.py:test"
# 8 frames at 8 fps, 4 frames a temporal patch: two groups of 0.5 s; 25 tokens of 40 ms.
TIMES = ((np.arange(25) + 0.5) * 0.04 * 8 - 1.5) / 4
POSITIONS = np.stack(np.meshgrid(np.arange(2), np.arange(2), np.arange(2), indexing="ij"), -1).reshape(-1, 3)


def test_an_audio_token_belongs_to_the_group_its_centre_sounds_in():
    groups = audio_token_groups(TIMES, 4, 2)
    # Token 12 is centred on 0.5 s, the boundary: it goes to the later group.
    assert groups.tolist() == [0] * 12 + [1] * 13
    assert audio_token_groups(TIMES, 4, 1).tolist() == [0] * 25  # Past the last group: the last.


@pytest.mark.parametrize(
    "task, groups, video, audio",
    [
        ("text_to_video", [0, 0], [0, 0], [0] * 25),
        ("image_to_video", [1, 0], [1, 0], [1] * 12 + [0] * 13),
        ("last_frame", [0, 1], [0, 1], [0] * 12 + [1] * 13),
        ("video_to_audio", [0, 0], [1, 1], [0] * 25),
        ("audio_to_video", [0, 0], [0, 0], [1] * 25),
    ],
)
def test_tasks_give_video_and_audio_tokens(task, groups, video, audio):
    given = given_groups(task, 2, np.random.default_rng(0))
    assert given.astype(int).tolist() == groups
    video_mask, audio_mask = given_tokens(task, given, POSITIONS, TIMES.astype(np.float32), pt=4)
    assert video_mask.astype(int).tolist() == np.repeat(video, 4).tolist()
    assert audio_mask.astype(int).tolist() == audio


@pytest.mark.parametrize("task", ["video_to_audio", "audio_to_video"])
def test_a_clip_without_sound_is_text_to_video_for_the_audio_tasks(task):
    video_mask, audio_mask = given_tokens(task, given_groups(task, 2, np.random.default_rng(0)), POSITIONS)
    assert not video_mask.any() and audio_mask is None


def test_the_audio_tasks_at_weight_zero_leave_every_draw_of_the_video_tasks_as_it_was():
    section = conditioning_section()
    section.image_to_video, section.extend_forward, section.random_frames = 1.0, 2.0, 0.5
    video_tasks = TASKS[: TASKS.index("video_to_audio")]
    weights = task_weights(section)
    assert not weights[len(video_tasks) :].any()
    drawn, before = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(200):
        task = draw_task(section, drawn)
        assert task == video_tasks[int(before.choice(len(video_tasks), p=weights[: len(video_tasks)]))]
        assert drawn.random() == before.random()  # The generators stay in step.


@pytest.mark.parametrize("task", ["video_to_audio", "audio_to_video"])
def test_the_audio_tasks_need_sound(task):
    with pytest.raises(ConfigError, match=f"'conditioning.{task}'.*audio.enabled"):
        load_config(TINY, [f"conditioning.{task}=1.0"])


def _segments(batch):
    for row in range(batch["segment_ids"].shape[0]):
        for slot in np.flatnonzero(batch["clip_frames"][row]):
            yield row, slot, batch["segment_ids"][row] == slot + 1


def test_the_packed_batch_gives_the_audio_tasks_tokens_by_modality():
    common = ["audio.enabled=True", "conditioning.text_to_video=0.0", "data.image_fraction=0.0"]
    for task, given_modality in (("video_to_audio", 0), ("audio_to_video", 1)):
        batch = next(batch_stream(load_config(TINY, [*common, f"conditioning.{task}=1.0"]), 8))
        for row, slot, tokens in _segments(batch):
            given = batch["cond_mask"][row][tokens]
            if batch["clip_audio"][row, slot]:
                np.testing.assert_array_equal(given, batch["modality"][row][tokens] == given_modality)
            else:  # No sound: text-to-video.
                assert not given.any()
        assert batch["clip_audio"].any()


def test_image_to_video_also_gives_the_sound_of_the_first_group():
    overrides = ["audio.enabled=True", "conditioning.text_to_video=0.0", "conditioning.image_to_video=1.0"]
    config = load_config(TINY, overrides)
    batch = next(batch_stream(config, 8))
    for row, slot, tokens in _segments(batch):
        groups = int(batch["clip_grid"][row, slot, 0])
        modality, given = batch["modality"][row][tokens], batch["cond_mask"][row][tokens]
        video_given = batch["positions"][row][tokens][modality == 0, 0] == 0
        np.testing.assert_array_equal(given[modality == 0], video_given & (groups > 1))
        times = batch["times"][row][tokens][modality == 1]
        in_first = audio_token_groups(times, config.model.patch_size[0], groups) == 0
        np.testing.assert_array_equal(given[modality == 1], in_first & (groups > 1))
    assert (batch["cond_mask"] & (batch["modality"] == 1)).any()
