"""``sora-jax sample --workdir WAN_DIR``: a diffusers Wan directory sampled like a run.

The command's flags become a :class:`~sora_jax.kinds.base.SampleRequest` with Wan's defaults
(:func:`pipeline_request`, which refuses flags that have no meaning for pretrained text-to-video
weights), and :func:`sample_pipeline` checks the size against the directory's configs before
loading :class:`~sora_jax.wan.pipeline.WanPipeline`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from sora_jax.errors import ConfigError
from sora_jax.wan.pipeline import (
    DEFAULT_FRAMES,
    DEFAULT_GUIDANCE,
    DEFAULT_HEIGHT,
    DEFAULT_STEPS,
    DEFAULT_WIDTH,
    PIPELINE_INDEX,
    WanPipeline,
    latent_shape,
    pipeline_directory,
)
from sora_jax.wan.transformer_weights import transformer_config
from sora_jax.wan.vae_config import WanVAEConfig
from sora_jax.wan.vae_weights import vae_config


def is_pipeline_directory(workdir: str) -> bool:
    """Whether ``sora-jax sample --workdir`` names a diffusers directory (``model_index.json``) rather
    than a training run."""
    return "://" not in workdir and (Path(workdir).expanduser() / PIPELINE_INDEX).is_file()


def pipeline_request(request: Any) -> Any:
    """A ``sora-jax sample`` request (:class:`~sora_jax.kinds.base.SampleRequest`) for a Wan directory,
    with Wan's defaults for what it leaves out (81 frames of 480 x 832, 50 steps, guidance 5).

    Raises:
        ConfigError: naming a flag that has no meaning for a pretrained directory: given images or
            videos and their settings (Wan 2.1 text-to-video takes none), ``--step`` (no
            checkpoints), ``--sampler heun`` (the scheduler takes Euler steps), ``--guidance-interval``
            (its pipeline guides at every step).
    """
    for flag, value in (
        ("--image", request.image),
        ("--video", request.video),
        ("--interpolate", request.interpolate),
        ("--connect", request.connect),
        ("--edit", request.edit),
        ("--audio", request.audio),
        ("--extend", request.extend),
        ("--given-frames", request.given_frames),
        ("--strength", request.strength),
        ("--cond-guidance", request.cond_guidance),
    ):
        if value is not None:
            raise ConfigError(f"{flag}: a Wan directory samples text-to-video only; leave {flag} out")
    if request.guidance_interval is not None:
        raise ConfigError(
            "--guidance-interval: a Wan directory's pipeline guides at every step; leave the flag out"
        )
    if request.step is not None:
        raise ConfigError("--step: a Wan directory has one set of weights, no checkpoints; leave --step out")
    if request.sampler not in (None, "euler"):
        raise ConfigError(
            f"--sampler {request.sampler}: a Wan directory samples with its scheduler's Euler steps; "
            "leave --sampler out"
        )
    defaults = dict(
        frames=DEFAULT_FRAMES,
        height=DEFAULT_HEIGHT,
        width=DEFAULT_WIDTH,
        steps=DEFAULT_STEPS,
        guidance=DEFAULT_GUIDANCE,
    )
    return dataclasses.replace(
        request, **{key: value for key, value in defaults.items() if getattr(request, key) is None}
    )


def sample_pipeline(directory: str | Path, request: Any) -> np.ndarray:
    """``sora-jax sample`` of a Wan directory: the uint8 video ``[T, H, W, 3]`` for a
    :func:`pipeline_request`, with the empty negative prompt. The size is checked against the
    directory's configs before any weight is read."""
    root = pipeline_directory(directory)
    vae = WanVAEConfig.from_dict(vae_config(root))
    patch = transformer_config(root)["model.patch_size"]
    latent_shape(
        request.frames,
        request.height,
        request.width,
        temporal=vae.temporal_factor,
        spatial=vae.spatial_factor,
        patch=patch,
    )
    pipeline = WanPipeline.from_pretrained(root)
    return pipeline.generate(
        request.prompt,
        frames=request.frames,
        height=request.height,
        width=request.width,
        steps=request.steps,
        guidance=request.guidance,
        seed=request.seed,
    )
