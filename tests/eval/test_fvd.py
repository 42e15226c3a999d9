"""Fréchet distance on known distributions, and FVD ranking videos the way it should."""

import numpy as np

from sora_jax.data import world
from sora_jax.eval.fvd import (
    RandomVideoFeatures,
    feature_statistics,
    frechet_distance,
    frechet_video_distance,
)


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    d = 6
    mu1, mu2 = np.zeros(d), np.arange(d) / 3.0
    s1, s2 = np.linspace(0.5, 2.0, d), np.linspace(3.0, 0.2, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1**2 + s2**2 - 2 * s1 * s2)
    # Diagonal covariances, then both rotated alike (the distance does not depend on the basis).
    np.testing.assert_allclose(
        frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)), expected, rtol=1e-9
    )
    q = _rotation(d, 0)
    rotated = frechet_distance(q @ mu1, q @ np.diag(s1**2) @ q.T, q @ mu2, q @ np.diag(s2**2) @ q.T)
    np.testing.assert_allclose(rotated, expected, rtol=1e-9)
    assert frechet_distance(mu2, np.diag(s2**2), mu2, np.diag(s2**2)) < 1e-9


def test_sample_statistics_converge_to_the_distance_of_their_distributions():
    rng = np.random.default_rng(1)
    d, n = 4, 40_000
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d)) * 2.0 + 1.0
    expected = d * 1.0 + d * (1 + 4 - 2 * 2)  # |mu|^2 = 4, trace terms 4 * (1 + 4 - 4).
    np.testing.assert_allclose(
        frechet_distance(*feature_statistics(a), *feature_statistics(b)), expected, rtol=0.03
    )


def test_fvd_ranks_real_clips_closer_to_real_than_noise_or_frozen_clips():
    def clips(seed, count=12):
        return np.stack(
            [world.make_clip(seed, i, frames=8, height=32, width=32, fps=6.0).frames for i in range(count)]
        )

    real, other_real = clips(0), clips(1)
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    frozen = np.repeat(other_real[:, :1], 8, axis=1)
    extractor = RandomVideoFeatures()
    np.testing.assert_array_equal(extractor(real[:2]), RandomVideoFeatures()(real[:2]))  # Seeded.
    to_real = frechet_video_distance(real, other_real, extractor)
    assert (
        to_real
        < frechet_video_distance(real, frozen, extractor)
        < frechet_video_distance(real, noise, extractor)
    )
