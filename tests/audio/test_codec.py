"""Audio codecs: token shapes, round trips, what a mel token says about the sound, and the audio clock."""

from __future__ import annotations

import numpy as np
import pytest

from sora_jax.audio.codec import (
    AudioCodec,
    MelCodec,
    WaveformCodec,
    audio_token_times,
    clip_samples,
    codec_from_config,
)
from sora_jax.audio.config import audio_section, validate_audio_section
from sora_jax.errors import ConfigError
from sora_jax.eval.sound_score import detect_onsets

SR = 16000
SECONDS = 2.0


def tone(frequency: float, samples: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(samples) / SR)).astype(np.float32)


def envelope_onsets(audio: np.ndarray, rise: float = 0.1, refractory: float = 0.05) -> np.ndarray:
    """Seconds at which a causal 2 ms RMS envelope of channel 0 first rises past ``rise`` x its peak,
    at most one onset per ``refractory`` seconds."""
    window = 32
    energy = np.convolve(audio[:, 0].astype(np.float64) ** 2, np.ones(window) / window)[: len(audio)]
    above = np.sqrt(energy) > rise * np.sqrt(energy.max())
    onsets: list[int] = []
    for index in np.flatnonzero(above & ~np.r_[False, above[:-1]]):
        if not onsets or index - onsets[-1] > refractory * SR:
            onsets.append(int(index))
    return np.asarray(onsets) / SR


@pytest.fixture(scope="module")
def mel() -> MelCodec:
    return MelCodec()


@pytest.mark.parametrize("representation", ["mel", "waveform"])
@pytest.mark.parametrize("channels", [1, 2])
def test_tokens_cover_the_clip_and_decode_to_its_length(representation, channels):
    section = audio_section()
    section.representation, section.channels = representation, channels
    codec = codec_from_config(section)
    assert isinstance(codec, AudioCodec)
    assert type(codec) is (MelCodec if representation == "mel" else WaveformCodec)
    assert codec.token_samples == 640 and codec.sample_rate == SR and codec.channels == channels
    assert codec.patch_dim == (4 * 64 if representation == "mel" else 640) * channels
    samples = clip_samples(16, 8.0, SR) + 37  # Not a whole number of tokens: the last one is padded.
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (samples, channels)).astype(np.float32)

    tokens = codec.encode(audio)

    assert codec.num_tokens(samples) == 51
    assert tokens.shape == (51, codec.patch_dim) and tokens.dtype == np.float32
    assert codec.decode(tokens, samples).shape == (samples, channels)
    assert codec.decode(tokens).shape == (51 * 640, channels)
    assert codec.decode(tokens).dtype == np.float32
    assert codec.encode(np.zeros((0, channels), np.float32)).shape == (0, codec.patch_dim)
    with pytest.raises(ValueError, match="cannot decode"):
        codec.decode(tokens, 51 * 640 + 1)
    with pytest.raises(ValueError, match=r"audio must be \[samples"):
        codec.encode(np.zeros((samples, 3), np.float32))
    with pytest.raises(ValueError, match=r"tokens must be \[N"):
        codec.decode(tokens[:, :-1])


def test_waveform_tokens_invert_exactly():
    codec = WaveformCodec(SR, channels=2, samples_per_token=640)
    samples = 1000
    audio = np.random.default_rng(1).uniform(-1, 1, (samples, 2)).astype(np.float32)

    tokens = codec.encode(audio)

    np.testing.assert_array_equal(codec.decode(tokens, samples), audio)
    assert not codec.decode(tokens)[samples:].any()  # The padding is silence.
    # Token k holds samples k * 640 .. k * 640 + 639, sample-major (left, right interleaved).
    np.testing.assert_array_equal(tokens[1, :4] / codec.SCALE, audio[640:642].ravel())
    # Everyday audio (-18 dBFS RMS) has unit scale.
    everyday = np.stack([tone(440, 6400, 0.125 * np.sqrt(2))] * 2, axis=1)
    assert np.sqrt(np.mean(codec.encode(everyday) ** 2)) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("channels", [1, 2])
