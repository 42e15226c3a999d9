"""The physics world's sound: every impact of the simulation, heard at the moment it happens.

A clip's audio is a pure function of the clip (:func:`clip_audio`): silence, plus for each of its
``impacts`` (:class:`Impact`) a short sound starting on the exact sample of the impact,
``round(time * sample_rate)``. The sound says what hit and how hard:

- material sets the timbre: a ball is a rubbery thump (a damped tone with a few harmonics whose
  pitch sags as it rings out), a box a wooden knock (inharmonic partials of a free bar over a
  burst of band-passed noise, dying away faster);
- size sets the pitch: every frequency is inversely proportional to the radius or half-size, so a
  small object sounds higher than a large one;
- impact speed sets the loudness: the peak grows in proportion to the speed up to
  ``LOUDEST_SPEED`` (about the fastest impact a scene can make), where it reaches ``LOUDEST_PEAK``.
  There is no per-clip normalisation, so a louder clip is one with harder impacts;
- pan places it between the loudspeakers with a constant-power law (stereo only; mono is the plain
  sum of the impact sounds).

An optional room tone (quiet pink-ish noise, independent per channel) fills the silence. Any noise is
seeded from the scene, so the same clip always sounds the same (frames are bit-identical across
machines; the audio uses transcendental functions and need only be deterministic on one machine).

The words a caption uses for what is heard (:func:`sound_phrase`) are read from the same loudness,
so "a loud knock" is a box impact whose sound is loud.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from sora_jax.audio.codec import clip_samples


@dataclasses.dataclass(frozen=True)
class Impact:
    """One audible impact of the simulation.

    Attributes:
      time: seconds from the clip's start, the physics step (a multiple of 1/240 s) resolving it.
      kind: "floor" | "wall" | "collision" (two objects).
      objects: indices into ``scene["objects"]`` of the object(s) involved.
      speed: normal impact speed in units/s (relative speed along the contact normal).
      pan: where it happens in the view at that moment, -1 the left edge .. 1 the right edge
        (clamped there when it happens out of view); a collision sits midway between the two.
      material: "ball" | "box"; a collision involving a box is a "box" impact (the harder knock).
      size: radius or half-size in units; for a collision, that of the smaller object.
    """

    time: float
    kind: str
    objects: tuple[int, ...]
    speed: float
    pan: float
    material: str
    size: float


class WorldClip(Protocol):
    """What :func:`clip_audio` reads of a ``world.WorldClip`` (world imports this module for its
    captions, so this module names the clip by what it uses rather than by importing it)."""

    frames: np.ndarray
    fps: float
    scene: dict[str, Any]
    impacts: tuple[Impact, ...]


LOUDEST_SPEED = 3.0
"""Impact speed (units/s) at which the sound is as loud as it gets: a drop from the top of the view
onto the floor under the strongest gravity lands at ~2.7 units/s."""
LOUDEST_PEAK = 0.9
"""Peak amplitude of an impact at ``LOUDEST_SPEED`` or faster; overlapping sounds are clipped to [-1, 1]."""
HEARD_APART = 0.05
"""Seconds: impacts closer together than this are heard (and detected) as one sound."""
LOUD_PEAK, SOFT_PEAK = 0.4, 0.2
"""A sound peaking at ``LOUD_PEAK`` or above is called loud (impacts from ~1 unit/s), one below
``SOFT_PEAK`` soft (below ~0.35 units/s)."""
_LOUDNESS_POWER = 0.7

# Pitch: fundamental = constant / size (units), so a small ball (radius 0.05) thumps at 400 Hz and a
# large box (half-size 0.09) knocks at ~390 Hz, its higher partials making it brighter.
_BALL_HZ_UNITS, _BOX_HZ_UNITS = 20.0, 35.0
_BALL_HARMONICS = ((1.0, 1.0, 0.04), (2.0, 0.45, 0.02), (3.0, 0.2, 0.012))  # ratio, amplitude, decay s
_BALL_SAG, _BALL_SAG_TIME = 0.3, 0.015  # the pitch starts 30% high and settles within ~15 ms
_BALL_ATTACK = 0.001  # s: rubber gives, so a thump swells in over a millisecond instead of clicking
_BOX_PARTIALS = ((1.0, 1.0, 0.02), (2.76, 0.6, 0.015), (5.40, 0.4, 0.01), (8.93, 0.25, 0.006))
_BOX_NOISE, _BOX_NOISE_DECAY = 0.8, 0.005  # noise burst amplitude (before normalising) and decay, s
_RINGS_FOR = 7.0  # a sound lasts this many of its longest decay times (down to ~0.1%)
_NOUNS = {"ball": "thump", "box": "knock"}
_LEVELS = ("loud", "", "soft")
_COUNTS = ("a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def scene_seed(scene: dict) -> int:
    """A 64-bit seed from the scene's parameters: the same scene always seeds the same noise."""
    digest = hashlib.sha256(json.dumps(scene, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def peak_amplitude(impact: Impact) -> float:
    """The peak amplitude of ``impact``'s sound (mono, before mixing): ``LOUDEST_PEAK`` times
    ``(speed / LOUDEST_SPEED) ** 0.7`` (capped at 1), growing with speed but compressed as loudness
    is heard, so the softest impacts (~0.15 units/s, peak ~0.11) still stand out of a room tone."""
    return LOUDEST_PEAK * min(impact.speed / LOUDEST_SPEED, 1.0) ** _LOUDNESS_POWER


def loudness(impact: Impact) -> str:
    """How a caption describes ``impact``'s sound: "loud", "soft" or "" (neither)."""
    peak = peak_amplitude(impact)
    return "loud" if peak >= LOUD_PEAK else "soft" if peak < SOFT_PEAK else ""


def heard(impacts: Sequence[Impact], apart: float = HEARD_APART) -> list[Impact]:
    """The sounds a listener tells apart: ``impacts`` (time-ordered) grouped so that each group starts
    at least ``apart`` s after the previous group's start, each group represented by its loudest
    impact (at its own time)."""
    groups: list[list[Impact]] = []
    for impact in impacts:
        if groups and impact.time - groups[-1][0].time < apart:
            groups[-1].append(impact)
        else:
            groups.append([impact])
    return [max(group, key=lambda impact: impact.speed) for group in groups]


def sound_phrase(impacts: Sequence[Impact], rng: np.random.Generator) -> str:
    """What is heard, as a caption ending: ", with a loud knock and two soft thumps", or "; no sound
    is heard" for a silent clip. The sounds (:func:`heard`) are grouped by material (in order of
    first occurrence) and :func:`loudness` (loud first); every group's count, loudness word and
    material word ("thump" a ball, "knock" a box) are true to the clip's impacts."""
    sounds = heard(impacts)
    if not sounds:
        return ("; no sound is heard", ", in silence")[int(rng.random() * 2)]
    materials = list(dict.fromkeys(sound.material for sound in sounds))
    groups: dict[tuple[str, str], int] = {}
    for sound in sounds:
        key = (sound.material, loudness(sound))
        groups[key] = groups.get(key, 0) + 1
    items = []
    for material, level in sorted(groups, key=lambda key: (materials.index(key[0]), _LEVELS.index(key[1]))):
        count = groups[material, level]
        noun = _NOUNS[material] + ("s" if count > 1 else "")
        amount = _COUNTS[count - 1] if count <= len(_COUNTS) else "many"
        items.append(" ".join(word for word in (amount, level, noun) if word))
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return (f", with {listed}", f"; {listed} can be heard")[int(rng.random() * 2)]


def clip_audio(
    clip: WorldClip, *, sample_rate: int = 16000, channels: int = 1, room_tone: float = 0.0
) -> np.ndarray:
    """The sound of ``clip``: float32 ``[clip_samples(T, fps, sample_rate), channels]`` in [-1, 1].

    Each impact's sound starts on sample ``round(impact.time * sample_rate)`` (see the module
    docstring for timbre, pitch, loudness and pan); sounds still ringing at the clip's end are cut.

    Args:
      clip: a world clip (its ``impacts``, ``scene``, ``frames`` and ``fps`` are read).
      sample_rate: samples per second (>= 1000, so the partials of the smallest objects fit).
      channels: 1 (mono: the sum of the impact sounds) or 2 (stereo: left, right; each sound
        panned by its impact's ``pan`` with a constant-power law).
      room_tone: RMS amplitude (>= 0) of a quiet background noise, per channel; 0 is silence.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    if sample_rate < 1000 or not room_tone >= 0.0:
        raise ValueError(f"bad audio format: {sample_rate=}, {room_tone=}")
    samples = clip_samples(len(clip.frames), clip.fps, sample_rate)
    audio = np.zeros((samples, channels), np.float64)
    seed = scene_seed(clip.scene)
    if room_tone > 0.0 and samples:
        audio += _room_tone(np.random.default_rng([seed, 0]), samples, channels, sample_rate, room_tone)
    for number, impact in enumerate(clip.impacts):
        start = round(impact.time * sample_rate)
        if start >= samples:
            continue
        rng = np.random.default_rng([seed, 1, number])
        sound = peak_amplitude(impact) * impact_sound(impact.material, impact.size, sample_rate, rng)
        sound = sound[: samples - start]
        if channels == 1:
            audio[start : start + len(sound), 0] += sound
        else:
            angle = (impact.pan + 1.0) * np.pi / 4.0  # 0 hard left .. pi/2 hard right
            audio[start : start + len(sound)] += sound[:, None] * [np.cos(angle), np.sin(angle)]
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def impact_sound(material: str, size: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """float64 ``[n]``: one impact's sound at unit peak, starting on sample 0 (``rng`` draws the
    noise of a box's knock); frequencies scale as ``1 / size``, partials above Nyquist are left out
    (and the fundamental of an object too small for ``sample_rate`` held just below it)."""
    nyquist = 0.45 * sample_rate
    if material == "ball":
        f0 = min(_BALL_HZ_UNITS / size, nyquist / (1.0 + _BALL_SAG))
        t = np.arange(int(_RINGS_FOR * _BALL_HARMONICS[0][2] * sample_rate)) / sample_rate
        # The phase of a tone whose frequency sags from f0 * (1 + sag) to f0 with time constant tau.
        sag = t + _BALL_SAG * _BALL_SAG_TIME * (1.0 - np.exp(-t / _BALL_SAG_TIME))
        sound = sum(
            amp * np.exp(-t / decay) * np.sin(2 * np.pi * ratio * f0 * sag)
            for ratio, amp, decay in _BALL_HARMONICS
            if ratio * f0 * (1.0 + _BALL_SAG) <= nyquist
        )
        sound = sound * np.minimum(t / _BALL_ATTACK, 1.0)
    elif material == "box":
        f0 = min(_BOX_HZ_UNITS / size, nyquist)
        t = np.arange(int(_RINGS_FOR * _BOX_PARTIALS[0][2] * sample_rate)) / sample_rate
        sound = sum(
            amp * np.exp(-t / decay) * np.sin(2 * np.pi * ratio * f0 * t)
            for ratio, amp, decay in _BOX_PARTIALS
            if ratio * f0 <= nyquist
        )
        # The knock's noise: white noise band-passed around the upper partials, so it too is
        # higher for a smaller box, then given a sharp attack and a fast decay.
        noise = np.fft.rfft(rng.standard_normal(len(t)))
        freqs = np.fft.rfftfreq(len(t), 1.0 / sample_rate)
        noise = np.fft.irfft(noise * np.exp(-(((freqs - 4.0 * f0) / (3.0 * f0)) ** 2)), len(t))
        noise /= max(np.abs(noise).max(), 1e-12)
        sound = sound + _BOX_NOISE * noise * np.exp(-t / _BOX_NOISE_DECAY)
    else:
        raise ValueError(f"unknown material {material!r}; expected 'ball' or 'box'")
    sound = sound * np.minimum(1.0, 10.0 * (1.0 - t / t[-1]))  # fade the last tenth: no click at the cut
    return sound / np.abs(sound).max()


def _room_tone(
    rng: np.random.Generator, samples: int, channels: int, sample_rate: int, rms: float
) -> np.ndarray:
    """``[samples, channels]`` of pink-ish noise (power falling as 1 / f above 50 Hz) with RMS ``rms``
    in each channel: the hum of a quiet room, not a hiss."""
    spectrum = np.fft.rfft(rng.standard_normal((channels, samples)), axis=-1)
    freqs = np.fft.rfftfreq(samples, 1.0 / sample_rate)
    noise = np.fft.irfft(spectrum / np.sqrt(np.maximum(freqs, 50.0)), samples, axis=-1)
    noise *= rms / np.maximum(np.sqrt(np.mean(noise**2, axis=-1, keepdims=True)), 1e-12)
    return noise.T
