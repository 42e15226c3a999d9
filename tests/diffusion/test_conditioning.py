"""Conditioning tasks: which temporal groups each task gives, and how they reach the packed batch."""

import numpy as np
import pytest

from sora_jax.config import ConfigError, load_config
from sora_jax.data.pipeline import batch_stream
from sora_jax.diffusion.conditioning import (
    TASKS,
    conditioning_section,
    frame_feature_mask,
    given_frame_bits,
    given_groups,
    task_weights,
    token_frame_bits,
)


@pytest.mark.parametrize(
    "task, expected",
    [
        ("text_to_video", [0, 0, 0, 0, 0]),
        ("image_to_video", [1, 0, 0, 0, 0]),
        ("last_frame", [0, 0, 0, 0, 1]),
        ("interpolate", [1, 0, 0, 0, 1]),
    ],
)
def test_fixed_tasks_give_their_groups(task, expected):
    assert given_groups(task, 5, np.random.default_rng(0)).astype(int).tolist() == expected


def test_extensions_give_a_proper_prefix_or_suffix_and_random_frames_leave_work():
    rng = np.random.default_rng(0)
    for _ in range(50):
        forward = given_groups("extend_forward", 4, rng)
        k = int(forward.sum())
        assert 1 <= k <= 3 and forward[:k].all() and not forward[k:].any()
        backward = given_groups("extend_backward", 4, rng)
        k = int(backward.sum())
        assert 1 <= k <= 3 and backward[4 - k :].all() and not backward[: 4 - k].any()
        assert not given_groups("random_frames", 2, rng, random_rate=0.99).all()
    # One group (an image) is always generated from text alone.
    assert not any(given_groups(task, 1, rng).any() for task in TASKS)


def test_weights_are_normalised_and_bad_ones_refused_before_compiling():
    section = conditioning_section()
    section.image_to_video = 3.0
    np.testing.assert_allclose(task_weights(section)[:2], [0.25, 0.75])
    with pytest.raises(ConfigError, match="conditioning"):
        load_config("experiments/world_tiny.py:test", ["conditioning.text_to_video=0.0"])
    with pytest.raises(ConfigError, match="conditioning.random_rate"):
        load_config("experiments/world_tiny.py:test", ["conditioning.random_rate=1.0"])


def test_the_packed_batch_marks_given_tokens_by_their_temporal_group():
    config = load_config(
        "experiments/world_tiny.py:test",
        ["conditioning.text_to_video=0.0", "conditioning.image_to_video=1.0", "data.image_fraction=0.0"],
    )
    batch = next(batch_stream(config, 8))
    real = batch["segment_ids"] > 0
    first_group = batch["positions"][..., 0] == 0
    # Clips of one temporal group (a 1- or 2-frame clip with pt = 2) are text-to-video.
    multi_group = np.zeros_like(real)
    for row in range(8):
        for segment in range(1, batch["clip_grid"].shape[1] + 1):
            tokens = batch["segment_ids"][row] == segment
            if tokens.any() and batch["clip_grid"][row, segment - 1, 0] > 1:
                multi_group[row] |= tokens
    np.testing.assert_array_equal(batch["cond_mask"], real & first_group & multi_group)
    assert batch["cond_mask"].any()
    plain = next(batch_stream(load_config("experiments/world_tiny.py:test"), 8))
    assert not plain["cond_mask"].any()


def test_frame_level_gives_the_one_frame_inside_its_group_not_the_group():
    config = load_config(
        "experiments/world_tiny.py:test",
        [
            "conditioning.text_to_video=0.0",
            "conditioning.image_to_video=1.0",
            "conditioning.frame_level=True",
            "data.image_fraction=0.0",
        ],
    )
    batch = next(batch_stream(config, 8))
    assert not batch["cond_mask"].any()  # The first group is generated, not given.
    real, first_group = batch["segment_ids"] > 0, batch["positions"][..., 0] == 0
    given = batch["given_frames"] > 0
    assert given.any() and not (given & ~(real & first_group)).any()
    assert set(np.unique(batch["given_frames"][given]).tolist()) == {1}  # Frame 0 of the patch.


def test_frame_level_last_frame_is_the_clips_last_real_frame():
    grid = np.meshgrid(np.arange(3), np.arange(2), np.arange(2), indexing="ij")
    positions = np.stack(grid, -1).reshape(-1, 3)
    # 7 frames in patches of 4: the last real frame is frame 2 of the second group.
    cond_mask, bits = given_frame_bits("last_frame", 7, positions, 4)
    assert not cond_mask.any()
    np.testing.assert_array_equal(bits, np.where(positions[:, 0] == 1, 1 << 2, 0))
    assert given_frame_bits("extend_forward", 7, positions, 4) is None  # Whole groups, as before.
    frames = np.zeros(8, bool)
    frames[[0, 7]] = True
    np.testing.assert_array_equal(token_frame_bits(frames, positions[:8], 4), [1] * 4 + [8] * 4)
    features = frame_feature_mask(np.asarray([0, 1, 8]), 4, 8)  # 2 features a frame.
    np.testing.assert_array_equal(features.astype(int), [[0] * 8, [1, 1] + [0] * 6, [0] * 6 + [1, 1]])


def test_frame_level_is_refused_where_it_is_not_built():
    with pytest.raises(ConfigError, match="conditioning.frame_level"):
        load_config("experiments/world_av.py:test", ["conditioning.frame_level=True"])
