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
    config: ml_collections.ConfigDict,
    prompt: str,
    frames: int,
    height: int,
    width: int,
    prompt_states: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Two packed rows of one clip each: row 0 captioned with ``prompt``, row 1 uncaptioned.

    With a frozen ``model.text_encoder``, ``prompt_states`` ``[M, Dt]`` are the prompt's caption
    states, and the uncaptioned row gets the null caption training used (one zero row).
    """
    m, d = config.model, config.data
    patch = tuple(m.patch_size)
    placeholder = np.zeros((frames, height, width, m.channels), np.float32)
    patches, positions = patchify(placeholder, patch)
    tokenizer = WordTokenizer(m.text_vocab_size)
    texts = [tokenizer.encode(prompt, d.max_caption_tokens), tokenizer.encode("", 1)]
    states: list[np.ndarray | None] = [None, None]
    text_dim = 0
    if prompt_states is not None:
        text_dim = prompt_states.shape[1]
        states = [prompt_states[: d.max_caption_tokens], np.zeros((1, text_dim), np.float32)]
        texts = [np.zeros(len(s), np.int32) for s in states]
    grid = grid_size(frames, height, width, patch)
    rows = [
        [PackedClip(patches, positions, grid, frames, 0.0, text, text_embedding=state)]
        for text, state in zip(texts, states, strict=True)
    ]
    return pack_rows(
        rows,
        seq_len=len(patches),
        patch_dim=patches.shape[1],
        max_clips=1,
        text_len=d.max_caption_tokens,
        text_dim=text_dim,
    )


class LatentDecoder:
    """A latent run's way back to pixels: undo the store's normalisation, decode with the autoencoder."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        from sora_jax.autoencoder.trained import TrainedAutoencoder
        from sora_jax.data.clip_store import ClipStore
        from sora_jax.data.encode import STATS_KEY

        self.autoencoder = TrainedAutoencoder.load(config.model.autoencoder)
        stats = ClipStore.open(config.data.store).extra[STATS_KEY]
        self.mean = np.asarray(stats["mean"], np.float32)
        self.std = np.asarray(stats["std"], np.float32)

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        """Normalised latents ``[T', H', W', z]`` -> uint8 video ``[T, H, W, 3]``."""
        return self.autoencoder.decode(latents * self.std + self.mean)

    def pixel_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The video shape of ``frames x height x width`` latents."""
        c = self.autoencoder.config
        return 1 + c.temporal_factor * (frames - 1), height * c.spatial_factor, width * c.spatial_factor

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The latents of a ``frames x height x width`` video; ValueError unless it has exact ones."""
        t, h, w, _ = self.autoencoder.config.latent_shape(frames, height, width)
        return t, h, w


def prompt_encoder(config: ml_collections.ConfigDict) -> Callable[[str], np.ndarray] | None:
    """A frozen ``model.text_encoder``'s caption states of a prompt, cut as the store's were
    (``data.store``'s token limit); None for the learned encoder."""
    if config.model.text_encoder == "learned":
        return None
    from sora_jax.data.clip_store import ClipStore
    from sora_jax.text.embedder import CaptionEmbedder

    stored = ClipStore.open(config.data.store).caption_encoder
    return CaptionEmbedder(config.model.text_encoder, int(stored.get("max_tokens", 64)))


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
    """``generate(params, prompt, seed) -> uint8 [T, H, W, 3]`` video.

    ``frames x height x width`` is the shape the DiT generates: pixels, or in a latent run
    (``model.autoencoder``) latents, which the autoencoder then decodes to video. The sampling loop
    is compiled once per clip shape and step count; prompts and seeds reuse it.
    """
    patch = tuple(config.model.patch_size)
    grid = grid_size(frames, height, width, patch)
    num_tokens = math.prod(grid)
    patch_dim = math.prod(patch) * config.model.channels
    grid_t = timestep_grid(steps, resolution_shift(jnp.asarray(num_tokens), config.diffusion))
    decoder = LatentDecoder(config) if config.model.autoencoder else None
    encode_prompt = prompt_encoder(config)

    @jax.jit
    def sample(params: nnx.State, batch: dict[str, jax.Array], key: jax.Array) -> jax.Array:
        velocity = velocity_predictor(nnx.merge(graphdef, params), batch, config.diffusion)

        def velocity_pair(x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
            v = velocity(jnp.stack([x, x]), jnp.full((2, 1), t))
            return v[0], v[1]

        noise = jax.random.normal(key, (num_tokens, patch_dim))
        return integrate(guided(velocity_pair, guidance), noise, grid_t, method)

    def generate(params: nnx.State, prompt: str, seed: int) -> np.ndarray:
        states = encode_prompt(prompt) if encode_prompt is not None else None
        batch = prompt_batch(config, prompt, frames, height, width, states)
        tokens = sample(params, batch, jax.random.key(seed))
        clip = unpatchify(np.asarray(tokens), grid, patch, frames)
        return decoder(clip) if decoder is not None else model_to_pixels(clip)

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
