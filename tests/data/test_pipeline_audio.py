"""Packed batches with sound: each video clip's audio tokens follow its video tokens in its segment,
on its video clock, deterministic and resumable; without sound the batch is what it always was."""

import itertools
import json

import numpy as np
import pytest

from experiments.world_tiny import get_config
from sora_jax.audio.codec import audio_token_times, clip_samples, codec_from_config
from sora_jax.config import ConfigError, config_from_json, config_to_json, load_config
from sora_jax.data.packing import token_widths
from sora_jax.data.pipeline import audio_tokens, batch_stream

TINY = "experiments/world_tiny.py:test"
CONTRACT = [
    "patches",
    "segment_ids",
    "positions",
    "cond_mask",
    "text_tokens",
    "text_segment_ids",
    "text_positions",
    "clip_grid",
    "clip_frames",
    "clip_fps",
]


def sound_config():
    config = get_config("test")
    config.audio.enabled = True
    return config


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def same(a, b):
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sound_batches():
    return take(batch_stream(sound_config(), 8), 2)


def test_each_clip_s_audio_tokens_follow_its_video_tokens_on_its_video_clock(sound_batches):
    config = sound_config()
    codec, pt = codec_from_config(config.audio), config.model.patch_size[0]
    video_width, audio_width = token_widths(config)
    assert list(sound_batches[0]) == CONTRACT + ["modality", "times", "clip_audio"]
    assert sound_batches[0]["patches"].shape[-1] == max(video_width, audio_width)
    audible = 0
    for batch in sound_batches:
        for row in range(8):
            segments = batch["segment_ids"][row]
            for slot in np.flatnonzero(batch["clip_frames"][row]):
                frames, fps = int(batch["clip_frames"][row, slot]), float(batch["clip_fps"][row, slot])
                video = int(np.prod(batch["clip_grid"][row, slot]))
                sound = codec.num_tokens(clip_samples(frames, fps, codec.sample_rate)) if frames > 1 else 0
                tokens = np.flatnonzero(segments == slot + 1)
                assert np.array_equal(tokens, tokens[0] + np.arange(video + sound))  # One run of tokens.
                assert batch["modality"][row, tokens].tolist() == [0] * video + [1] * sound
                assert batch["clip_audio"][row, slot] == (sound > 0)
                times, positions = batch["times"][row, tokens], batch["positions"][row, tokens]
                np.testing.assert_array_equal(times[:video], positions[:video, 0])
                expected = audio_token_times(sound, codec.token_samples, codec.sample_rate, fps, pt)
                np.testing.assert_allclose(times[video:], expected, atol=1e-5)  # clip_fps is float32.
                np.testing.assert_array_equal(
                    positions[video:], np.stack([np.arange(sound), 0 * expected, 0 * expected], -1)
                )
                patches = batch["patches"][row, tokens]
                assert not patches[:video, video_width:].any() and not patches[video:, audio_width:].any()
                audible += sound and int(np.ptp(patches[video:, :audio_width]) > 1.0)
        # Padding stays padding: no modality, no time.
        assert not batch["modality"][batch["segment_ids"] == 0].any()
        assert not batch["times"][batch["segment_ids"] == 0].any()
    assert audible > 3  # The world's clips sound (impacts), not only silence.
    fill = np.mean([(b["segment_ids"] > 0).mean() for b in sound_batches])
    assert fill > 0.95  # Rows still end nearly full with the audio tokens counted.


def test_sound_batches_are_a_function_of_seed_and_step_and_resume_exactly(sound_batches):
    config = sound_config()
    stream = batch_stream(config, 8)
    assert all(same(a, b) for a, b in zip(take(stream, 2), sound_batches, strict=True))
    state = stream.get_state()
    expected = take(stream, 2)
    resumed = batch_stream(config, 8)
    resumed.set_state(state)
    assert all(same(a, b) for a, b in zip(expected, take(resumed, 2), strict=True))


