"""Audio codecs: a clip's sound as tokens of its packed row, and tokens back as sound.

Audio is float32 ``[samples, channels]`` in [-1, 1]; sample ``n`` sounds at ``n / sample_rate`` s. A
codec cuts it into consecutive tokens of ``token_samples`` samples each (the last one zero-padded), every
token a ``patch_dim`` vector of roughly unit scale, in which silence is always the same value. Two
representations (``audio.representation``):

- :class:`MelCodec` (``mel``): a log-mel spectrogram, ``frames_per_token`` frames a token; compact and
  perceptual, but its phase is gone, so decoding estimates one (Griffin-Lim).
- :class:`WaveformCodec` (``waveform``): the raw samples, exactly invertible, but every sample is a
  feature the diffusion model must get right.

Both are pure numpy and deterministic: the same tokens always decode to the same samples.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import ml_collections
import numpy as np

from sora_jax.audio.config import validate_audio_section


def clip_samples(frames: int, fps: float, sample_rate: int) -> int:
    """Samples of the audio of a clip of ``frames`` frames at ``fps``: ``round(frames / fps * sample_rate)``
    (the clip lasts ``frames / fps`` s, frame ``k`` showing time ``k / fps``)."""
    if frames < 0 or not fps > 0 or sample_rate < 1:
        raise ValueError(f"bad clip format: {frames=}, {fps=}, {sample_rate=}")
    return round(frames / fps * sample_rate)


def audio_token_times(
    num_tokens: int, token_samples: int, sample_rate: int, fps: float, pt: int
) -> np.ndarray:
    """float32 ``[num_tokens]``: each audio token's time on its clip's video clock, in temporal patches.

    Token ``k`` is placed at its centre, ``(k + 0.5) * token_samples / sample_rate`` s, which is
    ``(k + 0.5) * token_samples / sample_rate * fps`` frames; video temporal patch ``t`` holds frames
    ``t * pt .. t * pt + pt - 1``, whose centre is frame ``t * pt + (pt - 1) / 2``. So the time is
    ``(frames - (pt - 1) / 2) / pt``, and a token centred on patch ``t``'s centre gets exactly ``t``:
    rotary positions put sound and picture of the same moment at the same time coordinate.
    """
    centre_frames = (np.arange(num_tokens, dtype=np.float64) + 0.5) * token_samples / sample_rate * fps
    return ((centre_frames - (pt - 1) / 2) / pt).astype(np.float32)


@runtime_checkable
class AudioCodec(Protocol):
    """Audio <-> tokens of one representation (built by :func:`codec_from_config`)."""

    sample_rate: int
    channels: int
    token_samples: int  # Samples (per channel) one token spans.
    patch_dim: int  # P_a: features of one token.

    def num_tokens(self, samples: int) -> int:
        """``ceil(samples / token_samples)``: tokens of a clip of ``samples`` samples."""
        ...

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """float32 ``[num_tokens(n), patch_dim]`` of ``[n, channels]`` audio."""
        ...

    def decode(self, tokens: np.ndarray, samples: int | None = None) -> np.ndarray:
        """float32 ``[samples, channels]`` in [-1, 1] (``samples`` defaults to
        ``len(tokens) * token_samples``) of ``[N, patch_dim]`` tokens."""
        ...


def codec_from_config(section: ml_collections.ConfigDict) -> AudioCodec:
    """The codec an ``audio`` config section describes (validated first: ConfigError naming the key)."""
    validate_audio_section(section)
    if section.representation == "waveform":
        return WaveformCodec(section.sample_rate, section.channels, section.samples_per_token)
    return MelCodec(
        section.sample_rate, section.channels, section.mels, section.hop, section.frames_per_token
    )


class _TokenLayout:
    """What both codecs share: the token grid over time and the checks of their inputs."""

    sample_rate: int
    channels: int
    token_samples: int
    patch_dim: int

    def num_tokens(self, samples: int) -> int:
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        return -(-samples // self.token_samples)

    def _checked_audio(self, audio: np.ndarray) -> np.ndarray:
        """``audio`` as float64 ``[channels, n_tokens * token_samples]``, zero-padded at the end."""
        audio = np.asarray(audio)
        if audio.ndim != 2 or audio.shape[1] != self.channels:
            raise ValueError(f"audio must be [samples, {self.channels}], got shape {audio.shape}")
        padded = np.zeros((self.channels, self.num_tokens(len(audio)) * self.token_samples))
        padded[:, : len(audio)] = audio.T
        return padded

    def _checked_tokens(self, tokens: np.ndarray, samples: int | None) -> tuple[np.ndarray, int]:
        """``tokens`` as float64 ``[N, patch_dim]`` and the samples to decode."""
        tokens = np.asarray(tokens, np.float64)
        if tokens.ndim != 2 or tokens.shape[1] != self.patch_dim:
            raise ValueError(f"tokens must be [N, {self.patch_dim}], got shape {tokens.shape}")
        spanned = len(tokens) * self.token_samples
        samples = spanned if samples is None else samples
        if not 0 <= samples <= spanned:
            raise ValueError(f"{len(tokens)} tokens span {spanned} samples; cannot decode {samples}")
        return tokens, samples

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class WaveformCodec(_TokenLayout):
    """Tokens of raw samples: token ``k`` holds samples ``[k * samples_per_token, (k + 1) *
    samples_per_token)``, sample-major (``[samples_per_token, channels]`` flattened), times ``SCALE``.

    ``decode(encode(x))`` is ``x`` exactly (float32 audio in [-1, 1]): the scale is a power of two.
    """

    # Everyday audio sits near -18 dBFS RMS (0.125), which this brings to unit scale, as it does the
    # physics world's impacts while they ring (RMS ~0.1); full-scale peaks reach +-8, a range a
    # diffusion model with unit-variance noise still covers. A power of two, so that scaling and
    # unscaling are exact in floating point.
    SCALE = 8.0

    def __init__(self, sample_rate: int = 16000, channels: int = 1, samples_per_token: int = 640) -> None:
        if sample_rate < 1 or channels < 1 or samples_per_token < 1:
            raise ValueError(f"bad waveform codec: {sample_rate=}, {channels=}, {samples_per_token=}")
        self.sample_rate, self.channels = sample_rate, channels
        self.token_samples = samples_per_token
        self.patch_dim = samples_per_token * channels

    def encode(self, audio: np.ndarray) -> np.ndarray:
        padded = self._checked_audio(audio)  # [C, N * token_samples]
        return (padded.T.reshape(-1, self.patch_dim) * self.SCALE).astype(np.float32)

    def decode(self, tokens: np.ndarray, samples: int | None = None) -> np.ndarray:
        tokens, samples = self._checked_tokens(tokens, samples)
        audio = tokens.reshape(-1, self.channels)[:samples] / self.SCALE
        return np.clip(audio, -1.0, 1.0).astype(np.float32)  # Generated tokens may overshoot.


class MelCodec(_TokenLayout):
    """Tokens of a normalised log-mel spectrogram, inverted by fast Griffin-Lim.

    Analysis: STFT with a periodic Hann window of ``n_fft = 4 * hop`` samples every ``hop`` samples.
    Frame ``j`` is the window centred on sample ``j * hop + hop // 2``, so it describes the ``hop``
    samples ``[j * hop, (j + 1) * hop)`` and token ``k`` (frames ``k * F .. k * F + F - 1``,
    ``F = frames_per_token``) covers exactly samples ``[k * token_samples, (k + 1) * token_samples)``;
    outside the clip the signal is zero. Magnitudes are divided by ``sum(window) / 2``, so a full-scale
    sine has a peak bin of 1. Mel power: ``mels`` triangles of unit height on the HTK mel scale from 0 Hz
    to ``sample_rate / 2`` (at small ``n_fft`` the lowest bands may catch no bin and stay silent).
    ``db = 10 log10(power + 10^(FLOOR_DB / 10))``, mapped linearly from ``[FLOOR_DB, TOP_DB]`` to
    [-1, 1] by fixed constants, never per clip: silence is exactly -1 in every clip, a full-scale
    sine's band about +1. Token ``k`` holds its ``F`` frames frame-major: ``[F, mels, channels]``
    flattened. Stereo channels are coded separately.

    Decoding undoes the normalisation (power ``10^(db / 10)`` minus the floor, so -1 is zero power),
    spreads each band's power over its bins (a non-negative least-squares fit through the filterbank), and
    runs ``iterations`` of fast Griffin-Lim (momentum 0.99) from phases drawn with a fixed seed, every
    estimate held under the amplitude the frames' energies allow (no pre-echo before an attack that
    follows silence).
    """

    FLOOR_DB = -80.0  # Power floor relative to a full-scale sine: below 16-bit audio's noise, inaudible.
    TOP_DB = 0.0  # A full-scale sine's band (about +1.8 dB at its centre).
    MOMENTUM = 0.99  # Fast Griffin-Lim (Perraudin et al. 2013): converges in far fewer iterations.
    PHASE_SEED = 0
    UNMEL_UPDATES = 32  # Non-negative least-squares refinements of the bins' powers (see _unmel_power).

    def __init__(
        self,
        sample_rate: int = 16000,
        channels: int = 1,
        mels: int = 64,
        hop: int = 160,
        frames_per_token: int = 4,
        *,
        iterations: int = 32,
    ) -> None:
        if min(sample_rate, channels, mels, hop, frames_per_token) < 1 or iterations < 0:
            shape = f"{sample_rate=}, {channels=}, {mels=}, {hop=}, {frames_per_token=}, {iterations=}"
            raise ValueError(f"bad mel codec: {shape}")
        self.sample_rate, self.channels, self.mels, self.hop = sample_rate, channels, mels, hop
        self.frames_per_token, self.iterations = frames_per_token, iterations
        self.token_samples = hop * frames_per_token
        self.patch_dim = frames_per_token * mels * channels
        self.n_fft = 4 * hop
        # The window's centre (index n_fft / 2) lands on j * hop + hop // 2 (see the class docstring).
        self._lead = 2 * hop - hop // 2
        self._window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.n_fft) / self.n_fft)
        self._gain = self._window.sum() / 2
        self._filterbank = mel_filterbank(sample_rate, self.n_fft, mels)  # [mels, bins]
        # The filterbank is ~97% zeros (a triangle covers a few bins, a bin at most two triangles):
        # products through its nonzeros beat dense ones and need no BLAS, whose threads crawl when
        # data workers share a few busy cores.
        self._band_bins = _nonzeros_by_row(self._filterbank)
        self._bin_bands = _nonzeros_by_row(self._filterbank.T)
        self._floor_power = 10.0 ** (self.FLOOR_DB / 10)

    # --- spectrogram ------------------------------------------------------------------------------

    def _stft(self, signal: np.ndarray, frames: int) -> np.ndarray:
        """complex ``[C, frames, bins]`` of ``[C, frames * hop]`` samples (zero outside)."""
        hop, channels = self.hop, len(signal)
        padded = np.zeros((channels, (frames + 3) * hop))
        padded[:, self._lead : self._lead + signal.shape[1]] = signal
        cells = padded.reshape(channels, frames + 3, hop)
        # Window j spans cells j .. j + 3 of the padded signal (n_fft = 4 hop).
        windows = np.concatenate([cells[:, i : i + frames] for i in range(4)], axis=-1)
        return np.fft.rfft(windows * self._window, axis=-1) / self._gain

    def _istft(self, spectrum: np.ndarray, samples: int) -> np.ndarray:
        """float64 ``[C, samples]``: the least-squares signal of a (maybe inconsistent) spectrum
        (weighted overlap-add, divided by the summed squared window)."""
        channels, frames, _ = spectrum.shape
        hop = self.hop
        windows = np.fft.irfft(spectrum * self._gain, n=self.n_fft, axis=-1) * self._window
        parts = windows.reshape(channels, frames, 4, hop)
        cells = np.zeros((channels, frames + 3, hop))
        weight = np.zeros((frames + 3, hop))
        squared = (self._window**2).reshape(4, hop)
        for i in range(4):
            cells[:, i : i + frames] += parts[:, :, i]
            weight[i : i + frames] += squared[i]
        signal = (cells / np.maximum(weight, 1e-10)).reshape(channels, -1)
        return signal[:, self._lead : self._lead + samples]

    def mel_power(self, audio: np.ndarray) -> np.ndarray:
        """float64 ``[C, num_tokens(n) * frames_per_token, mels]``: the mel power of ``[n, C]`` audio."""
        padded = self._checked_audio(audio)
        frames = padded.shape[1] // self.hop
        power = np.abs(self._stft(padded, frames)) ** 2  # [C, frames, bins]
        return self._to_mel(power)

    # --- tokens -----------------------------------------------------------------------------------

    def encode(self, audio: np.ndarray) -> np.ndarray:
        db = 10 * np.log10(self.mel_power(audio) + self._floor_power)
        normalised = 2 * (db - self.FLOOR_DB) / (self.TOP_DB - self.FLOOR_DB) - 1
        # [C, F, mels] -> [F, mels, C] -> tokens of frames_per_token frames each.
        return normalised.transpose(1, 2, 0).reshape(-1, self.patch_dim).astype(np.float32)

    def decode(self, tokens: np.ndarray, samples: int | None = None) -> np.ndarray:
        tokens, samples = self._checked_tokens(tokens, samples)
        normalised = tokens.reshape(-1, self.mels, self.channels).transpose(2, 0, 1)  # [C, F, mels]
        db = (normalised + 1) / 2 * (self.TOP_DB - self.FLOOR_DB) + self.FLOOR_DB
        power = np.maximum(10.0 ** (db / 10) - self._floor_power, 0.0)
        bins = self._unmel_power(power)  # [C, F, bins]
        audio = self._griffin_lim(np.sqrt(bins), self._amplitude_bound(bins))[:, :samples].T
        return np.clip(audio, -1.0, 1.0).astype(np.float32)

    def _amplitude_bound(self, bins: np.ndarray) -> np.ndarray:
        """float64 ``[C, frames * hop]``: the most each sample's magnitude can be, given each frame's
        power spectrum ``bins`` ``[C, frames, bins]``.

        A frame holding energy ``E`` (Parseval, from its spectrum) whose window weighs sample ``n`` by
        ``w`` cannot hold ``|x[n]| > sqrt(E) / w``; the bound is the least of these over the frames
        covering ``n``, so it is 0 wherever a covering frame is silent. Held to it, Griffin-Lim cannot
        smear an attack over the silence before it (pre-echo, which an onset detector hears 10 to 25 ms
        early): nothing sounds earlier than one hop before a sound that follows silence.
        """
        channels, frames, _ = bins.shape
        hop = self.hop
        # One-sided spectrum: every bin but DC and Nyquist stands for two; X = gain * normalised.
        one_sided = 2 * bins.sum(axis=-1) - bins[..., 0] - bins[..., -1]
        root_energy = np.sqrt(one_sided * self._gain**2 / self.n_fft)[..., None]  # [C, frames, 1]
        bound = np.full((channels, frames + 3, hop), np.inf)
        for i, weight in enumerate(self._window.reshape(4, hop)):  # Window part i lies in cell j + i.
            # A zero weight (the window's first sample) says nothing about its sample.
            held = np.where(weight > 0, root_energy / np.where(weight > 0, weight, 1.0), np.inf)
            bound[:, i : i + frames] = np.minimum(bound[:, i : i + frames], held)
        return bound.reshape(channels, -1)[:, self._lead : self._lead + frames * hop]

    def _to_mel(self, bins: np.ndarray) -> np.ndarray:
        """``[..., mels]`` band sums of ``[..., bins]`` (``bins @ filterbank.T``)."""
        return _sparse_product(bins, *self._band_bins)

    def _to_bins(self, bands: np.ndarray) -> np.ndarray:
        """``[..., bins]`` of ``[..., mels]`` through the transposed filterbank (``bands @ filterbank``)."""
        return _sparse_product(bands, *self._bin_bands)

    def _unmel_power(self, power: np.ndarray) -> np.ndarray:
        """``[C, F, bins]`` non-negative bin powers whose mel power approaches ``power`` ``[C, F, mels]``.

        Each band's power spread over its bins by the transposed filterbank, then refined by
        Lee-Seung multiplicative updates of the least-squares fit ``||power - bins @ filterbank.T||``:
        every bin stays non-negative (a pseudo-inverse rings below zero between band centres) and the
        fit comes several dB closer (log-spectral distance). A bin that only silent bands cover stays
        exactly zero, so silence decodes to exact zeros.
        """
        target = self._to_bins(power)
        bins = target.copy()
        for _ in range(self.UNMEL_UPDATES):
            bins *= target / np.maximum(self._to_bins(self._to_mel(bins)), 1e-30)
        return bins

    def _griffin_lim(self, magnitude: np.ndarray, bound: np.ndarray) -> np.ndarray:
        """float64 ``[C, frames * hop]`` within ``bound`` whose STFT magnitude approaches ``magnitude``
        (``[C, frames, bins]``): fast Griffin-Lim, each estimate clipped to the bound before it is
        analysed again."""
        frames = magnitude.shape[1]
        samples = frames * self.hop
        phase = np.random.default_rng(self.PHASE_SEED).uniform(0, 2 * np.pi, magnitude.shape)
        spectrum = magnitude * np.exp(1j * phase)
        previous = np.zeros_like(spectrum)
        for _ in range(self.iterations):
            rebuilt = self._stft(np.clip(self._istft(spectrum, samples), -bound, bound), frames)
            accelerated = rebuilt + self.MOMENTUM * (rebuilt - previous)
            previous = rebuilt
            spectrum = magnitude * accelerated / np.maximum(np.abs(accelerated), 1e-12)
        return np.clip(self._istft(spectrum, samples), -bound, bound)


def _nonzeros_by_row(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(columns, weights)``, both ``[rows, most nonzeros of a row]``: each row's nonzero entries,
    padded with weight 0 (column 0)."""
    counts = (matrix != 0).sum(axis=1)
    columns = np.zeros((len(matrix), max(int(counts.max(initial=0)), 1)), np.int64)
    weights = np.zeros(columns.shape)
    for row, entries in enumerate(matrix):
        (found,) = np.nonzero(entries)
        columns[row, : len(found)], weights[row, : len(found)] = found, entries[found]
    return columns, weights


def _sparse_product(values: np.ndarray, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``values @ matrix.T`` (``[..., cols] -> [..., rows]``) for ``matrix``'s :func:`_nonzeros_by_row`."""
    return np.einsum("...rw,rw->...r", values[..., columns], weights)


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 log10(1 + hz / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, mels: int) -> np.ndarray:
    """float64 ``[mels, n_fft // 2 + 1]``: triangles of unit height, equally spaced on the HTK mel
    scale from 0 Hz to ``sample_rate / 2``, each from its left neighbour's centre to its right's."""
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))
