"""Audio representations side by side: what tokens of physics-world sound cost, and how they come back.

    python -m benchmarks.audio_representation [--clips 32] [--seed 1000003] [--no-write]

Renders ``--clips`` physics-world clips of 16 frames at 8 fps (2 s) with their own mono sound
(``world_audio.clip_audio`` at 16 kHz, no room tone), then, for each representation of
``sora_jax.audio.codec`` (the default mel codec, a 32-band mel codec, and raw waveform patches of
640 samples), encodes and decodes every clip's audio and reports:

- tokens per second of audio and features per token (``P_a``), hence features per second;
- round-trip onsets: ``sound_score.detect_onsets`` of the decoded audio against those of the
  original, matched one to one within 10 ms (the share of original onsets matched, decoded onsets
  matched to none, and the median absolute timing error of the matched ones), the share kept split
  by whether 30 ms of silence or another sound's tail precedes the onset, and how many come early;
- the log-spectral distance (dB) between original and decoded audio, on an STFT of its own
  (Hann window of 512 samples every 128), powers floored at -80 dB of full scale, averaged over
  the frames where the original is above that floor (silence would otherwise dilute it);
- the overall ``sound_score.sound_scores`` of the decoded audio with the clip's own video;
- encode and decode milliseconds per clip (one process, whatever else runs on the machine);
- the mean and standard deviation of the token values over all clips: what the diffusion model
  fits, against noise of unit variance.

The tokens' quality for generation is another question (a training comparison answers it); this
measures only what each representation keeps and costs. Writes docs/BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.report import machine_description, replace_section
from sora_jax.audio.codec import AudioCodec, MelCodec, WaveformCodec
from sora_jax.data import world, world_audio
from sora_jax.eval.sound_score import detect_onsets, sound_scores

SAMPLE_RATE = 16000
FRAMES, FPS = 16, 8.0
MATCH_S = 0.010  # An onset counts as kept if the decoded audio has one within 10 ms.
LSD_FFT, LSD_HOP, LSD_FLOOR_DB = 512, 128, -80.0
SILENT_BEFORE_S = 0.03  # An onset "after silence" has only digital silence in the 30 ms before it.


HEADING = (
    "| representation | tokens/s | P_a | features/s | kept | extra | error (ms) | LSD (dB) | sound "
    "| encode (ms) | decode (ms) | token mean | token std |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def representations() -> dict[str, AudioCodec]:
    """The rows compared, by name."""
    return {
        "mel, 64 bands (default)": MelCodec(SAMPLE_RATE, 1, mels=64, hop=160, frames_per_token=4),
        "mel, 32 bands": MelCodec(SAMPLE_RATE, 1, mels=32, hop=160, frames_per_token=4),
        "waveform, 640 samples": WaveformCodec(SAMPLE_RATE, 1, samples_per_token=640),
    }


def match_onsets(reference: np.ndarray, found: np.ndarray, tolerance: float) -> dict[int, float]:
    """Reference onset index -> signed timing error (s, found - reference) of the reference onsets
    matched one to one, each to the nearest unmatched found onset within ``tolerance``, closest
    pairs first."""
    gaps = np.abs(np.subtract.outer(reference, found))
    pairs = sorted((gaps[i, j], i, j) for i, j in zip(*np.nonzero(gaps <= tolerance), strict=True))
    matched: dict[int, float] = {}
    used_found = set()
    for _, i, j in pairs:
        if i not in matched and j not in used_found:
            used_found.add(j)
            matched[int(i)] = float(found[j] - reference[i])
    return matched


def power_db(audio: np.ndarray) -> np.ndarray:
    """``[frames, bins]`` STFT power of mono ``audio`` ``[n]`` in dB of a full-scale sine's peak bin,
    floored at ``LSD_FLOOR_DB``."""
    window = np.hanning(LSD_FFT + 1)[:-1]
    padded = np.pad(audio.astype(np.float64), (LSD_FFT // 2, LSD_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, LSD_FFT)[::LSD_HOP]
    power = np.abs(np.fft.rfft(frames * window, axis=-1) / (window.sum() / 2)) ** 2
    return 10 * np.log10(np.maximum(power, 10 ** (LSD_FLOOR_DB / 10)))


def log_spectral_distance(original: np.ndarray, decoded: np.ndarray) -> tuple[float, int]:
    """(sum over the original's audible frames of each frame's RMS dB difference, those frames)."""
    reference, other = power_db(original), power_db(decoded)
    audible = reference.max(axis=-1) > LSD_FLOOR_DB
    distance = np.sqrt(np.mean((reference - other) ** 2, axis=-1))[audible]
    return float(distance.sum()), int(audible.sum())


def measure(codec: AudioCodec, clips: list[world.WorldClip], sounds: list[np.ndarray]) -> dict[str, float]:
    """The figures of one representation over ``clips`` and their mono ``[n, 1]`` ``sounds``."""
    encode_s = decode_s = lsd_sum = 0.0
    lsd_frames = decoded_onsets = 0
    values, scores = [], []
    after_silence, errors = [], []  # Per original onset: whether silence precedes it; its error (or NaN).
    for clip, audio in zip(clips, sounds, strict=True):
        start = time.perf_counter()
        tokens = codec.encode(audio)
        encode_s += time.perf_counter() - start
        start = time.perf_counter()
        decoded = codec.decode(tokens, len(audio))
        decode_s += time.perf_counter() - start
        values.append(tokens.ravel())
        reference = detect_onsets(audio, SAMPLE_RATE)
        found = detect_onsets(decoded, SAMPLE_RATE)
        matched = match_onsets(reference, found, MATCH_S)
        for index, onset in enumerate(reference):
            first = round(onset * SAMPLE_RATE)
            after_silence.append(
                not audio[max(first - round(SILENT_BEFORE_S * SAMPLE_RATE), 0) : first].any()
            )
            errors.append(matched.get(index, np.nan))
        decoded_onsets += len(found)
        scores.append(sound_scores(clip, decoded, SAMPLE_RATE, clip.frames, clip.fps)["sound"])
        total, frames = log_spectral_distance(audio[:, 0], decoded[:, 0])
        lsd_sum, lsd_frames = lsd_sum + total, lsd_frames + frames
    errors_s, quiet = np.asarray(errors), np.asarray(after_silence, bool)
    kept = np.isfinite(errors_s)
    tokens = np.concatenate(values)
    return {
        "tokens_per_second": SAMPLE_RATE / codec.token_samples,
        "patch_dim": codec.patch_dim,
        "onsets": len(errors_s),
        "onsets_after_silence": int(quiet.sum()),
        "matched": kept.mean(),
        "matched_after_silence": kept[quiet].mean(),
        "matched_after_sound": kept[~quiet].mean(),
        "matched_early": (errors_s[kept] < 0).mean(),
        "unmatched_decoded": (decoded_onsets - kept.sum()) / max(decoded_onsets, 1),
        "median_error_ms": float(np.median(np.abs(errors_s[kept])) * 1000),
        "lsd_db": lsd_sum / max(lsd_frames, 1),
        "sound": float(np.mean(scores)),
        "encode_ms": encode_s / len(sounds) * 1000,
        "decode_ms": decode_s / len(sounds) * 1000,
        "token_mean": float(tokens.mean()),
        "token_std": float(tokens.std()),
    }


def report(results: dict[str, dict[str, float]], clips: int, seed: int, impacts: int, own: float) -> str:
    rows = "\n".join(
        f"| {name} | {r['tokens_per_second']:.0f} | {r['patch_dim']} | "
        f"{r['tokens_per_second'] * r['patch_dim']:.0f} | "
        f"{r['matched']:.3f} | {r['unmatched_decoded']:.3f} | {r['median_error_ms']:.2f} | "
        f"{r['lsd_db']:.2f} | {r['sound']:.3f} | {r['encode_ms']:.1f} | {r['decode_ms']:.1f} | "
        f"{r['token_mean']:.2f} | {r['token_std']:.2f} |"
        for name, r in results.items()
    )
    onsets = next(iter(results.values()))
    split = "\n".join(
        f"| {name} | {r['matched_after_silence']:.3f} | {r['matched_after_sound']:.3f} | "
        f"{r['matched_early']:.3f} |"
        for name, r in results.items()
    )
    return f"""{machine_description()}

