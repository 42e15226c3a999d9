"""Real sound through ingest: reading a video's audio track, keeping each clip's sound in the clip
store aligned with its frames, loading it for the frames a source gives, and writing it out.

The test videos are made here with PyAV: a 440 Hz tone burst at a known time in an AAC mp4, a
stereo PCM avi at 44.1 kHz whose burst is on the left only, an mp4 with a silent track and one
without any. One prepared store (stereo, 16 kHz) is shared by the module.
"""

import wave

import av
import ml_collections
import numpy as np
import pytest

from sora_jax import cli
from sora_jax.audio.codec import clip_samples
from sora_jax.audio.config import audio_section
from sora_jax.data import world, world_audio
from sora_jax.data.clip_store import AUTOENCODER_KEY, PREPARE_KEY, STATS_KEY, ClipStore
from sora_jax.data.prepare import prepare
from sora_jax.data.sources import LatentStoreSource, StoreSource, WorldSource
from sora_jax.data.video_io import read_audio, read_audio_spans, read_video, write_video, write_wav
from sora_jax.errors import ConfigError

FPS = 8
BURST = 0.5  # Amplitude of the 440 Hz tone bursts, 0.1 s long.
SHAPE = {"max_seconds": 1.0, "fps": 8.0, "max_area": 32 * 32, "workers": 0, "progress": False}


def _burst(seconds: float, rate: int, at: float, channels: int = 1) -> np.ndarray:
    """float32 [seconds * rate, channels]: silence but for a burst starting exactly at ``at`` s."""
    sound = np.zeros((round(seconds * rate), channels), np.float32)
    n = round(0.1 * rate)
    sound[round(at * rate) : round(at * rate) + n] = (
        BURST * np.sin(2 * np.pi * 440 * np.arange(n) / rate)[:, None]
    )
    return sound


def _onset(sound: np.ndarray, rate: int, channel: int = 0) -> float:
    """Time (s) of the first sample louder than a tenth of the burst (36 us after it starts)."""
    loud = np.flatnonzero(np.abs(sound[:, channel]) > BURST / 10)
    assert len(loud), "no burst in this sound"
    return loud[0] / rate


def _ramp(frames: int) -> np.ndarray:
    """32x32 frames whose value says which frame they are (frame i is 8 * i)."""
    return np.broadcast_to(
        (np.arange(frames, dtype=np.uint8) * 8)[:, None, None, None], (frames, 32, 32, 3)
    ).copy()


