"""Generation from trained parameters: one prompt, one clip of a chosen shape, optionally conditioned on
given frames (image-to-video, extension, interpolation) or started from a video to edit.

The clip is laid out as a packed batch of two rows, the prompt and the empty caption (three with
conditioning guidance), so one forward pass gives the velocities that classifier-free guidance
combines.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.autoencoder.latent_space import VideoSpace, model_space
from sora_jax.data.packing import PackedClip, pack_rows
from sora_jax.data.patches import grid_size, patchify, unpatchify
from sora_jax.data.tokenizer import WordTokenizer
from sora_jax.diffusion.conditioning import token_mask
from sora_jax.diffusion.flow import resolution_shift, velocity_predictor, video_noise
from sora_jax.diffusion.sampler import guided, integrate, timestep_grid


@dataclasses.dataclass(frozen=True)
class Condition:
    """Content given clean to a generated clip, in model units (pixels in [-1, 1], or normalised
    latents): ``values`` ``[T, H, W, C]`` of the clip's shape (ignored where not given) and ``groups``
    bool ``[G]``, the given temporal groups (see :mod:`sora_jax.diffusion.conditioning`)."""

    values: np.ndarray
    groups: np.ndarray


@dataclasses.dataclass(frozen=True)
class Edit:
    """SDEdit: generation starts from ``values`` (model units, the clip's shape) noised to t = ``strength``
    in (0, 1] instead of from pure noise; small strengths keep more of the input."""

    values: np.ndarray
    strength: float


def prompt_batch(
    config: ml_collections.ConfigDict,
    prompt: str,
    frames: int,
    height: int,
    width: int,
    prompt_states: np.ndarray | None = None,
    given: np.ndarray | None = None,
    unconditioned_row: bool = False,
) -> dict[str, np.ndarray]:
    """Packed rows of one clip each: row 0 captioned with ``prompt``, row 1 uncaptioned, both with the
    tokens ``given`` (bool ``[N]``) as conditioning; with ``unconditioned_row``, a row 2 with neither
    (what conditioning guidance pushes away from).

    With a frozen ``model.text_encoder``, ``prompt_states`` ``[M, Dt]`` are the prompt's caption
    states, and uncaptioned rows get the null caption training used (one zero row).
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
    masks = [given, given]
    if unconditioned_row:
        texts, states, masks = texts + texts[1:], states + states[1:], masks + [None]
    grid = grid_size(frames, height, width, patch)
    rows = [
        [PackedClip(patches, positions, grid, frames, 0.0, text, cond_mask=mask, text_embedding=state)]
        for text, state, mask in zip(texts, states, masks, strict=True)
    ]
    return pack_rows(
        rows,
        seq_len=len(patches),
        patch_dim=patches.shape[1],
        max_clips=1,
        text_len=d.max_caption_tokens,
        text_dim=text_dim,
    )


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
    cond_guidance: float = 1.0,
    space: VideoSpace | None = None,
) -> Callable[..., np.ndarray]:
    """``generate(params, prompt, seed, condition=None, edit=None) -> uint8 [T, H, W, 3]`` video.

    ``frames x height x width`` is the shape the DiT generates: pixels, or in a latent run
    (``model.autoencoder``) latents, which the autoencoder then decodes to video. A
    :class:`Condition` fixes some temporal groups (they are put back clean before every model call
    and in the result); an :class:`Edit` starts from a noised input. Guidance: ``guidance`` scales
    the caption's effect; with ``cond_guidance != 1`` the conditioning's effect is scaled too (a
    third row without it):
    ``v = v(-, -) + cond_guidance (v(c, -) - v(-, -)) + guidance (v(c, text) - v(c, -))``.

    ``space`` is where the DiT generates (default: the run's, :func:`model_space`).
    The sampling loop is compiled once per clip shape, step count and guidance layout; prompts,
    seeds, conditions and edits reuse it.
    """
    patch = tuple(config.model.patch_size)
    grid = grid_size(frames, height, width, patch)
    num_tokens = math.prod(grid)
    patch_dim = math.prod(patch) * config.model.channels
    grid_t = timestep_grid(steps, resolution_shift(jnp.asarray(num_tokens), config.diffusion))
    space = model_space(config) if space is None else space
    encode_prompt = prompt_encoder(config)
    three_rows = cond_guidance != 1.0
    _, positions = patchify(np.zeros((frames, height, width, config.model.channels), np.float32), patch)

    @jax.jit
    def sample(
        params: nnx.State,
        batch: dict[str, jax.Array],
        key: jax.Array,
        clean: jax.Array,  # [N, P] the given content (model units)
        given: jax.Array,  # [N, 1] bool
        start: jax.Array,  # [N, P] what an edit starts from (zeros otherwise)
        strength: jax.Array,  # t where integration starts: 1 (pure noise) or an edit's strength
    ) -> jax.Array:
        velocity = velocity_predictor(nnx.merge(graphdef, params), batch, config.diffusion)
        rows = batch["segment_ids"].shape[0]

        def velocity_rows(x: jax.Array, t: jax.Array) -> jax.Array:
            with_given = jnp.where(given, clean, x)
            inputs = [with_given, with_given] + ([x] if three_rows else [])
            return velocity(jnp.stack(inputs), jnp.full((rows, 1), t))

        combined = guided(velocity_rows, guidance, cond_guidance if three_rows else None)
        # The rows share one clip layout: the first row's gives the noise its temporal sharing.
        first_row = {name: batch[name][:1] for name in ("clip_grid", "segment_ids", "positions")}
        noise = video_noise(key, first_row, (1, num_tokens, patch_dim), config.diffusion.noise_correlation)[0]
        x = integrate(combined, (1.0 - strength) * start + strength * noise, grid_t * strength, method)
        return jnp.where(given, clean, x)

    def generate(
        params: nnx.State,
        prompt: str,
        seed: int,
        condition: Condition | None = None,
        edit: Edit | None = None,
    ) -> np.ndarray:
        states = encode_prompt(prompt) if encode_prompt is not None else None
        given = np.zeros(num_tokens, bool)
        clean = np.zeros((num_tokens, patch_dim), np.float32)
        if condition is not None:
            given = token_mask(condition.groups, positions)
            clean = patchify(np.asarray(condition.values, np.float32), patch)[0]
        start, strength = np.zeros((num_tokens, patch_dim), np.float32), 1.0
        if edit is not None:
            if not 0.0 < edit.strength <= 1.0:
                raise ValueError(f"edit strength must be in (0, 1], got {edit.strength}")
            start, strength = patchify(np.asarray(edit.values, np.float32), patch)[0], edit.strength
        batch = prompt_batch(config, prompt, frames, height, width, states, given, three_rows)
        tokens = sample(
            params, batch, jax.random.key(seed), clean, given[:, None], start, jnp.float32(strength)
        )
        return space.to_pixels(unpatchify(np.asarray(tokens), grid, patch, frames))

    generate.space = space  # Where given pixels become model units and the result becomes video.
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
