"""Fréchet video distance over a pluggable feature extractor.

    extractor = RandomVideoFeatures()                      # or any (videos) -> [N, D] callable
    fvd = frechet_video_distance(real_videos, generated_videos, extractor)

The distance is the Fréchet (2-Wasserstein) distance between Gaussians fitted to the two sets'
features: ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2)``, computed with symmetric
eigendecompositions (float64), which stay real and stable where a general matrix square root of
``S_1 S_2`` can turn complex from rounding.

The usual extractor, I3D trained on Kinetics, needs downloaded weights, which this project never
fetches. Any callable ``uint8 [N, T, H, W, 3] -> float [N, D]`` can be passed instead; two ship:

* :class:`RandomVideoFeatures`: a fixed, seeded random 3D convolutional network (random features
  separate distributions of natural images well enough to rank models, though their scale is not
  comparable with I3D-based FVD figures);
* :class:`AutoencoderFeatures`: a trained video autoencoder's latent statistics (per-channel mean
  and standard deviation over space and time of its posterior means).

Distances from different extractors, clip shapes or sample counts are not comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FeatureExtractor = Callable[[np.ndarray], np.ndarray]


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, float64) of ``features [N, D]``, N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    root1 = _sqrt_psd(np.asarray(sigma1, np.float64))
    middle = root1 @ np.asarray(sigma2, np.float64) @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    mean_term = float(np.sum(np.square(np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64))))
    return max(mean_term + float(np.trace(sigma1) + np.trace(sigma2)) - 2.0 * float(cross), 0.0)


def frechet_video_distance(real: np.ndarray, generated: np.ndarray, extractor: FeatureExtractor) -> float:
    """FVD between two sets of uint8 videos ``[N, T, H, W, 3]`` (N >= 2 each) under ``extractor``."""
    return frechet_distance(*feature_statistics(extractor(real)), *feature_statistics(extractor(generated)))


class RandomVideoFeatures:
    """A seeded random 3D conv net: ``uint8 [N, T, H, W, 3] -> float32 [N, 2 * widths[-1]]``.

    Three stride-2 3x3x3 convolutions (widths 32, 64, 128 by default) with ReLU, then the mean and
    standard deviation of each channel over space and time. Deterministic in ``seed``.
    """

    def __init__(self, seed: int = 0, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        keys = jax.random.split(jax.random.key(seed), len(widths))
        channels = (3, *widths)
        self.kernels = [
            jax.random.normal(k, (3, 3, 3, cin, cout)) * np.sqrt(2.0 / (27 * cin))
            for k, cin, cout in zip(keys, channels[:-1], channels[1:], strict=True)
        ]
        self._features = jax.jit(self._forward)

    def _forward(self, kernels: list[jax.Array], videos: jax.Array) -> jax.Array:
        x = videos.astype(jnp.float32) / 127.5 - 1.0
        for kernel in kernels:
            x = jax.lax.conv_general_dilated(
                x, kernel, (2, 2, 2), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
            )
            x = jax.nn.relu(x)
        return jnp.concatenate([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3))], axis=-1)

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        return np.asarray(self._features(self.kernels, jnp.asarray(videos)))


class AutoencoderFeatures:
    """A trained autoencoder's view: per-channel mean and std over space and time of each video's
    posterior means, ``[N, 2 z]``. ``autoencoder``: a
    :class:`~sora_jax.autoencoder.trained.TrainedAutoencoder`."""

    def __init__(self, autoencoder: Any) -> None:
        self.autoencoder = autoencoder

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        latents = [self.autoencoder.encode(video) for video in videos]
        return np.stack([np.concatenate([z.mean(axis=(0, 1, 2)), z.std(axis=(0, 1, 2))]) for z in latents])
