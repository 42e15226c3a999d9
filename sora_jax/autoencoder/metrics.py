"""Reconstruction metrics per frame: PSNR and SSIM.

Inputs are videos (or images) ``[..., H, W, C]``: uint8 in [0, 255], or float in [-1, 1] (the
model's range; values outside it are clipped, as writing the video would). A metric does not depend
on which form a video comes in. Results have the leading shape ``[...]``: one value per frame;
average them for a clip. Both functions are jitted (one compilation per shape and dtype).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11  # Gaussian window of Wang et al. (2004): 11 x 11 pixels, sigma 1.5.
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def to_unit_range(video: jax.Array | np.ndarray) -> jax.Array:
    """uint8 ``[0, 255]`` or float ``[-1, 1]`` -> float32 ``[0, 1]``."""
    if video.dtype == np.uint8:
        return jnp.asarray(video, jnp.float32) / 255.0
    return jnp.clip((jnp.asarray(video, jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def _with_range(video: jax.Array | np.ndarray) -> tuple[jax.Array, float]:
    """float32 values and their full range: uint8 as they are (255), floats clipped to [-1, 1] (2)."""
    if video.dtype == np.uint8:
        return jnp.asarray(video, jnp.float32), 255.0
    return jnp.clip(jnp.asarray(video, jnp.float32), -1.0, 1.0), 2.0


@jax.jit
def psnr(reference: jax.Array | np.ndarray, test: jax.Array | np.ndarray) -> jax.Array:
    """Peak signal-to-noise ratio per frame, ``10 log10(MAX^2 / MSE)`` in dB; ``inf`` where equal.

    The MSE is over a frame's pixels and channels, ``MAX`` the full range: 255 for uint8, 2 for
    [-1, 1] (videos of either form may be compared with each other).
    """
    (x, x_range), (y, y_range) = _with_range(reference), _with_range(test)
    if x_range != y_range:
        (x, x_range), (y, y_range) = (to_unit_range(reference), 1.0), (to_unit_range(test), 1.0)
    # Differences before any rescaling: equal frames give exactly zero error.
    mse = jnp.mean(jnp.square(x - y), axis=(-3, -2, -1))
    return 10.0 * jnp.log10(x_range**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """``[size]`` normalised 1D Gaussian; SSIM's 2D window is its outer product with itself."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    window = np.exp(-(offsets**2) / (2 * sigma**2))
    return (window / window.sum()).astype(np.float32)


def _filter_valid(x_nhwc: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable Gaussian filter over H and W, "valid": only windows inside the frame."""
    size = len(window)
    height, width = x_nhwc.shape[1:3]
    x_nhwc = sum(float(w) * x_nhwc[:, i : i + height - size + 1] for i, w in enumerate(window))
    return sum(float(w) * x_nhwc[:, :, i : i + width - size + 1] for i, w in enumerate(window))


@jax.jit
def ssim(reference: jax.Array | np.ndarray, test: jax.Array | np.ndarray) -> jax.Array:
    """Structural similarity per frame (Wang et al. 2004), in [-1, 1]; 1 where equal.

    Gaussian-weighted local means, variances and covariance (11 x 11 window, sigma 1.5, windows
    inside the frame only, as the reference MATLAB code and ``tf.image.ssim``), constants
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L`` the full range; the SSIM map is averaged
    over positions and channels. Frames must be at least 11 x 11 pixels.
    """
    x, y = to_unit_range(reference), to_unit_range(test)
    lead, (height, width, channels) = x.shape[:-3], x.shape[-3:]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {height}x{width}")
    x = x.reshape(-1, height, width, channels)
    y = y.reshape(-1, height, width, channels)
    window = gaussian_window()
    mean_x, mean_y = _filter_valid(x, window), _filter_valid(y, window)
    # (Co)variances from frames centred on their own mean: they are shift-invariant, and
    # E[x^2] - E[x]^2 of uncentred values loses ~1e-4 of SSIM to float32 cancellation.
    x = x - jnp.mean(x, axis=(1, 2), keepdims=True)
    y = y - jnp.mean(y, axis=(1, 2), keepdims=True)
    local_x, local_y = _filter_valid(x, window), _filter_valid(y, window)
    var_x = _filter_valid(x * x, window) - local_x**2
    var_y = _filter_valid(y * y, window) - local_y**2
    cov_xy = _filter_valid(x * y, window) - local_x * local_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # L = 1 after to_unit_range.
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    return jnp.mean(ssim_map, axis=(1, 2, 3)).reshape(lead)