`python -m benchmarks.audio_representation` encodes and decodes the mono 16 kHz sound of {clips}
physics-world clips (seed {seed}, 16 frames at 8 fps: 2 s each; {impacts} impacts, {onsets["onsets"]}
onsets detected in the originals) with each representation of `sora_jax/audio/codec.py`. Onsets
(`sound_score.detect_onsets`) of the decoded audio are matched one to one to the original's within
{MATCH_S * 1000:.0f} ms: *kept* is the share of original onsets matched, *extra* the share of decoded
onsets matched to none, *error* the median absolute timing error of the matched. *LSD* is the
log-spectral distance (512-sample Hann STFT every 128 samples, powers floored at {LSD_FLOOR_DB:.0f} dB
of full scale) over the frames where the original is audible. *sound* is `sound_score.sound_scores`'s
overall score of the decoded audio with the clip's own video (the original audio scores {own:.3f}):
what exact tokens of the real sound score after decoding. Token mean and std are over every value
of every clip's tokens, mostly silence here (the mel codec's silence is -1, the waveform's 0).
Milliseconds are per 2 s clip, in one process on this shared CPU.

{HEADING}
{rows}

Kept onsets split by what precedes them in the original ({onsets["onsets_after_silence"]} of the
{onsets["onsets"]} follow {SILENT_BEFORE_S * 1000:.0f} ms of digital silence, the others another
sound's tail), and the share of matched decoded onsets that come early:

| representation | kept after silence | kept after a sound | matched early |
|---|---:|---:|---:|
{split}

The waveform's round trip is exact, so its row only checks the measurement. Which representation
trains the better sound is for a training comparison to say; these tables are only what each keeps
and costs."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1_000_003)  # Held out: no run trains on it.
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    clips = [
        world.make_clip(args.seed, index, frames=FRAMES, height=32, width=32, fps=FPS)
        for index in range(args.clips)
    ]
    sounds = [world_audio.clip_audio(clip, sample_rate=SAMPLE_RATE) for clip in clips]
    pairs = zip(clips, sounds, strict=True)
    own = float(np.mean([sound_scores(c, a, SAMPLE_RATE, c.frames, c.fps)["sound"] for c, a in pairs]))
    impacts = sum(len(clip.impacts) for clip in clips)
    results = {name: measure(codec, clips, sounds) for name, codec in representations().items()}
    body = report(results, args.clips, args.seed, impacts, own)
    print(body)
    if not args.no_write:
        replace_section("audio_representation", "Audio representations (codec round trip)", body)


if __name__ == "__main__":
    main()