def test_mel_silence_is_one_token_value_and_decodes_to_silence(channels):
    codec = MelCodec(SR, channels)
    tokens = codec.encode(np.zeros((12345, channels), np.float32))
    assert np.all(tokens == -1.0)
    assert not codec.decode(tokens, 12345).any()


def test_mel_encoding_is_fixed_not_per_clip(mel):
    # Normalised by fixed constants: a quieter copy of a sound is lower, not rescaled to match, and
    # the same sound in a louder clip gets the same tokens where the clips agree.
    samples = int(SR * SECONDS)
    quiet = mel.encode(tone(440, samples, 0.05)[:, None])
    loud = mel.encode(tone(440, samples, 0.5)[:, None])
    assert loud.max() - quiet.max() == pytest.approx(20 / 80 * 2, abs=1e-3)  # 20 dB of an 80 dB range.
    both = np.zeros((samples, 1), np.float32)
    both[: samples // 2, 0] = tone(440, samples // 2, 0.05)
    both[samples * 3 // 4 :, 0] = 0.9
    np.testing.assert_allclose(mel.encode(both)[5:15], quiet[5:15], atol=1e-5)


def test_a_click_sounds_loudest_in_the_frame_and_token_whose_samples_hold_it(mel):
    # (A sample halfway between two frame centres, like 160, is as loud in both.)
    for sample in (0, 79, 81, 159, 161, 3 * 640 + 5, 3 * 640 + 639, 7999):
        audio = np.zeros((8000, 1), np.float32)
        audio[sample] = 1.0
        frames = mel.encode(audio).reshape(-1, 64).mean(axis=1)  # [frame]: token-major, frame-major.
        assert frames.argmax() == sample // 160, sample
        assert frames.argmax() // 4 == sample // 640


def test_mel_encode_and_decode_are_deterministic(mel):
    audio = np.random.default_rng(2).uniform(-0.3, 0.3, (8000, 1)).astype(np.float32)
    tokens = mel.encode(audio)
    np.testing.assert_array_equal(tokens, mel.encode(audio.copy()))
    np.testing.assert_array_equal(mel.decode(tokens), MelCodec().decode(tokens))


def test_a_tone_lights_its_own_mel_band_in_its_own_channel():
    codec = MelCodec(SR, channels=2)
    samples = int(SR * SECONDS)
    audio = np.zeros((samples, 2), np.float32)
    audio[:, 0] = tone(440, samples)

    tokens = codec.encode(audio).reshape(-1, 4, 64, 2)  # [token, frame, mel, channel], frame-major.

    # HTK mel bands from 0 to 8 kHz, written out independently of the codec.
    top = 2595 * np.log10(1 + 8000 / 700)
    centres = 700 * (10 ** (np.linspace(0, top, 64 + 2)[1:-1] / 2595) - 1)
    left = tokens[..., 0].reshape(-1, 64).mean(axis=0)
    assert left.argmax() == np.abs(centres - 440).argmin()
    assert left.max() > np.median(left) + 0.5  # 40 dB above the window's leakage.
    assert np.all(tokens[..., 1] == -1.0)  # Nothing leaks into the silent right channel.


def test_decoded_tone_keeps_its_frequency_and_level(mel):
    samples = int(SR * SECONDS)
    for frequency in (440.0, 1000.0, 3000.0):
        decoded = mel.decode(mel.encode(tone(frequency, samples)[:, None]), samples)[:, 0]
        middle = decoded[SR // 4 : -SR // 4]
        spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
        peak = np.fft.rfftfreq(len(middle), 1 / SR)[spectrum.argmax()]
        assert abs(peak - frequency) < 10, (frequency, peak)
        rms = np.sqrt(np.mean(middle**2))
        assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_decoded_clicks_keep_their_onset_times(mel):
    samples = int(SR * SECONDS)
    clicks = np.array([0.1037, 0.3511, 0.6, 0.8123, 1.2345, 1.5, 1.77])  # Not on the frame grid.
    audio = np.zeros((samples, 1), np.float32)
    audio[np.round(clicks * SR).astype(int), 0] = 0.9
    np.testing.assert_allclose(envelope_onsets(audio), clicks, atol=1 / SR)

    onsets = envelope_onsets(mel.decode(mel.encode(audio), samples))

    assert len(onsets) == len(clicks)
    np.testing.assert_allclose(onsets, clicks, atol=0.005)  # 5 ms: half a mel frame.


def test_nothing_sounds_more_than_a_hop_before_a_sound_that_follows_silence(mel):
    samples = int(SR * SECONDS)
    for start in (8000, 8079, 8080, 8159):  # On, just before, on and just after frame boundaries.
        audio = np.zeros((samples, 1), np.float32)
        decay = np.arange(samples - start) / SR
        audio[start:, 0] = 0.5 * np.exp(-decay * 20) * np.sin(2 * np.pi * 700 * decay)

        decoded = mel.decode(mel.encode(audio), samples)[:, 0]

        assert not decoded[: start - mel.hop + 1].any(), start  # No pre-echo in the silence.
        assert np.abs(decoded[start : start + 160]).max() > 0.25
        (onset,) = detect_onsets(decoded[:, None], SR)
        assert start / SR - mel.hop / SR <= onset <= start / SR + 0.002, (start, onset * SR)


@pytest.mark.parametrize("fps", [4.0, 8.0])
@pytest.mark.parametrize("pt", [1, 2, 4])
def test_a_token_centred_on_a_temporal_patch_gets_its_time(fps, pt):
    for patch in range(4):
        centre = (patch * pt + (pt - 1) / 2) / fps  # Seconds: the middle frame (or between two).
        token_samples = round(2 * centre * SR)  # Token 0 spans [0, 2 * centre): centred there.
        if token_samples == 0:
            continue
        times = audio_token_times(3, token_samples, SR, fps, pt)
        assert times.dtype == np.float32
        assert times[0] == patch
        np.testing.assert_allclose(np.diff(times), token_samples / SR * fps / pt, rtol=1e-6)


def test_audio_tokens_tile_the_video_clock():
    # 16 frames at 8 fps, pt 2: 8 temporal patches (frames 0-1 centred on frame 0.5, ...); 50 tokens
    # of 40 ms span the 2 s, the first centred on 0.02 s = frame 0.16, the last on frame 15.84.
    times = audio_token_times(50, 640, SR, 8.0, 2)
    assert times[0] == pytest.approx((0.16 - 0.5) / 2) and times[-1] == pytest.approx((15.84 - 0.5) / 2)
    np.testing.assert_allclose(np.diff(times), 0.16, rtol=1e-5)
    assert clip_samples(16, 8.0, SR) == 32000
    assert clip_samples(1, 3.0, SR) == 5333


@pytest.mark.parametrize(
    "key, value",
    [
        ("sample_rate", 999),
        ("channels", 3),
        ("representation", "mp3"),
        ("mels", 7),
        ("hop", 15),
        ("frames_per_token", 0),
        ("samples_per_token", 15),
        ("loss_weight", -0.5),
        ("loss_weight", float("nan")),
        ("room_tone", 0.6),
        ("caption_sounds", 1.5),
        ("caption_sounds", -0.1),
    ],
)
def test_validation_names_the_key(key, value):
    section = audio_section()
    validate_audio_section(section)  # The defaults are fine.
    section[key] = value
    with pytest.raises(ConfigError, match=rf"^config key 'audio\.{key}': "):
        validate_audio_section(section)
    with pytest.raises(ConfigError, match=rf"'audio\.{key}'"):
        codec_from_config(section)
