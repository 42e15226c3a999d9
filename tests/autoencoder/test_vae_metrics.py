import math

import numpy as np
import pytest

from sora_jax.autoencoder.metrics import SSIM_K1, SSIM_K2, gaussian_window, psnr, ssim


def test_psnr_of_identical_videos_is_infinite():
    video = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert np.all(np.isinf(psnr(video, video)))


def test_psnr_follows_the_closed_form_for_a_known_error():
    reference = np.full((2, 16, 16, 3), 100, np.uint8)
    test = reference + np.uint8(10)  # MSE 100 on [0, 255].
    np.testing.assert_allclose(psnr(reference, test), 10 * math.log10(255**2 / 100), rtol=1e-6)
    # Floats in [-1, 1] (MAX = 2): an error of 0.1 everywhere has MSE 0.01.
    floats = np.zeros((16, 16, 3), np.float32)
    np.testing.assert_allclose(psnr(floats, floats + 0.1), 10 * math.log10(2**2 / 0.01), rtol=1e-5)


def test_psnr_is_per_frame_and_the_same_for_uint8_and_float_forms():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    test = np.clip(reference.astype(int) + rng.integers(-20, 21, reference.shape), 0, 255).astype(np.uint8)
    per_frame = np.asarray(psnr(reference, test))
    assert per_frame.shape == (2, 4)
    as_float = lambda v: v.astype(np.float32) / 127.5 - 1.0  # noqa: E731
    np.testing.assert_allclose(psnr(as_float(reference), as_float(test)), per_frame, rtol=1e-4)
    frame_mse = np.mean((reference[1, 2].astype(float) - test[1, 2]) ** 2)
    np.testing.assert_allclose(per_frame[1, 2], 10 * math.log10(255**2 / frame_mse), rtol=1e-4)


def test_gaussian_window_is_normalised_with_sigma_1_5():
    window = gaussian_window()
    assert window.shape == (11,) and abs(window.sum() - 1) < 1e-6
    np.testing.assert_allclose(window, window[::-1])
    np.testing.assert_allclose(window[6] / window[5], math.exp(-1 / (2 * 1.5**2)), rtol=1e-5)


def test_ssim_of_identical_frames_is_one():
    video = np.random.default_rng(2).uniform(-1, 1, (2, 20, 24, 3)).astype(np.float32)
    np.testing.assert_allclose(ssim(video, video), 1.0, atol=1e-5)


def test_ssim_of_constant_frames_is_the_luminance_term():
    """Flat frames have no variance, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1) on [0, 1] values."""
    a, b = 0.2, 0.7
    frame_a = np.full((16, 16, 3), round(a * 255), np.uint8)
    frame_b = np.full((16, 16, 3), round(b * 255), np.uint8)
    a, b = round(a * 255) / 255, round(b * 255) / 255
    c1 = SSIM_K1**2
    np.testing.assert_allclose(ssim(frame_a, frame_b), (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-5)


def _ssim_by_hand(x, y):
    """Direct float64 SSIM: every 11 x 11 window inside the frame, every channel."""
    g = gaussian_window().astype(np.float64)
    weights = np.outer(g, g)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    height, width, channels = x.shape
    values = []
    for i in range(height - 10):
        for j in range(width - 10):
            for c in range(channels):
                wx, wy = x[i : i + 11, j : j + 11, c], y[i : i + 11, j : j + 11, c]
                mx, my = (weights * wx).sum(), (weights * wy).sum()
                vx, vy = (weights * (wx - mx) ** 2).sum(), (weights * (wy - my) ** 2).sum()
                cov = (weights * (wx - mx) * (wy - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_definition_computed_by_hand():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (14, 13, 2))
    y = np.clip(0.7 * x + 0.2 + rng.normal(0, 0.1, x.shape), 0, 1)
    expected = _ssim_by_hand(x, y)
    assert 0.2 < expected < 0.9  # A frame pair between unrelated and equal.
    got = float(ssim((2 * x - 1).astype(np.float32), (2 * y - 1).astype(np.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_ssim_falls_as_noise_grows_and_needs_frames_of_11_pixels():
    rng = np.random.default_rng(4)
    frame = rng.uniform(-1, 1, (24, 24, 3)).astype(np.float32)
    scores = [
        float(ssim(frame, np.clip(frame + rng.normal(0, s, frame.shape), -1, 1))) for s in (0.05, 0.2, 0.5)
    ]
    assert scores[0] > scores[1] > scores[2]
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(frame[:10], frame[:10])
