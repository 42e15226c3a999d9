"""Scoring the sound of a video: are the impacts heard, as many as the scene has, when the video shows them?

A held-out caption comes from a world clip, whose simulation knows every impact it makes
(``clip.impacts``); the world's own sound (``world_audio.clip_audio``) is one short sound per impact.
:func:`detect_onsets` finds where sounds start in any audio, and :func:`sound_scores` scores, each
in [0, 1]:

===========  ===============================================================================
sound_count  the number of onsets against the number of sounds the scene makes (impacts closer
             together than ``world_audio.HEARD_APART`` are one sound): ``1 - |n - m| / max(n, m)``,
             1 when both are 0. A generated video need not match the scene's timing, only how many
             impacts it has, so only the count is compared with the scene.
sound_sync   timing against the video scored alongside the audio: the share of the impacts SEEN in
             it (an object's fall turning into a rise or a stop, or its motion reversing at the
             frame's edge, a wall) with an onset within a video frame of them, above chance. Chance
             is that share with the onsets moved by 3 or more frames (wrapping round the clip):
             ``max(0, (share - chance) / (1 - chance))``, 0 when chance is 1 (onsets everywhere);
             NaN when the video shows no impact.
sound        ``sound_count * sound_sync`` (``sound_count`` alone where ``sound_sync`` is NaN): high
             only when there are as many sounds as impacts AND they fall on the impacts.
===========  ===============================================================================

Sync is judged against the video itself, so a video that moves differently from the scene is still
in sync when its sound follows its own motion. Onsets that fall on no seen impact are not counted
against it directly (the scene's collisions and sub-frame hops make sounds the frames do not show),
but a sound on every frame buys nothing: chance then hits every seen impact too. At 8 fps a frame
either side of an impact is a quarter of a second, so chance alone is about half the seen impacts;
the correction is what tells audio 0.25 s late from audio on time.
:func:`sound_reference_scores` gives the figures a generator can be put beside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sora_jax.data import world, world_audio
from sora_jax.eval import world_score

SOUND_SCORES = ("sound_count", "sound_sync", "sound")

# Onset detection on log-energy envelopes: the mean square over a 4 ms window ending every 1 ms.
# A sound starts where an envelope jumps RISE_DB above its level over the LOOKBACK before the window
# (its 25th percentile: low-frequency room noise swings widely in 4 ms windows, so the minimum would
# be too low a reference); stationary noise fluctuates by a few dB in such windows, never that far.
_HOP_S, _WINDOW_S, _LOOKBACK_S = 0.001, 0.004, 0.03
_RISE_DB = 10.0
_FLOOR_DB = -55.0  # quieter than this (RMS ~0.002) is silence whatever it does
_SILENCE_DB = -100.0  # the level of digital silence, so a first sample rising out of it is an onset
# The second envelope is of the signal pre-emphasised (x[n] - 0.9 x[n-1], high frequencies up to
# +20 dB): a knock starting while a low thump still rings is a jump there, not in the plain energy.
_PRE_EMPHASIS = 0.9
_ONSET_SLACK_S = 0.01  # onset detection error allowed on top of the one-frame sync tolerance


def detect_onsets(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """float64 ``[n]`` seconds, ascending: where sounds start in ``audio`` (``[samples, channels]`` or
    ``[samples]``, channels mixed down), at least ``world_audio.HEARD_APART`` s apart.

    An onset is a jump of the short-time energy, of the signal as it is or pre-emphasised, 10 dB
    above its usual level in the 30 ms before, to above -55 dBFS; its time is the first sample of
    the jump well above that level, so a sharp attack out of silence is placed within a
    millisecond, out of a room tone within a few. Steady sound (room tone, white noise) has no
    onsets; a sound rising out of it has one once it is ~10 dB louder.
    """
    signal = np.asarray(audio, np.float64)
    signal = signal.mean(axis=1) if signal.ndim == 2 else signal
    if signal.ndim != 1:
        raise ValueError(f"audio must be [samples] or [samples, channels], got shape {np.shape(audio)}")
    if sample_rate < 1000:
        raise ValueError(f"sample_rate must be at least 1000, got {sample_rate}")
    emphasised = signal - _PRE_EMPHASIS * np.concatenate([signal[:1], signal[:-1]])
    candidates = sorted(_jumps(signal, sample_rate) + _jumps(emphasised, sample_rate))
    onsets: list[float] = []
    for time in candidates:  # both envelopes jump at most sounds: keep the first of each
        if not onsets or time - onsets[-1] >= world_audio.HEARD_APART:
            onsets.append(time)
    return np.asarray(onsets, np.float64)


def _jumps(signal: np.ndarray, sample_rate: int) -> list[float]:
    """Seconds at which the short-time energy of ``signal`` jumps (see :func:`detect_onsets`)."""
    hop = round(_HOP_S * sample_rate)
    window = round(_WINDOW_S * sample_rate)
    ends = np.arange(hop, len(signal) + 1, hop)
    if not ends.size:
        return []
    power = np.concatenate([[0.0], np.cumsum(signal**2)])
    starts = np.maximum(ends - window, 0)
    level = 10.0 * np.log10((power[ends] - power[starts]) / (ends - starts) + 10 ** (_SILENCE_DB / 10))
    # The level before each window: over the lookback ending where the window starts (frames before
    # the audio's start repeat its first, so audio does not "start" at sample 0).
    back, lag = round(_LOOKBACK_S / _HOP_S), window // hop
    padded = np.concatenate([np.full(back + lag, level[0]), level])
    lookback = np.lib.stride_tricks.sliding_window_view(padded[: len(level) + back - 1], back)
    before = np.percentile(lookback, 25, axis=1)
    rising = (level - before >= _RISE_DB) & (level >= _FLOOR_DB)
    # One candidate per jump, at its first frame: a jump stays "risen" for the lookback's length.
    jumps = []
    for frame in np.flatnonzero(rising & ~np.concatenate([[False], rising[:-1]])):
        lo, end = max(int(starts[frame]) - hop, 0), int(ends[frame])
        above = np.abs(signal[lo:end]) > 3.0 * 10 ** (before[frame] / 20)
        jumps.append((lo + int(np.argmax(above))) / sample_rate)
    return jumps


def seen_impacts(
    video: np.ndarray,
    clip: world.WorldClip,
    fps: float,
    *,
    colour_tolerance: float = 60.0,
    min_pixels: int = 2,
) -> list[tuple[float, float]]:
    """``(earliest, latest)`` seconds of every impact ``video`` (uint8 ``[T, H, W, 3]`` at ``fps``) shows.

    Each object of ``clip``'s scene (the one the video was asked for) is followed by its colour as in
    ``world_score.world_scores``. An impact is seen where its height turns from falling to rising (a
    bounce) or to staying put for two frames (a landing), or where it reverses left-right at the
    frame's edge (a wall). Moves of at most ``world_score.BOUNCE_EPS`` pixels a frame are neither.
    The interval is where the impact must lie: from the last frame still moving towards it to the
    first moving away (a landing: two frames after the last fall, as it may sink under eps a frame).
    """
    height, width = video.shape[1:3]
    scale = (height / clip.frames.shape[1]) ** 2
    areas = {fact.colour: fact.area * scale for fact in world_score.scene_facts(clip)}
    masks = world_score.colour_masks(video, colour_tolerance)
    found = []
    for colour, area in areas.items():
        track = world_score.follow(masks[colour], min_pixels, 3.0 * area + 8.0, np.sqrt(area) + 2.0)
        x, y = track[:, 0], track[:, 1]
        for before, after in _turns(y, world_score.BOUNCE_EPS, landing=True):
            found.append((before / fps, after / fps))
        half = 0.5 * np.sqrt(area) + 2.0  # an object touching a side of the frame has its centre here
        for before, after in _turns(x, world_score.BOUNCE_EPS, landing=False):
            if x[(before + after) // 2] >= width - half:  # moving right, then left: the right wall
                found.append((before / fps, after / fps))
        for before, after in _turns(-x, world_score.BOUNCE_EPS, landing=False):
            if x[(before + after) // 2] <= half:
                found.append((before / fps, after / fps))
    return sorted(found)


def _turns(y: np.ndarray, eps: float, landing: bool) -> list[tuple[int, int]]:
    """``(before, after)`` frames around each turn of ``y`` from growing (by more than ``eps`` a frame)
    to shrinking, or, if ``landing``, to holding still for the two frames after; only over runs of
    frames where ``y`` is known."""
    turns = []
    steps = np.diff(y)
    k = 0
    while k < len(steps):
        if not steps[k] > eps:
            k += 1
            continue
        j = k + 1
        while j < len(steps) and abs(steps[j]) <= eps:
            j += 1
        if j < len(steps) and steps[j] < -eps:
            turns.append((k, j + 1))
        elif landing and j - k >= 3:
            turns.append((k, k + 2))  # it may still have been sinking, under eps, into the next frame
        k = j
    return turns


def sound_scores(
    clip: world.WorldClip,
    audio: np.ndarray,
    sample_rate: int,
    video: np.ndarray | None = None,
    fps: float | None = None,
) -> dict[str, float]:
    """The sound scores of ``audio`` (``[samples, channels]``) for ``clip``'s scene (see the module
    docstring); ``video`` (uint8 ``[T, H, W, 3]`` at ``fps``, default ``clip.fps``) is the video the
    audio accompanies, whose seen impacts ``sound_sync`` is judged against (NaN without a video)."""
    rate = clip.fps if fps is None else float(fps)
    seen = None if video is None else seen_impacts(video, clip, rate)
    frames = 0 if video is None else len(video)
    return _scores(clip, detect_onsets(audio, sample_rate), seen, frames, rate)


def _scores(
    clip: world.WorldClip, onsets: np.ndarray, seen: list | None, frames: int, fps: float
) -> dict[str, float]:
    """:func:`sound_scores` from the ``onsets`` found and the impacts ``seen`` in a ``frames``-frame
    video (None: no video)."""
    expected = len(world_audio.heard(clip.impacts))
    most = max(len(onsets), expected)
    count = 1.0 - abs(len(onsets) - expected) / most if most else 1.0
    sync = float("nan") if seen is None else _sync(seen, onsets, frames, fps)
    overall = count if np.isnan(sync) else count * sync
    return {"sound_count": float(count), "sound_sync": sync, "sound": float(overall)}


def _sync(seen: list[tuple[float, float]], onsets: np.ndarray, frames: int, fps: float) -> float:
    """``sound_sync`` of ``onsets`` (s) against the ``seen`` impact intervals of a ``frames``-frame video."""
    if not seen:
        return float("nan")

    def share(times: np.ndarray) -> float:
        return float(
            np.mean(
                [np.any((times >= lo - _ONSET_SLACK_S) & (times <= hi + _ONSET_SLACK_S)) for lo, hi in seen]
            )
        )

    # Shifts of 3 frames or more (either way, round the clip) move every onset clear of the
    # seen impact it belongs to, which is at most a frame either side of its interval.
    duration = frames / fps
    shifted = [share(np.mod(onsets + lag / fps, duration)) for lag in range(3, frames - 2)]
    chance = float(np.mean(shifted)) if shifted else 0.0
    if chance >= 1.0:  # onsets everywhere: they show no timing at all
        return 0.0
    return max(0.0, (share(onsets) - chance) / (1.0 - chance))


SOUND_REFERENCES = ("real", "room_tone", "other_scene", "silence", "noise", "shifted", "every_frame")


def sound_reference_scores(
    clips: Sequence[world.WorldClip], sample_rate: int = 16000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Mean sound scores, per reference, each with its clip's own video: ``real`` (the world's own
    audio, what a perfect generator scores), ``room_tone`` (the same over a room tone of RMS 0.01),
    ``other_scene`` (the next clip's audio: real sounds, wrong scene), ``silence``, ``noise`` (white
    noise of RMS 0.1, about the level of a generated sample; seeded by ``seed``) and ``shifted`` (the
    real audio 0.25 s late) and ``every_frame`` (a knock on every video frame: sound everywhere, so
    on every impact too, but no timing). Needs at least two clips."""
    if len(clips) < 2:
        raise ValueError(f"sound reference scores need at least 2 clips (other_scene), got {len(clips)}")
    rng = np.random.default_rng(seed)
    knock = world_audio.impact_sound("box", world.SIZES["medium"], sample_rate, np.random.default_rng(seed))
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in SOUND_REFERENCES}
    for index, clip in enumerate(clips):
        real = world_audio.clip_audio(clip, sample_rate=sample_rate)
        other = world_audio.clip_audio(clips[(index + 1) % len(clips)], sample_rate=sample_rate)
        other = np.concatenate([other, np.zeros_like(real)])[: len(real)]  # another format: cut or pad
        delay = round(0.25 * sample_rate)
        every_frame = np.zeros_like(real)
        for frame in range(len(clip.frames)):
            start = round(frame / clip.fps * sample_rate)
            sound = 0.5 * knock[: len(real) - start]
            every_frame[start : start + len(sound), 0] += sound
        variants = {
            "real": real,
            "room_tone": world_audio.clip_audio(clip, sample_rate=sample_rate, room_tone=0.01),
            "other_scene": other,
            "silence": np.zeros_like(real),
            "noise": (0.1 * rng.standard_normal(real.shape)).astype(np.float32),
            "shifted": np.concatenate([np.zeros_like(real[:delay]), real[: len(real) - delay]]),
            "every_frame": every_frame,
        }
        seen = seen_impacts(clip.frames, clip, clip.fps)  # one video for every variant
        for name, audio in variants.items():
            onsets = detect_onsets(audio, sample_rate)
            rows[name].append(_scores(clip, onsets, seen, len(clip.frames), clip.fps))
    return {name: _mean(found) for name, found in rows.items()}


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    result = {}
    for score in SOUND_SCORES:
        values = np.asarray([row[score] for row in rows], np.float64)
        values = values[np.isfinite(values)]
        result[score] = float(values.mean()) if values.size else float("nan")
    return result


def sound_check(clips: int = 40, seed: int = 1_000_003) -> dict[str, dict[str, float]]:
    """:func:`sound_reference_scores` of ``clips`` held-out world clips (16 frames, 32x32, 8 fps, of
    world seed ``seed``), like ``world_score.corruption_check``. ``python -m sora_jax.eval.sound_score``
    prints them."""
    made = [world.make_clip(seed, index, frames=16, height=32, width=32, fps=8.0) for index in range(clips)]
    return sound_reference_scores(made)


if __name__ == "__main__":
    for name, scores in sound_check().items():
        print(f"{name:12s}", "  ".join(f"{score} {value:.2f}" for score, value in scores.items()))
