"""The ``audio`` config section: whether clips carry sound, how it is sampled, and how it becomes tokens.

:func:`audio_section` holds every key with its default and meaning (the base config mounts it as
``config.audio``); :func:`validate_audio_section` names the first key that cannot work.
"""

from __future__ import annotations

import ml_collections

from sora_jax.errors import ConfigError

REPRESENTATIONS = ("mel", "waveform")


def audio_section() -> ml_collections.ConfigDict:
    """Every ``audio`` key with its default (sound off)."""
    a = ml_collections.ConfigDict()
    # Each video clip of >= 2 frames carries audio tokens in its own segment, after its video tokens
    # (images stay silent: a still has no duration to sound over).
    a.enabled = False
    a.sample_rate = 16000  # Samples per second of every clip's audio, whatever its source rate.
    a.channels = 1  # 1: mono | 2: stereo (left, right), each channel coded separately.
    # What a token holds (sora_jax/audio/codec.py):
    # mel: frames_per_token frames of a log-mel spectrogram, turned back into sound by Griffin-Lim;
    # waveform: samples_per_token raw samples, exactly invertible.
    # mel, by measurement: world_av trained 1000 steps with each, side by side, made the sound of a
    # given video scoring 0.30 (sync 0.47) with mel against 0.09 (sync 0.14) with the waveform, and
    # text-to-audio-video sound alike (0.42, 0.41). Its round trip is inexact (77% of onsets within
    # 10 ms, yet the decoded world sound scores 0.996 like the original) and Griffin-Lim costs ~0.3 s
    # a 2 s clip (docs/BENCHMARKS.md: sound and picture; audio representations).
    a.representation = "mel"
    a.mels = 64  # mel: bands from 0 Hz to sample_rate / 2.
    a.hop = 160  # mel: samples between spectrogram frames (10 ms at 16 kHz); the window is 4 * hop.
    a.frames_per_token = 4  # mel: spectrogram frames per token (4 x 160 = 640 samples = 40 ms).
    a.samples_per_token = 640  # waveform: samples per token (per channel).
    # A clip's loss = its video tokens' mean + loss_weight * its audio tokens' mean.
    a.loss_weight = 1.0
    # Physics world: RMS amplitude of a quiet room noise under the impacts (0: silence between them).
    a.room_tone = 0.0
    # Physics world: probability that a clip's caption also describes its sounds ("with a loud thud").
    a.caption_sounds = 0.0
    return a


def validate_audio_section(section: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first ``audio.*`` key that cannot work (checked even when off,
    so that turning sound on later is not what reveals a bad value)."""

    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"config key 'audio.{key}': {problem}")

    for key, least in (("sample_rate", 1000), ("mels", 8), ("hop", 16), ("frames_per_token", 1)):
        if section[key] < least:
            fail(key, f"must be at least {least}, got {section[key]}")
    if section.samples_per_token < 16:
        fail("samples_per_token", f"must be at least 16, got {section.samples_per_token}")
    if section.channels not in (1, 2):
        fail("channels", f"must be 1 (mono) or 2 (stereo), got {section.channels}")
    if section.representation not in REPRESENTATIONS:
        fail("representation", f"{section.representation!r} is not one of {', '.join(REPRESENTATIONS)}")
    if not section.loss_weight >= 0:  # NaN too
        fail("loss_weight", f"must be >= 0, got {section.loss_weight}")
    if not 0.0 <= section.room_tone <= 0.5:
        fail("room_tone", f"must be in [0, 0.5], got {section.room_tone}")
    if not 0.0 <= section.caption_sounds <= 1.0:
        fail("caption_sounds", f"must be in [0, 1], got {section.caption_sounds}")
