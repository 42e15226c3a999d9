"""Produce the tiny Wan 2.1 VAE and the reference outputs ``tests/wan/test_vae.py`` compares against.

Run once, in a throwaway environment with PyTorch and diffusers (the project itself never imports
them; made with torch 2.14 and diffusers 0.42.1):

    /tmp/refvenv/bin/python tests/wan/make_vae_reference.py

Writes ``tests/wan/data/tiny_wan/vae/`` (a random-weight ``AutoencoderKLWan`` with Wan 2.1's
architecture at toy width, saved by diffusers' ``save_pretrained`` in float32) and
``tests/wan/vae_reference.npz``: two clips (a 9-frame one, encoded in diffusers' chunks of 1 + 4 + 4
frames, and a single frame), stored as uint8 pixels (the float input is
``pixels / 127.5 - 1`` in float32, computed the same way by the tests), their posterior means and
log-variances, the decodes of those means (one latent frame at a time in diffusers), and the
pipeline's latent denormalisation of the 9-frame means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan

HERE = Path(__file__).resolve().parent
VAE_DIR = HERE / "data" / "tiny_wan" / "vae"
REFERENCE = HERE / "vae_reference.npz"
Z_DIM = 4
CONFIG = dict(
    base_dim=4,
    z_dim=Z_DIM,
    dim_mult=[1, 2, 2, 2],  # Four levels: 8x spatial compression, as in Wan 2.1.
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],  # 4x temporal compression, as in Wan 2.1.
    dropout=0.0,
    latents_mean=[0.31, -0.52, 0.08, 1.2],
    latents_std=[1.7, 0.6, 2.4, 1.1],
)


def pixels_to_video(pixels_bthwc: np.ndarray) -> np.ndarray:
    """uint8 ``[B, T, H, W, C]`` -> float32 in [-1, 1], exactly as the tests convert them."""
    return pixels_bthwc.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def smooth_pixels(rng: np.random.Generator, batch: int, frames: int, height: int, width: int) -> np.ndarray:
    """uint8 clips of moving colour gradients plus noise: structure in space and time, not pure noise."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    clips = []
    for _ in range(batch):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        speed = rng.uniform(0.2, 0.6, size=3)
        channels = [
            np.sin(0.15 * x + 0.1 * y + speed[c] * t + phase[c]) * 0.7 + rng.normal(0, 0.2, t.shape)
            for c in range(3)
        ]
        clips.append(np.stack(channels, axis=-1))
    return np.clip(np.round((np.stack(clips) + 1) * 127.5), 0, 255).astype(np.uint8)


def main() -> None:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**CONFIG).eval()
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith("gamma"):  # RMS norm scales: away from their initial ones.
                param.uniform_(0.5, 1.5)
    VAE_DIR.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(VAE_DIR, safe_serialization=True)

    rng = np.random.default_rng(0)
    clips = {
        "clip9": smooth_pixels(rng, 1, 9, 32, 48),  # 1 + 4 * 2 frames: three encoder chunks.
        "clip1": smooth_pixels(rng, 1, 1, 32, 48),  # An image: one chunk.
    }
    arrays: dict[str, np.ndarray] = {}
    inv_std = 1.0 / torch.tensor(CONFIG["latents_std"]).view(1, Z_DIM, 1, 1, 1)
    latents_mean = torch.tensor(CONFIG["latents_mean"]).view(1, Z_DIM, 1, 1, 1)
    with torch.no_grad():
        for name, pixels in clips.items():
            video = torch.from_numpy(pixels_to_video(pixels)).permute(0, 4, 1, 2, 3)  # -> [B, C, T, H, W]
            posterior = vae.encode(video).latent_dist
            decoded = vae.decode(posterior.mean).sample
            arrays[f"{name}/pixels"] = pixels
            arrays[f"{name}/mean"] = posterior.mean.permute(0, 2, 3, 4, 1).numpy()
            arrays[f"{name}/logvar"] = posterior.logvar.permute(0, 2, 3, 4, 1).numpy()
            arrays[f"{name}/decoded"] = decoded.permute(0, 2, 3, 4, 1).numpy()
            clamped = (decoded.abs() >= 1.0).float().mean().item()
            print(
                f"{name}: latents {tuple(posterior.mean.shape)}, decoded {tuple(decoded.shape)}, "
                f"{clamped:.1%} of decoded values at the [-1, 1] clamp"
            )
        # The pipeline's decode-side denormalisation (pipeline_wan.py), on the 9-frame means.
        means = torch.from_numpy(arrays["clip9/mean"]).permute(0, 4, 1, 2, 3)
        denormalized = means / inv_std + latents_mean
        arrays["clip9/denormalized"] = denormalized.permute(0, 2, 3, 4, 1).numpy()
    np.savez_compressed(REFERENCE, **arrays)
    sizes = {p.name: p.stat().st_size for p in [*VAE_DIR.iterdir(), REFERENCE]}
    print(f"parameters: {sum(p.numel() for p in vae.parameters())}; file sizes: {sizes}")


if __name__ == "__main__":
    main()