def _write_avi(path, frames: np.ndarray, sound: np.ndarray, rate: int) -> None:
    """Motion-JPEG video with 16-bit PCM stereo sound: another container and codecs than mp4's."""
    with av.open(str(path), "w", format="avi") as container:
        video = container.add_stream("mjpeg", rate=FPS)
        video.width, video.height, video.pix_fmt = 32, 32, "yuvj420p"
        audio = container.add_stream("pcm_s16le", rate=rate)
        audio.layout = "stereo"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(sound.T), format="fltp", layout="stereo")
        chunk.sample_rate, chunk.pts = rate, 0
        container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(source folder, prepared stereo store, its report)."""
    root = tmp_path_factory.mktemp("sound")
    sources = root / "in"
    write_video(sources / "tone.mp4", _ramp(24), FPS, audio=_burst(3.0, 16000, 1.25), sample_rate=16000)
    write_video(sources / "quiet.mp4", _ramp(16), FPS, audio=np.zeros((32000, 1), np.float32))
    write_video(sources / "mute.mp4", _ramp(16), FPS)
    left = _burst(2.0, 44100, 0.6, channels=2)
    left[:, 1] = 0.0
    _write_avi(sources / "stereo.avi", _ramp(16), left, 44100)
    write_video(sources / "still.png", _ramp(1), FPS)
    for name in ("tone", "quiet", "mute", "stereo", "still"):
        (sources / f"{name}.txt").write_text(f"{name} video")
    report = prepare(sources, root / "store", audio_channels=2, **SHAPE)
    return sources, root / "store", report


def test_read_audio_finds_the_burst_at_its_time_at_any_rate_and_layout(made):
    sources, _, _ = made
    tone = read_audio(sources / "tone.mp4", sample_rate=16000, channels=1)
    assert tone.dtype == np.float32 and tone.shape[1] == 1
    assert abs(_onset(tone, 16000) - 1.25) <= 1e-3
    # 44.1 kHz PCM stereo, resampled; left stays left.
    for rate in (8000, 16000, 48000):
        stereo = read_audio(sources / "stereo.avi", sample_rate=rate, channels=2)
        assert stereo.shape == (2 * rate, 2)
        assert abs(_onset(stereo, rate) - 0.6) <= 1e-3
        assert np.abs(stereo[:, 1]).max() < 1e-3
    mono = read_audio(sources / "stereo.avi", sample_rate=16000, channels=1)
    np.testing.assert_allclose(np.abs(mono).max(), BURST / 2, rtol=0.02)  # The mean of both sides.
    # A window: exactly round(duration * rate) samples from start, zeros past the stream's end.
    window = read_audio(sources / "tone.mp4", sample_rate=16000, channels=2, start=1.0, duration=0.5)
    assert window.shape == (8000, 2) and abs(_onset(window, 16000) - 0.25) <= 1e-3
    tail = read_audio(sources / "stereo.avi", sample_rate=16000, channels=1, start=1.5, duration=1.0)
    assert tail.shape == (16000, 1) and not tail[8000:].any()
    assert read_audio(sources / "mute.mp4", sample_rate=16000, channels=1) is None
    # Several clips' spans in one pass give what one read each gives.
    spans = [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0)]
    cut = list(read_audio_spans(sources / "tone.mp4", spans, sample_rate=16000, channels=1))
    np.testing.assert_array_equal(np.concatenate(cut), tone[:48000])


def test_prepare_keeps_each_clips_sound_lined_up_with_its_frames(made):
    _, path, report = made
    store = ClipStore.open(path)  # A fresh reader: what was committed.
    assert (store.audio_sample_rate, store.audio_channels) == (16000, 2)
    states = {r.clip_id: r.audio for r in store.records}
    assert states == {
        "tone.mp4#0": "silent", "tone.mp4#1": "sound", "tone.mp4#2": "silent",
        "stereo.avi#0": "sound", "stereo.avi#1": "silent",
        "quiet.mp4#0": "silent", "quiet.mp4#1": "silent",
        "mute.mp4#0": "none", "mute.mp4#1": "none",
        "still.png#0": "none",
    }  # fmt: skip
    assert report.audio == {"sound": 2, "silent": 1, "none": 1}  # Videos; the still is not one.
    assert report.without_sound == [
        {"path": "mute.mp4", "audio": "none"},
        {"path": "quiet.mp4", "audio": "silent"},
    ]
    for record in store.records:
        sound = store.read_audio(record.clip_id)
        if record.audio == "none":
            assert sound is None
        else:
            assert sound.shape == (clip_samples(record.num_frames, record.fps, 16000), 2)
            assert sound.dtype == np.float32
    # The clip starting at 1.0 s (its first frame is the source's frame 8) hears the burst of
    # second 1.25 at 0.25 s, on both sides of a mono source.
    record = store.record("tone.mp4#1")
    assert record.start == 1.0 and store.read("tone.mp4#1")[0, 0, 0, 0] == 8 * 8
    sound = store.read_audio("tone.mp4#1")
    assert abs(_onset(sound, 16000) - 0.25) <= 1e-3
    np.testing.assert_array_equal(sound[:, 0], sound[:, 1])
    avi = store.read_audio("stereo.avi#0")
    assert abs(_onset(avi, 16000) - 0.6) <= 1e-3 and np.abs(avi[:, 1]).max() < 1e-3
    assert store.extra[PREPARE_KEY] | {"max_seconds": 1.0} == {
        "max_seconds": 1.0, "fps": 8.0, "max_area": 1024, "audio_rate": 16000, "audio_channels": 2,
        "scene_threshold": 27.0, "letterbox_crop": True,
    }  # fmt: skip


def test_a_rerun_with_other_audio_flags_is_refused_naming_stored_and_asked(made, capsys):
    sources, path, _ = made
    for asked, said in (
        ({"audio_channels": 1}, "--audio-channels 2 -> 1"),
        ({"audio_rate": 22050, "audio_channels": 2}, "--audio-rate 16000 -> 22050"),
        ({"audio_rate": None}, "--audio-rate 16000 --audio-channels 2 -> --no-audio"),
    ):
        with pytest.raises(ConfigError, match=said):
            prepare(sources, path, **SHAPE | asked)
    # The same through the command line: one line, exit 2, nothing written.
    common = [
        "prepare",
        "--input",
        str(sources),
        "--output",
        str(path),
        "--max-seconds",
        "1",
        "--max-area",
        "1024",
    ]
    assert cli.main([*common, "--no-audio"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--no-audio" in error and error.startswith("sora-jax prepare: ")
    assert cli.main([*common, "--audio-channels", "3"]) == 2
    assert "--audio-channels must be 1 (mono) or 2 (stereo), got 3" in capsys.readouterr().err
    # The stored flags resume it (every source is done already).
    again = prepare(sources, path, audio_channels=2, **SHAPE)
    assert (again.sources_done, again.skipped_done) == (0, 5)


def test_a_store_made_before_sound_reads_none_and_resumes_only_without_audio(made, tmp_path):
    sources, _, _ = made
    old = ClipStore.create(
        tmp_path / "old", extra={PREPARE_KEY: {"max_seconds": 1.0, "fps": 8.0, "max_area": 1024}}
    )
    old.append(_ramp(8), clip_id="a#0", fps=8.0, caption="a", source="a", start=0.0)
    old.mark_done("a")
    old.close()
    old = ClipStore.open(tmp_path / "old")
    assert old.audio_sample_rate == 0 and old.record(0).audio == "none" and old.read_audio(0) is None
    audio = audio_section()
    audio.enabled = True
    loaded = StoreSource(old, _data(), (1, 8, 8), audio=audio).load(0, 4, 32, 32, np.random.default_rng(0))
    assert loaded.audio is None
    with pytest.raises(ConfigError, match="--no-audio -> --audio-rate 16000 --audio-channels 1"):
        prepare(sources / "mute.mp4", tmp_path / "old", **SHAPE)
    # Made before scene cuts and letterbox crops too: it resumes with them off.
    old_filters = {"scene_threshold": None, "letterbox_crop": False}
    report = prepare(sources / "mute.mp4", tmp_path / "old", audio_rate=None, **old_filters, **SHAPE)
    assert report.sources_done == 1 and report.audio == {}
    assert [r.audio for r in ClipStore.open(tmp_path / "old").records] == ["none"] * 3


def test_a_failed_group_leaves_no_sound_behind(tmp_path):
    store = ClipStore.create(tmp_path / "s", audio_sample_rate=8000, audio_channels=1)
    sound = _burst(1.0, 8000, 0.5)
    with pytest.raises(RuntimeError), store.atomic():
        store.append(_ramp(8), clip_id="x#0", fps=8.0, caption="x", source="x", start=0.0, audio=sound)
        raise RuntimeError("the source failed midway")
    store.append(_ramp(8), clip_id="y#0", fps=8.0, caption="y", source="y", start=0.0, audio=-sound)
    store.close()
    reopened = ClipStore.open(tmp_path / "s")
    assert [r.clip_id for r in reopened.records] == ["y#0"] and reopened.record(0).audio_offset == 0
    np.testing.assert_allclose(reopened.read_audio("y#0"), -sound, atol=1 / 32767)
    with pytest.raises(ValueError, match="4000 audio samples, but 8 frames at 8 fps last 8000"):
        store.append(_ramp(8), clip_id="z#0", fps=8.0, caption="z", source="z", start=0.0, audio=sound[:4000])


def _data() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"side": (8, 32), "frames": (1, 8)})


def test_store_source_gives_the_sound_of_the_frames_it_loads(made):
    _, path, _ = made
    store = ClipStore.open(path)
    index = [r.clip_id for r in store.records].index("tone.mp4#1")
    audio = audio_section()
    audio.enabled = True
    for rate, channels in ((16000, 2), (8000, 1)):  # As stored; resampled and mixed to mono.
        audio.sample_rate, audio.channels = rate, channels
        source = StoreSource(store, _data(), (1, 8, 8), audio=audio)
        for seed in range(3):
            loaded = source.load(index, 6, 32, 32, np.random.default_rng(seed))
            first = int(np.random.default_rng(seed).integers(0, 8 - 6 + 1))  # The crop's first frame.
            assert loaded.frames[0, 0, 0, 0] == 8 * (8 + first)
            assert loaded.audio.shape == (clip_samples(6, FPS, rate), channels)
            assert abs(_onset(loaded.audio, rate) - (0.25 - first / FPS)) <= 1e-3
    mute = [r.clip_id for r in store.records].index("mute.mp4#0")
    assert source.load(mute, 4, 32, 32, np.random.default_rng(0)).audio is None
    audio.enabled = False
    assert (
        StoreSource(store, _data(), (1, 8, 8), audio=audio)
        .load(index, 6, 32, 32, np.random.default_rng(0))
        .audio
        is None
    )


def test_latent_store_keeps_the_sound_encode_copies_and_gives_that_of_the_frames_it_encodes(made, tmp_path):
    """encode copies each clip's sound unchanged; a latent clip of T' frames gets the sound of the
    1 + (T' - 1) * temporal_factor video frames it encodes."""
    from sora_jax.autoencoder.config import tiny_config
    from sora_jax.autoencoder.model import build_autoencoder
    from sora_jax.autoencoder.trained import TrainedAutoencoder
    from sora_jax.data.encode import encode_into_store, store_clips

    _, path, _ = made
    pixels = ClipStore.open(path)
    config = tiny_config(channel_multipliers=(1, 2), temporal_downsample=(True,), norm="rms")
    vae = TrainedAutoencoder(build_autoencoder(config, seed=0), config, str(tmp_path / "vae"), 0)
    latents = tmp_path / "latents"
    kept = {"tone.mp4#1", "quiet.mp4#0", "mute.mp4#0"}  # Sound, silent, none; one shape: one compile.
    encode_into_store(
        vae,
        (clip for clip in store_clips(pixels) if clip.clip_id in kept),
        str(latents),
        audio_sample_rate=pixels.audio_sample_rate,
        audio_channels=pixels.audio_channels,
    )
    store = ClipStore.open(latents)
    assert store.extra[AUTOENCODER_KEY]["temporal_factor"] == 2 and STATS_KEY in store.extra
    assert len(store) == len(kept)
    for record in (pixels.record(clip_id) for clip_id in kept):
        assert store.record(record.clip_id).audio == record.audio
        stored, copied = pixels.read_audio(record.clip_id), store.read_audio(record.clip_id)
        assert (stored is None and copied is None) or np.array_equal(stored, copied)
    audio = audio_section()
    audio.enabled, audio.channels = True, 2
    source = LatentStoreSource(store, _data(), (1, 2, 2), config.latent_channels, audio=audio)
    index = [store.records[i].clip_id for i in source.usable].index("tone.mp4#1")
    loaded = source.load(index, 3, 8, 8, np.random.default_rng(0))  # Video frames 0 .. 4.
    np.testing.assert_array_equal(
        loaded.audio, pixels.read_audio("tone.mp4#1")[: clip_samples(5, FPS, 16000)]
    )


def test_world_source_renders_each_clips_own_sound(tmp_path):
    data = ml_collections.ConfigDict({"side": (16, 16), "frames": (1, 9), "fps": (6.0, 6.0)})
    audio = audio_section()
    audio.enabled = True
    loaded = WorldSource(3, data, (1, 8, 8), audio=audio).load(5, 9, 16, 16, np.random.default_rng(0))
    clip = world.make_clip(3, 5, frames=9, height=16, width=16, fps=6.0)
    np.testing.assert_array_equal(loaded.frames, clip.frames)
    np.testing.assert_array_equal(loaded.audio, world_audio.clip_audio(clip, sample_rate=16000, channels=1))
    assert loaded.audio.shape == (clip_samples(9, 6.0, 16000), 1)
    silent = WorldSource(3, data, (1, 8, 8)).load(5, 9, 16, 16, np.random.default_rng(0))
    assert silent.audio is None and silent.caption == loaded.caption


def test_write_video_adds_an_aac_track_as_long_as_the_video(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (13, 24, 32, 3), dtype=np.uint8)
    for channels in (1, 2):
        sound = _burst(1.0, 16000, 0.5, channels=channels)  # 1 s of sound for a 1.625 s video.
        write_video(tmp_path / "a.mp4", frames, FPS, audio=sound)
        write_video(tmp_path / "b.mp4", frames, FPS)
        with av.open(str(tmp_path / "a.mp4")) as container:
            video, track = container.streams.video[0], container.streams.audio[0]
            assert (track.codec_context.name, track.channels, track.sample_rate) == ("aac", channels, 16000)
            seconds = float(video.duration * video.time_base)
            decoded = sum(frame.samples for frame in container.decode(track))
        assert seconds == pytest.approx(13 / FPS)
        assert abs(decoded - 13 / FPS * 16000) <= 1024  # Within one AAC frame.
        # The sound leaves the picture alone. Not compared exactly: x264 does not always encode the
        # same frames to the same file on a busy CPU (2 distinct files of 40 writes, twice; the one
        # mismatch seen here differed by at most 26 grey levels, in a fifth of the values). A frame
        # dropped or shifted by the audio stream differs by 64 or more on average (noise frames).
        with_sound, without = (read_video(tmp_path / name)[0].astype(np.int16) for name in ("a.mp4", "b.mp4"))
        assert with_sound.shape == without.shape == frames.shape
        assert np.abs(with_sound - without).mean(axis=(1, 2, 3)).max() < 20
        heard = read_audio(tmp_path / "a.mp4", sample_rate=16000, channels=channels)
        assert abs(_onset(heard, 16000) - 0.5) <= 1e-3 and not np.abs(heard[20000:]).max() > 1e-3


def test_write_wav_round_trips_16_bit_pcm(tmp_path):
    sound = np.random.default_rng(1).uniform(-1, 1, (3000, 2)).astype(np.float32)
    write_wav(tmp_path / "x.wav", sound, 22050)
    with wave.open(str(tmp_path / "x.wav")) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()) == (
            2,
            2,
            22050,
            3000,
        )
        pcm = np.frombuffer(wav.readframes(3000), "<i2").reshape(-1, 2)
    np.testing.assert_allclose(pcm / 32767, sound, atol=0.5 / 32767 + 1e-7)
    np.testing.assert_allclose(
        read_audio(tmp_path / "x.wav", sample_rate=22050, channels=2), sound, atol=1e-4
    )


def test_sound_mistakes_are_one_line_errors_naming_the_file(tmp_path):
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"a\.gif: audio can only be written into an \.mp4"):
        write_video(tmp_path / "a.gif", frames, FPS, audio=np.zeros((8000, 1), np.float32))
    with pytest.raises(ValueError, match="a.mp4: AAC takes sample rates"):
        write_video(tmp_path / "a.mp4", frames, FPS, audio=np.zeros((8000, 1), np.float32), sample_rate=12345)
    with pytest.raises(ValueError, match="x.wav: audio contains NaN"):
        write_wav(tmp_path / "x.wav", np.full((10, 1), np.nan, np.float32), 16000)
    with pytest.raises(ValueError, match=r"x.wav: audio must be float \[samples, 1 or 2 channels\]"):
        write_wav(tmp_path / "x.wav", np.zeros((10, 3), np.float32), 16000)
    assert not list(tmp_path.iterdir())  # Nothing half-written.
