"""Generation from trained parameters: one prompt, one clip of a chosen shape, optionally conditioned on
given frames (image-to-video, extension, interpolation) or started from a video to edit.

The clip is laid out as a packed batch of two rows, the prompt and the empty caption (three with
conditioning guidance), so one forward pass gives the velocities that classifier-free guidance
combines. In a run with sound (``audio.enabled``) the clip's audio tokens follow its video tokens
as in training, sound and picture are generated together, and the codec turns the audio tokens back
into a waveform; a :class:`Condition` may give the whole video (its sound is made) or the sound (its
picture is made).
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

from sora_jax.audio.codec import AudioCodec, audio_token_times, clip_samples, codec_from_config
from sora_jax.autoencoder.latent_space import VideoSpace, model_space
from sora_jax.data.packing import PackedClip, pack_rows, token_widths
from sora_jax.data.patches import grid_size, patchify, unpatchify
from sora_jax.data.tokenizer import WordTokenizer
from sora_jax.diffusion.conditioning import (
    audio_token_groups,
    frame_feature_mask,
    token_frame_bits,
    token_mask,
)
from sora_jax.diffusion.flow import feature_mask, resolution_shift, velocity_predictor, video_noise
from sora_jax.diffusion.sampler import guided, integrate, timestep_grid


@dataclasses.dataclass(frozen=True)
class Condition:
    """Content given clean to a generated clip, in model units (pixels in [-1, 1], or normalised
    latents): ``values`` ``[T, H, W, C]`` of the clip's shape (ignored where not given) and ``groups``
    bool ``[G]``, the given temporal groups (see :mod:`sora_jax.diffusion.conditioning`).

    In a run with sound, ``sound`` (float32 ``[samples, C]`` in [-1, 1], the clip's duration) is
    given too: over the given groups' time, as training's temporal-group tasks give it, or over the
    whole clip when no group is given (audio-to-video). Without ``sound`` the whole sound is made:
    with every group given, that is video-to-audio."""

    values: np.ndarray
    groups: np.ndarray
    sound: np.ndarray | None = None
    # bool [T]: frames given alone inside groups that are generated (a run with
    # conditioning.frame_level); None: none.
    frames: np.ndarray | None = None


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
    fps: float = 0.0,
    audio_times: np.ndarray | None = None,
    given_frames: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Packed rows of one clip each: row 0 captioned with ``prompt``, row 1 uncaptioned, both with the
    tokens ``given`` (bool ``[N]``) as conditioning, and the frames given inside generated tokens
    (``given_frames`` int32 ``[N]`` bits; a run with ``conditioning.frame_level``); with
    ``unconditioned_row``, a row 2 with neither (what conditioning guidance pushes away from).

    With a frozen ``model.text_encoder``, ``prompt_states`` ``[M, Dt]`` are the prompt's caption
    states, and uncaptioned rows get the null caption training used (one zero row). In a run with
    sound the batch has its sound fields, and ``audio_times`` ``[Na]`` (None: no sound, an image)
    add the clip's audio tokens after its video tokens; ``given`` then covers both, video first.
    """
    m, d = config.model, config.data
    patch = tuple(m.patch_size)
    placeholder = np.zeros((frames, height, width, m.channels), np.float32)
    patches, positions = patchify(placeholder, patch)
    video_width, audio_width = token_widths(config)
    sound = len(audio_times) if audio_times is not None else 0
    audio_patches = np.zeros((sound, audio_width), np.float32) if sound else None
    tokenizer = WordTokenizer(m.text_vocab_size)
    texts = [tokenizer.encode(prompt, d.max_caption_tokens), tokenizer.encode("", 1)]
    states: list[np.ndarray | None] = [None, None]
    text_dim = 0
    if prompt_states is not None:
        text_dim = prompt_states.shape[1]
        states = [prompt_states[: d.max_caption_tokens], np.zeros((1, text_dim), np.float32)]
        texts = [np.zeros(len(s), np.int32) for s in states]
    masks, bits = [given, given], [given_frames, given_frames]
    if unconditioned_row:
        texts, states, masks = texts + texts[1:], states + states[1:], masks + [None]
        bits = bits + [None]
    grid = grid_size(frames, height, width, patch)
    video = len(patches)

    def clip(
        text: np.ndarray, state: np.ndarray | None, mask: np.ndarray | None, frame_bits: np.ndarray | None
    ) -> PackedClip:
        return PackedClip(
            patches,
            positions,
            grid,
            frames,
            fps,
            text,
            cond_mask=None if mask is None else mask[:video],
            text_embedding=state,
            audio_patches=audio_patches,
            audio_times=audio_times if sound else None,
            audio_cond_mask=None if mask is None or not sound else mask[video:],
            given_frames=frame_bits,
        )

    rows = [[clip(*row)] for row in zip(texts, states, masks, bits, strict=True)]
    return pack_rows(
        rows,
        seq_len=video + sound,
        patch_dim=max(video_width, audio_width),
        max_clips=1,
        text_len=d.max_caption_tokens,
        text_dim=text_dim,
        audio=bool(audio_width),
        frame_level=config.conditioning.frame_level,
    )


def prompt_encoder(config: ml_collections.ConfigDict) -> Callable[[str], np.ndarray] | None:
    """A frozen ``model.text_encoder``'s caption states of a prompt, cut as the store's were
    (``data.store``'s token limit); None for the learned encoder."""
    if config.model.text_encoder == "learned":
        return None
    from sora_jax.data.shards import open_clips
    from sora_jax.text.embedder import CaptionEmbedder

    stored = open_clips(config.data.store).caption_encoder
    return CaptionEmbedder(config.model.text_encoder, int(stored.get("max_tokens", 64)))


@dataclasses.dataclass(frozen=True)
class ClipTokens:
    """The token layout of one generated clip: ``video`` tokens of ``grid`` (``[N_v, P_v]``), then, in
    a run with sound, ``len(audio_times)`` audio tokens (``[N_a, P_a]``) covering ``samples`` samples;
    every token ``width = max(P_v, P_a)`` features wide, zero beyond its own."""

    grid: tuple[int, int, int]
    video_width: int
    width: int
    samples: int = 0
    audio_times: np.ndarray | None = None
    codec: AudioCodec | None = None

    @property
    def video(self) -> int:
        return math.prod(self.grid)

    @property
    def audio(self) -> int:
        return 0 if self.audio_times is None else len(self.audio_times)


def clip_tokens_of(
    config: ml_collections.ConfigDict, frames: int, height: int, width: int, fps: float
) -> ClipTokens:
    """The :class:`ClipTokens` of a ``frames x height x width`` clip (model units) at ``fps``: its
    sound's tokens too when the run has sound and the clip has a duration (two or more frames)."""
    patch = tuple(config.model.patch_size)
    grid = grid_size(frames, height, width, patch)
    video_width, audio_width = token_widths(config)
    layout = ClipTokens(grid, video_width, max(video_width, audio_width))
    if not audio_width or frames < 2:
        return layout
    codec = codec_from_config(config.audio)
    samples = clip_samples(frames, fps, codec.sample_rate)
    count = codec.num_tokens(samples)
    times = audio_token_times(count, codec.token_samples, codec.sample_rate, fps, patch[0])
    return dataclasses.replace(layout, samples=samples, audio_times=times, codec=codec)


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
    guidance_interval: tuple[float, float] | None = None,
    space: VideoSpace | None = None,
    fps: float | None = None,
    with_sound: bool = False,
) -> Callable[..., np.ndarray | tuple[np.ndarray, np.ndarray | None]]:
    """``generate(params, prompt, seed, condition=None, edit=None) -> uint8 [T, H, W, 3]`` video; with
    ``with_sound``, ``(video, sound)``: the float32 ``[samples, C]`` sound a run with sound makes
    with it (``clip_samples(T, fps, audio.sample_rate)`` samples; None without sound or for an image).

    ``frames x height x width`` is the shape the DiT generates: pixels, or in a latent run
    (``model.autoencoder``) latents, which the autoencoder then decodes to video. ``fps`` (default
    ``train.sample_fps``) sets how long the clip lasts, hence how much sound it has. A
    :class:`Condition` fixes some temporal groups, or the whole video or sound (they are put back
    clean before every model call and in the result); an :class:`Edit` starts from a noised input.
    Guidance: ``guidance`` scales the caption's effect; with ``cond_guidance != 1`` the
    conditioning's effect is scaled too (a third row without it):
    ``v = v(-, -) + cond_guidance (v(c, -) - v(-, -)) + guidance (v(c, text) - v(c, -))``, at the
    times t of ``guidance_interval`` (default: the run's ``diffusion.guidance_interval``); at other
    times both scales are 1.

    ``space`` is where the DiT generates (default: the run's, :func:`model_space`).
    The sampling loop is compiled once per clip shape, step count and guidance layout; prompts,
    seeds, conditions and edits reuse it.
    """
    patch = tuple(config.model.patch_size)
    fps = config.train.sample_fps if fps is None else fps
    layout = clip_tokens_of(config, frames, height, width, fps)
    num_tokens = layout.video + layout.audio
    # Shifted by the clip's video tokens alone, as training shifts its timesteps.
    grid_t = timestep_grid(steps, resolution_shift(jnp.asarray(layout.video), config.diffusion))
    space = model_space(config) if space is None else space
    encode_prompt = prompt_encoder(config)
    three_rows = cond_guidance != 1.0
    interval = tuple(config.diffusion.guidance_interval if guidance_interval is None else guidance_interval)
    _, positions = patchify(np.zeros((frames, height, width, config.model.channels), np.float32), patch)
    silence = (
        None
        if layout.codec is None
        else layout.codec.encode(np.zeros((layout.samples, layout.codec.channels), np.float32))
    )
    widths = (layout.video_width, layout.width if layout.codec is None else layout.codec.patch_dim)

    @jax.jit
    def sample(
        params: nnx.State,
        batch: dict[str, jax.Array],
        key: jax.Array,
        clean: jax.Array,  # [N, P] the given content (model units)
        given: jax.Array,  # [N, P] bool: the features given (whole tokens, or frames inside them)
        start: jax.Array,  # [N, P] what an edit starts from (zeros otherwise)
        strength: jax.Array,  # t where integration starts: 1 (pure noise) or an edit's strength
    ) -> jax.Array:
        velocity = velocity_predictor(nnx.merge(graphdef, params), batch, config.diffusion)
        rows = batch["segment_ids"].shape[0]

        def velocity_rows(x: jax.Array, t: jax.Array) -> jax.Array:
            with_given = jnp.where(given, clean, x)
            inputs = [with_given, with_given] + ([x] if three_rows else [])
            return velocity(jnp.stack(inputs), jnp.full((rows, 1), t))

        combined = guided(velocity_rows, guidance, cond_guidance if three_rows else None, interval)
        # The rows share one clip layout: the first row's gives the noise its temporal sharing.
        names = ("clip_grid", "segment_ids", "positions") + (("modality",) if "modality" in batch else ())
        first_row = {name: batch[name][:1] for name in names}
        shape = (1, num_tokens, layout.width)
        noise = video_noise(key, first_row, shape, config.diffusion.noise_correlation)
        # Each token's noise only in its own features, as in training (the rest is the padding).
        noise = jnp.where(feature_mask(first_row, widths, layout.width), noise, 0.0)[0]
        x = integrate(combined, (1.0 - strength) * start + strength * noise, grid_t * strength, method)
        return jnp.where(given, clean, x)

    def generate(
        params: nnx.State,
        prompt: str,
        seed: int,
        condition: Condition | None = None,
        edit: Edit | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
        states = encode_prompt(prompt) if encode_prompt is not None else None
        video_given = np.zeros(layout.video, bool)
        clean = np.zeros((num_tokens, layout.width), np.float32)
        start = np.zeros((num_tokens, layout.width), np.float32)
        audio_given = np.zeros(layout.audio, bool)
        frame_bits = None
        if condition is not None:
            video_given = token_mask(condition.groups, positions)
            if condition.frames is not None:
                if not config.conditioning.frame_level:
                    raise ValueError("frames given inside temporal groups need conditioning.frame_level")
                frame_bits = token_frame_bits(condition.frames, positions, patch[0])
            clean[: layout.video, : layout.video_width] = patchify(
                np.asarray(condition.values, np.float32), patch
            )[0]
            if condition.sound is not None and layout.codec is not None:
                clean[layout.video :, : widths[1]] = layout.codec.encode(
                    fitted_sound(condition.sound, layout.samples)
                )
                groups = condition.groups
                audio_given = (
                    groups[audio_token_groups(layout.audio_times, patch[0], len(groups))]
                    if groups.any()
                    else np.ones(layout.audio, bool)
                )
        strength = 1.0
        if edit is not None:
            if not 0.0 < edit.strength <= 1.0:
                raise ValueError(f"edit strength must be in (0, 1], got {edit.strength}")
            start[: layout.video, : layout.video_width] = patchify(
                np.asarray(edit.values, np.float32), patch
            )[0]
            if silence is not None:  # The edited video's sound is made anew, from silence.
                start[layout.video :, : widths[1]] = silence
            strength = edit.strength
        given = np.concatenate([video_given, audio_given])
        batch = prompt_batch(
            config,
            prompt,
            frames,
            height,
            width,
            states,
            given,
            three_rows,
            fps,
            layout.audio_times,
            frame_bits,
        )
        features = np.repeat(given[:, None], layout.width, axis=1)
        if frame_bits is not None:
            frame_features = frame_feature_mask(frame_bits, patch[0], layout.video_width)
            features[: layout.video, : layout.video_width] |= frame_features
        tokens = np.asarray(
            sample(params, batch, jax.random.key(seed), clean, features, start, jnp.float32(strength))
        )
        video = space.to_pixels(
            unpatchify(tokens[: layout.video, : layout.video_width], layout.grid, patch, frames)
        )
        if not with_sound:
            return video
        sound = None
        if layout.codec is not None:
            decoded = layout.codec.decode(tokens[layout.video :, : widths[1]], layout.samples)
            sound = np.clip(decoded, -1.0, 1.0).astype(np.float32)
        return video, sound

    generate.space = space  # Where given pixels become model units and the result becomes video.
    generate.layout = layout  # How many tokens of each modality, and the codec that makes sound.
    return generate


def fitted_sound(sound: np.ndarray, samples: int) -> np.ndarray:
    """``sound`` ``[n, C]`` cut or zero-padded to ``samples`` samples (the clip's duration)."""
    sound = np.asarray(sound, np.float32)[:samples]
    return np.pad(sound, ((0, samples - len(sound)), (0, 0)))


def sample_generator(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, **kw: object) -> Callable:
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
        **kw,
    )


def prompt_sampler(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict) -> Callable:
    """``sample(params) -> videos``: one uint8 video per ``train.sample_prompts`` prompt; from a run
    with sound, each a :class:`~sora_jax.kinds.base.Sample` with its sound."""
    from sora_jax.kinds.base import Sample

    generate = sample_generator(graphdef, config, with_sound=True)

    def sample(params: nnx.State) -> list:
        made = [generate(params, prompt, i) for i, prompt in enumerate(config.train.sample_prompts)]
        rate = config.audio.sample_rate
        return [video if sound is None else Sample(video, sound, rate) for video, sound in made]

    return sample