def test_without_sound_a_batch_has_the_contract_s_fields_whatever_the_audio_keys_say():
    plain = take(batch_stream(get_config("test"), 4), 2)
    assert list(plain[0]) == CONTRACT
    off = get_config("test")
    off.audio.representation, off.audio.loss_weight, off.audio.channels = "waveform", 0.5, 2
    assert all(same(a, b) for a, b in zip(plain, take(batch_stream(off, 4), 2), strict=True))


def test_audio_tokens_count_a_clip_s_sound_and_images_have_none():
    section = sound_config().audio  # 640 samples (40 ms) a token at 16 kHz.
    assert audio_tokens(8, 8.0, section) == 25  # 1 s
    assert audio_tokens(5, 6.0, section) == 21  # 0.833 s: 13333 samples, the last token partly padding.
    assert audio_tokens(1, 8.0, section) == 0
    assert audio_tokens(8, 8.0, get_config("test").audio) == 0  # Sound off.


@pytest.mark.parametrize(
    "overrides, key",
    [
        # The 4 x 16 x 16 sample clip is 16 video + 13 audio tokens (4 frames at 8 fps).
        (["audio.enabled=True", "data.seq_len=20"], "data.seq_len"),
        # 2 frames of 16 x 16 at 4 fps: 16 video + 13 audio tokens.
        (
            ["audio.enabled=True", "data.seq_len=28", "train.sample_frames=1", "data.frames=(2, 4)"],
            "data.seq_len",
        ),
        (
            ["audio.enabled=True", "model.autoencoder=/runs/vae", "data.store=/stores/latents"],
            "audio.enabled",
        ),
        (["audio.enabled=True", "task=wan"], "audio.enabled"),
        (["audio.enabled=True", "audio.channels=3"], "audio.channels"),
    ],
)
def test_sound_configs_that_cannot_work_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(TINY, overrides)


def test_a_config_json_written_before_sound_existed_loads_without_sound():
    written = json.loads(config_to_json(load_config(TINY)))
    del written["audio"]
    del written["conditioning"]["video_to_audio"], written["conditioning"]["audio_to_video"]
    config = config_from_json(json.dumps(written))
    assert not config.audio.enabled and config.conditioning.video_to_audio == 0.0
    assert config_to_json(config) == config_to_json(load_config(TINY))


@pytest.mark.parametrize("sound", [False, True])
def test_the_run_declares_the_batch_its_pipeline_makes(sound, sound_batches):
    """What the trainer and ``aot`` compile for (fields, shapes, dtypes, axes) is what is packed."""
    from sora_jax.kinds.registry import run_kind

    config = sound_config() if sound else get_config("test")
    batch = sound_batches[0] if sound else next(batch_stream(config, 8))
    kind = run_kind(config)
    row = kind.batch_row()
    assert list(row) == list(batch) and set(kind.batch_axes()) == set(batch)
    for name, array in batch.items():
        assert (row[name].shape[1:], row[name].dtype) == (array.shape[1:], array.dtype), name
        assert len(kind.batch_axes()[name]) == array.ndim, name


def test_data_stats_report_the_share_of_sound(sound_batches):
    from sora_jax.kinds.video_dit import VideoDiTKind

    figures = VideoDiTKind(sound_config()).describe_batches(sound_batches, 1.0)
    audio = sum(int(((b["modality"] == 1) & (b["segment_ids"] > 0)).sum()) for b in sound_batches)
    tokens = sum(int((b["segment_ids"] > 0).sum()) for b in sound_batches)
    assert figures["audio_tokens"] == pytest.approx(audio / tokens) and 0.05 < figures["audio_tokens"] < 0.6
    assert 0.0 < figures["clips_with_sound"] < 1.0  # Images have no sound.
    silent = get_config("test")
    plain = VideoDiTKind(silent).describe_batches(take(batch_stream(silent, 8), 2), 1.0)
    assert "audio_tokens" not in plain
