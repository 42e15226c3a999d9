"""Text-to-video generation from trained parameters: one prompt, one clip of a chosen shape.

The clip is laid out as a packed batch of two rows, the prompt and the empty caption, so one
forward pass gives both velocities that classifier-free guidance combines.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.data.packing import PackedClip, pack_rows
from sora_jax.data.patches import grid_size, patchify, unpatchify
from sora_jax.data.pipeline import model_to_pixels
from sora_jax.data.tokenizer import WordTokenizer
from sora_jax.diffusion.flow import resolution_shift, velocity_predictor
from sora_jax.diffusion.sampler import guided, integrate, timestep_grid


def prompt_batch(
    config: ml_collections.ConfigDict, prompt: str, frames: int, height: int, width: int
) -> dict[str, np.ndarray]:
    """Two packed rows of one clip each: row 0 captioned with ``prompt``, row 1 uncaptioned."""
    m, d = config.model, config.data
    patch = tuple(m.patch_size)
    placeholder = np.zeros((frames, height, width, m.channels), np.float32)
    patches, positions = patchify(placeholder, patch)
    tokenizer = WordTokenizer(m.text_vocab_size)
    rows = [
        [PackedClip(patches, positions, grid_size(frames, height, width, patch), frames, 0.0, text)]
        for text in (tokenizer.encode(prompt, d.max_caption_tokens), tokenizer.encode("", 1))
    ]
    return pack_rows(
        rows,
        seq_len=len(patches),
        patch_dim=patches.shape[1],
        max_clips=1,
        text_len=d.max_caption_tokens,
    )


def make_generator(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    *,
    frames: int,
    height: int,
    width: int,
    steps: int,
    guidance: float,
    method: str,
) -> Callable[[nnx.State, str, int], np.ndarray]:
    """``generate(params, prompt, seed) -> uint8 [frames, height, width, C]``.

    The sampling loop is compiled once per clip shape and step count; prompts and seeds reuse it.
    """
    patch = tuple(config.model.patch_size)
    grid = grid_size(frames, height, width, patch)
    num_tokens = math.prod(grid)
    patch_dim = math.prod(patch) * config.model.channels
    grid_t = timestep_grid(steps, resolution_shift(jnp.asarray(num_tokens), config.diffusion))

    @jax.jit
    def sample(params: nnx.State, batch: dict[str, jax.Array], key: jax.Array) -> jax.Array:
        velocity = velocity_predictor(nnx.merge(graphdef, params), batch, config.diffusion)

        def velocity_pair(x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
            v = velocity(jnp.stack([x, x]), jnp.full((2, 1), t))
            return v[0], v[1]

        noise = jax.random.normal(key, (num_tokens, patch_dim))
        return integrate(guided(velocity_pair, guidance), noise, grid_t, method)

    def generate(params: nnx.State, prompt: str, seed: int) -> np.ndarray:
        batch = prompt_batch(config, prompt, frames, height, width)
        tokens = sample(params, batch, jax.random.key(seed))
        clip = unpatchify(np.asarray(tokens), grid, patch, frames)
        return model_to_pixels(clip)

    return generate


def sample_generator(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict) -> Callable:
    """:func:`make_generator` for the run's own sample shape (``train.sample_*``) and sampler."""
    t, d = config.train, config.diffusion
    return make_generator(
        graphdef,
        config,
        frames=t.sample_frames,
        height=t.sample_height,
        width=t.sample_width,
        steps=d.sample_steps,
        guidance=d.guidance,
        method=d.sampler,
    )


def prompt_sampler(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict) -> Callable:
    """``sample(params) -> videos``: one uint8 video per ``train.sample_prompts`` prompt."""
    generate = sample_generator(graphdef, config)

    def sample(params: nnx.State) -> list[np.ndarray]:
        return [generate(params, prompt, i) for i, prompt in enumerate(config.train.sample_prompts)]

    return sample
