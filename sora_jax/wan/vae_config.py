"""The configuration of a Wan 2.1 video autoencoder: diffusers' ``vae/config.json`` keys, checked.

:class:`WanVAEConfig` holds the architecture (same key names as diffusers' ``AutoencoderKLWan``,
same meaning) and the per-channel latent statistics Wan's pipelines normalise with; the network
itself is :mod:`sora_jax.wan.vae`, its weights :mod:`sora_jax.wan.vae_weights`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from sora_jax.errors import ConfigError

CLASS_NAME = "AutoencoderKLWan"
# The per-channel statistics of Wan 2.1's latents (its pipelines normalise with them).
# fmt: off
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
# fmt: on
# diffusers' defaults for AutoencoderKLWan (Wan 2.1), used for keys a config.json leaves out.
DEFAULTS: dict[str, Any] = {
    "base_dim": 96,
    "decoder_base_dim": None,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": list(WAN21_LATENTS_MEAN),
    "latents_std": list(WAN21_LATENTS_STD),
    "is_residual": False,
    "in_channels": 3,
    "out_channels": 3,
    "patch_size": None,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 8,
}


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """The architecture of a Wan 2.1 VAE, from diffusers' config keys (same names, same meaning).

    ``temperal_downsample`` keeps diffusers' spelling. ``dropout`` is recorded for export only:
    this module runs the network for inference, where dropout does nothing.
    """

    base_dim: int
    decoder_base_dim: int
    z_dim: int
    dim_mult: tuple[int, ...]
    num_res_blocks: int
    temperal_downsample: tuple[bool, ...]
    dropout: float
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    in_channels: int
    out_channels: int

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame (after the first): 4 in Wan 2.1."""
        return 2 ** sum(self.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along height and width: 8 in Wan 2.1."""
        return 2 ** (len(self.dim_mult) - 1)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], source: str = "the VAE config") -> WanVAEConfig:
        """Validate diffusers' ``vae/config.json`` keys (missing ones take diffusers' defaults).

        Raises ConfigError naming ``source`` and the key for an unknown key, a value of the wrong
        kind, or a setting this implementation does not cover (Wan 2.2's residual VAE and patching,
        attention inside the encoder's levels).
        """
        unknown = sorted(k for k in config if k not in DEFAULTS and not k.startswith("_"))
        if unknown:
            raise ConfigError(
                f"{source}: unknown key {unknown[0]!r} for a Wan 2.1 VAE (known keys: {sorted(DEFAULTS)})"
            )
        class_name = config.get("_class_name", CLASS_NAME)
        if class_name != CLASS_NAME:
            raise ConfigError(f"{source}: _class_name is {class_name!r}, expected {CLASS_NAME!r}")
        full = {**DEFAULTS, **config}

        def fail(key: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: {key} = {full[key]!r}: {why}")

        if full["is_residual"] is not False:
            raise fail("is_residual", "Wan 2.2's residual VAE is not supported; only Wan 2.1's (false)")
        if full["patch_size"] not in (None, 1):
            raise fail("patch_size", "Wan 2.2's patched VAE is not supported; only Wan 2.1's (null)")
        if full["attn_scales"] != []:
            # diffusers' chunked encoder cannot run these blocks either (they take no cache).
            raise fail("attn_scales", "attention inside the levels is not supported; only [] (Wan 2.1)")
        for key in ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels"):
            if not positive_int(full[key]):
                raise fail(key, "must be a positive integer")
        if full["decoder_base_dim"] is not None and not positive_int(full["decoder_base_dim"]):
            raise fail("decoder_base_dim", "must be a positive integer or null")
        dim_mult = full["dim_mult"]
        if not isinstance(dim_mult, list) or not dim_mult or not all(map(positive_int, dim_mult)):
            raise fail("dim_mult", "must be a non-empty list of positive integers")
        down = full["temperal_downsample"]
        if not isinstance(down, list) or not all(isinstance(d, bool) for d in down):
            raise fail("temperal_downsample", "must be a list of booleans")
        if len(down) != len(dim_mult) - 1:
            levels = len(dim_mult) - 1
            raise fail(
                "temperal_downsample", f"needs one entry per downsampling (len(dim_mult) - 1 = {levels})"
            )
        if not isinstance(full["dropout"], int | float) or not 0 <= full["dropout"] < 1:
            raise fail("dropout", "must be a number in [0, 1)")
        for key in ("latents_mean", "latents_std"):
            values = full[key]
            if not isinstance(values, list) or len(values) != full["z_dim"]:
                raise fail(key, f"needs one number per latent channel (z_dim = {full['z_dim']})")
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise fail(key, "must hold finite numbers")
        if not all(s > 0 for s in full["latents_std"]):
            raise fail("latents_std", "must be positive")
        decoder_base_dim = full["decoder_base_dim"] or full["base_dim"]
        for width in (full["base_dim"], decoder_base_dim):
            if any(width * m % 2 for m in dim_mult):  # The decoder's upsamplings halve widths.
                raise fail("dim_mult", f"base width {width} times each multiplier must be even")
        config_ = cls(
            base_dim=full["base_dim"],
            decoder_base_dim=decoder_base_dim,
            z_dim=full["z_dim"],
            dim_mult=tuple(dim_mult),
            num_res_blocks=full["num_res_blocks"],
            temperal_downsample=tuple(down),
            dropout=float(full["dropout"]),
            latents_mean=tuple(float(v) for v in full["latents_mean"]),
            latents_std=tuple(float(v) for v in full["latents_std"]),
            in_channels=full["in_channels"],
            out_channels=full["out_channels"],
        )
        implied = {
            "scale_factor_temporal": config_.temporal_factor,
            "scale_factor_spatial": config_.spatial_factor,
        }
        for key, value in implied.items():
            if full[key] is not None and full[key] != value:
                raise fail(key, f"the architecture implies {value}")
        return config_

    def to_dict(self) -> dict[str, Any]:
        """The config as diffusers writes it (``config.json`` of a ``vae/`` folder)."""
        return {
            "_class_name": CLASS_NAME,
            "attn_scales": [],
            "base_dim": self.base_dim,
            "decoder_base_dim": None if self.decoder_base_dim == self.base_dim else self.decoder_base_dim,
            "dim_mult": list(self.dim_mult),
            "dropout": self.dropout,
            "in_channels": self.in_channels,
            "is_residual": False,
            "latents_mean": list(self.latents_mean),
            "latents_std": list(self.latents_std),
            "num_res_blocks": self.num_res_blocks,
            "out_channels": self.out_channels,
            "patch_size": None,
            "scale_factor_spatial": self.spatial_factor,
            "scale_factor_temporal": self.temporal_factor,
            "temperal_downsample": list(self.temperal_downsample),
            "z_dim": self.z_dim,
        }


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
