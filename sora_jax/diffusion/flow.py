"""Rectified flow: the noising path, timestep sampling with a resolution shift, and the loss.

A clean clip ``x0`` and Gaussian noise ``e`` are joined by the straight path
``x_t = (1 - t) * x0 + t * e``, t in [0, 1] (t = 1 is pure noise). The model predicts the velocity
``dx_t/dt = e - x0``; sampling integrates it from t = 1 down to t = 0.

With sound, a clip's audio tokens travel the same path at the clip's own timestep (sound and
picture are generated jointly); their noise lives only in their own features (an audio token's
features past ``P_a``, a video token's past ``P_v``, stay zero), and a clip's loss is its video
tokens' mean error plus ``audio.loss_weight`` times its audio tokens' mean error.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from sora_jax.data.packing import AUDIO, token_widths
from sora_jax.diffusion.conditioning import frame_feature_mask
from sora_jax.errors import ConfigError


def resolution_shift(num_tokens: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """Timestep shift per clip: larger clips keep more signal at a given t, so push t to noise."""
    ratio = num_tokens.astype(jnp.float32) / config.shift_base_tokens
    return jnp.clip(jnp.sqrt(ratio), 1.0, config.shift_max)


def shift_timesteps(t: jax.Array, shift: jax.Array) -> jax.Array:
    """Warp t in [0, 1] towards 1 by ``shift`` (>= 1), keeping 0 and 1 fixed."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_timesteps(
    key: jax.Array, num_tokens_bs: jax.Array, config: ml_collections.ConfigDict
) -> jax.Array:
    """Per-clip training timesteps ``[B, S]``: logit-normal, then shifted by the clip's size.

    With ``uniform_t`` > 0 that share of clips (drawn per clip) takes t uniform in [0, 1] instead,
    unshifted: the shift leaves a large clip almost no draws near t = 0 (a 256-token clip shifted by
    2.8 gets t < 0.1 once in about 1,700 draws), yet a sampler's last step predicts its clean
    video from there.
    """
    if config.uniform_t > 0:  # Without the option the key is used whole: the draw runs had before.
        key, pick_key, uniform_key = jax.random.split(key, 3)
    normal = jax.random.normal(key, num_tokens_bs.shape)
    t = shift_timesteps(
        jax.nn.sigmoid(config.logit_mean + config.logit_std * normal), resolution_shift(num_tokens_bs, config)
    )
    if config.uniform_t == 0:
        return t
    uniform = jax.random.uniform(uniform_key, num_tokens_bs.shape)
    return jnp.where(jax.random.uniform(pick_key, num_tokens_bs.shape) < config.uniform_t, uniform, t)


def clip_token_counts(
    segment_ids_bl: jax.Array, max_clips: int, counted_bl: jax.Array | None = None
) -> jax.Array:
    """``[B, S]`` number of tokens of each clip slot (0 for unused slots); with ``counted`` (bool
    ``[B, L]``), only of those tokens."""
    one_hot = segment_ids_bl[..., None] == jnp.arange(1, max_clips + 1)
    if counted_bl is not None:
        one_hot = one_hot & counted_bl[..., None]
    return one_hot.sum(axis=1)


def is_audio(batch: dict[str, jax.Array]) -> jax.Array | None:
    """bool ``[B, L]``: the audio tokens of a batch with sound; None for a batch without."""
    return batch["modality"] == AUDIO if "modality" in batch else None


def feature_mask(batch: dict[str, jax.Array], widths: tuple[int, int], features: int) -> jax.Array:
    """bool ``[B, L, features]``: the features a token has of its own, its modality's width of
    ``widths = (P_v, P_a)``; the rest is the zero padding of the wider modality."""
    audio = is_audio(batch)
    if audio is None:
        return jnp.broadcast_to(jnp.arange(features) < widths[0], (*batch["segment_ids"].shape, features))
    return jnp.arange(features) < jnp.where(audio, widths[1], widths[0])[..., None]


def video_noise(
    key: jax.Array, batch: dict[str, jax.Array], shape: tuple[int, ...], correlation: float
) -> jax.Array:
    """Gaussian noise ``[B, L, P]`` for the packed tokens, each of unit variance, whose share
    ``correlation`` is common to all temporal patches of a clip at the same spatial patch.

    Frames of a video are alike, and independent noise per frame lets what forms from the noise
    (an object, a stripe) form differently in every temporal patch; noise shared through time gives
    the same start to all frames of a clip, so a model learns and samples videos whose frames agree
    (the mixed noise prior of PYoCo, Ge et al. 2023). The shared part of a token is the draw of the
    token at its clip's first temporal patch and its own (h, w); tokens are laid out time-major
    within a clip (``sora_jax/data/patches.py``), ``T' H' W'`` of them from the clip's first. Audio
    tokens (a batch with ``modality``) follow their clip's video tokens and get their own draw only.
    """
    own = jax.random.normal(key, shape)
    if correlation == 0.0:
        return own
    shared = jax.random.normal(jax.random.fold_in(key, 1), shape)
    slot = jnp.maximum(batch["segment_ids"] - 1, 0)[..., None]
    clip_grid = jnp.take_along_axis(batch["clip_grid"], slot, axis=1)  # [B, L, 3]
    frame_tokens = clip_grid[..., 1] * clip_grid[..., 2]  # [B, L] tokens of one temporal patch
    first = jnp.arange(shape[1]) - batch["positions"][..., 0] * frame_tokens  # [B, L]
    shared = jnp.take_along_axis(shared, jnp.clip(first, 0, shape[1] - 1)[..., None], axis=1)
    mixed = jnp.sqrt(correlation) * shared + jnp.sqrt(1.0 - correlation) * own
    audio = is_audio(batch)
    return mixed if audio is None else jnp.where(audio[..., None], own, mixed)


VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


def token_timesteps(t_clip_bs: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    """Per-clip timesteps ``[B, S]`` to per-token ``[B, L, 1]``; conditioning tokens are at t = 0."""
    t_token = jnp.take_along_axis(t_clip_bs, jnp.maximum(batch["segment_ids"] - 1, 0), axis=1)
    return jnp.where(batch["cond_mask"], 0.0, t_token)[..., None]


def given_features(batch: dict[str, jax.Array], config: ml_collections.ConfigDict) -> jax.Array:
    """bool ``[B, L, P]``: the patch features of frames given clean inside generated tokens (the
    batch's ``given_frames``; see :func:`sora_jax.diffusion.conditioning.frame_feature_mask`)."""
    pt = config.model.patch_size[0]
    return frame_feature_mask(batch["given_frames"], pt, batch["patches"].shape[-1], jnp)


def preconditioning(t: jax.Array, sigma_data: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(c_skip, c_out, c_in)`` at ``t`` for ``x0 = c_skip x_t + c_out F(c_in x_t)`` (EDM's scalings,
    Karras et al. 2022, on the straight path ``x_t = (1 - t) x0 + t e``, data of RMS ``sigma_data``).

    ``c_skip x_t`` is the least-squares linear guess of ``x0`` from ``x_t``; ``c_out`` is that
    guess's RMS error, so the network's target has unit scale at every t; ``c_in`` brings ``x_t`` to
    unit scale. Near t = 0 the guess is ``x_t`` itself and the network adds a correction of size t:
    a clip that is almost clean comes back with its detail, which a network that outputs ``x0``
    whole must carry through every layer. Near t = 1, ``c_skip`` is 0 and the network predicts
    ``x0`` as the ``data`` target does. At t = 0 (given frames) ``x0 = x_t`` exactly.
    """
    s2 = sigma_data**2
    variance = jnp.square(1.0 - t) * s2 + jnp.square(t)  # Of x_t.
    return (1.0 - t) * s2 / variance, t * sigma_data / jnp.sqrt(variance), 1.0 / jnp.sqrt(variance)


def clean_predictor(
    model: Callable[[jax.Array, jax.Array, dict], jax.Array],
    batch: dict[str, jax.Array],
    config: ml_collections.ConfigDict,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Wrap the network as ``clean(noisy [B, L, P], t [B, S]) -> x0 [B, L, P]``, its guess of the
    clean patches whatever ``diffusion.prediction`` it outputs (see :func:`velocity_predictor`)."""
    if config.prediction == "data":
        return lambda noisy, t_clip: model(noisy, t_clip, batch)
    if config.prediction == "velocity":  # x_t = x0 + t v
        return lambda noisy, t_clip: noisy - token_timesteps(t_clip, batch) * model(noisy, t_clip, batch)

    def clean(noisy: jax.Array, t_clip: jax.Array) -> jax.Array:
        skip, out, scale_in = preconditioning(token_timesteps(t_clip, batch), config.sigma_data)
        return skip * noisy + out * model(scale_in * noisy, t_clip, batch)

    return clean


def velocity_predictor(
    model: Callable[[jax.Array, jax.Array, dict], jax.Array],
    batch: dict[str, jax.Array],
    config: ml_collections.ConfigDict,
) -> VelocityFn:
    """Wrap the network as ``velocity(noisy [B, L, P], t [B, S]) -> [B, L, P]``.

    With ``diffusion.prediction = "data"`` the network outputs the clean patches ``x0`` and the
    velocity is derived as ``(x_t - x0) / t`` (t floored at ``diffusion.min_t``). Clean data lies
    near a low-dimensional manifold while noise fills every dimension of a patch, so a small
    network predicts ``x0`` far more accurately than it predicts noise; the loss stays on velocity.
    With ``"preconditioned"`` the clean patches are the linear guess from ``x_t`` plus the network's
    scaled correction (:func:`preconditioning`): ``x0`` at high noise, the detail ``x_t`` already
    holds kept at low noise. With ``"velocity"`` the output is the velocity itself.
    """
    if config.prediction == "velocity":
        return lambda noisy, t: model(noisy, t, batch)
    clean = clean_predictor(model, batch, config)

    def velocity(noisy: jax.Array, t_clip: jax.Array) -> jax.Array:
        return (noisy - clean(noisy, t_clip)) / jnp.maximum(token_timesteps(t_clip, batch), config.min_t)

    return velocity


def flow_loss(
    predict_velocity: VelocityFn,
    batch: dict[str, jax.Array],
    key: jax.Array,
    config: ml_collections.ConfigDict,
    timesteps: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The batch's velocity error: each clip's mean squared velocity error, averaged over clips
    weighted as ``diffusion.loss_weight`` says (``clip``: equally; ``token``: by their tokens, so a
    clip of eight temporal patches counts as much as eight images of its size).

    A clip's own loss is the mean over its tokens, so it does not depend on what shares its row.
    Conditioning tokens (``cond_mask``) stay clean (t = 0) and are left out of the loss; so are the
    features of frames given inside generated tokens (``given_frames``), which the model sees clean. With
    ``diffusion.max_x0_weight`` and drawn timesteps, token errors are weighted (see the config).
    ``predict_velocity(noisy [B, L, P], t [B, S]) -> [B, L, P]``. ``timesteps`` (broadcast to
    ``[B, S]``) replaces the random draw, and the loss is then the plain velocity error.

    With sound (the batch has ``modality``), a token's error is its mean over its own modality's
    features, and a clip's loss is its video tokens' mean error + ``audio.loss_weight`` x its audio
    tokens' mean error. A clip's size (``token`` weighting) counts each of its audio tokens as
    ``audio.loss_weight`` of a video token, so at weight 0 the loss is what it would be without
    sound, and a clip has something in the loss (``clip_valid``) only where its size is not 0. The
    timestep shift counts video tokens only (sound adds duration, not resolution), as sampling does.

    Returns the loss and per-clip ``clip_loss``, ``clip_t`` and ``clip_valid`` (``[B, S]``); with
    sound also ``clip_video_loss`` and ``clip_audio_loss`` (each 0 for a clip without such tokens
    in the loss) and ``clip_has_video``/``clip_has_audio`` (whether it has any).
    """
    if "modality" in batch:
        return _flow_loss_with_sound(predict_velocity, batch, key, config, timesteps)
    patches, segment_ids = batch["patches"], batch["segment_ids"]
    max_clips = batch["clip_grid"].shape[1]
    time_key, noise_key = jax.random.split(key)
    counts = clip_token_counts(segment_ids, max_clips)
    if timesteps is None:
        t_clip = sample_timesteps(time_key, counts, config.diffusion)  # [B, S]
    else:  # Fixed timesteps (evaluation): comparable across checkpoints.
        t_clip = jnp.broadcast_to(timesteps, counts.shape)
    t_token = token_timesteps(t_clip, batch)
    noise = video_noise(noise_key, batch, patches.shape, config.diffusion.noise_correlation)
    noisy = (1.0 - t_token) * patches + t_token * noise
    squared_error = lambda velocity: jnp.square(velocity - (noise - patches))  # noqa: E731
    if "given_frames" in batch:  # Frames given inside generated tokens: clean, and not in the loss.
        given = given_features(batch, config)
        noisy = jnp.where(given, patches, noisy)
        velocity = predict_velocity(noisy, t_clip)
        generated = jnp.maximum(jnp.sum(~given, axis=-1), 1)
        token_error = jnp.sum(jnp.where(given, 0.0, squared_error(velocity)), axis=-1) / generated
    else:
        velocity = predict_velocity(noisy, t_clip)
        token_error = jnp.mean(squared_error(velocity), axis=-1)  # [B, L]
    if timesteps is None and config.diffusion.max_x0_weight > 0:
        # A token's velocity error at t is its clean-data error over t^2: clean-data errors of
        # nearly clean clips weigh up to 1 / min_t^2 and drown those of noisy ones, where a clip's
        # layout, colours and motion are decided. Cap that weight.
        weight = jnp.minimum(1.0, config.diffusion.max_x0_weight * jnp.square(t_token[..., 0]))
        token_error = token_error * weight
    in_loss = (segment_ids > 0) & ~batch["cond_mask"]
    one_hot = (segment_ids[..., None] == jnp.arange(1, max_clips + 1)) & in_loss[..., None]
    clip_sum = jnp.einsum("bl,bls->bs", token_error, one_hot.astype(token_error.dtype))
    clip_count = one_hot.sum(axis=1)
    clip_valid = clip_count > 0
    clip_loss = clip_sum / jnp.maximum(clip_count, 1)
    if config.diffusion.loss_weight == "token":  # A clip counts by its tokens in the loss.
        loss = jnp.sum(clip_sum) / jnp.maximum(jnp.sum(clip_count), 1)
    else:  # Every clip counts once, an image as much as a long video.
        loss = jnp.sum(clip_loss * clip_valid) / jnp.maximum(clip_valid.sum(), 1)
    return loss, {"clip_loss": clip_loss, "clip_t": t_clip, "clip_valid": clip_valid}


def _flow_loss_with_sound(
    predict_velocity: VelocityFn,
    batch: dict[str, jax.Array],
    key: jax.Array,
    config: ml_collections.ConfigDict,
    timesteps: jax.Array | None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """:func:`flow_loss` of a batch with sound (see there); the same draws of timesteps and noise."""
    patches, segment_ids = batch["patches"], batch["segment_ids"]
    max_clips = batch["clip_grid"].shape[1]
    audio = is_audio(batch)
    time_key, noise_key = jax.random.split(key)
    if timesteps is None:
        video_counts = clip_token_counts(segment_ids, max_clips, ~audio)
        t_clip = sample_timesteps(time_key, video_counts, config.diffusion)  # [B, S]
    else:
        t_clip = jnp.broadcast_to(timesteps, (segment_ids.shape[0], max_clips))
    t_token = token_timesteps(t_clip, batch)
    widths = token_widths(config)
    own = feature_mask(batch, widths, patches.shape[-1])
    noise = video_noise(noise_key, batch, patches.shape, config.diffusion.noise_correlation) * own
    noisy = (1.0 - t_token) * patches + t_token * noise
    velocity = predict_velocity(noisy, t_clip)
    squared = jnp.where(own, jnp.square(velocity - (noise - patches)), 0.0)
    token_error = jnp.sum(squared, axis=-1) / jnp.where(audio, widths[1], widths[0])  # [B, L]
    if timesteps is None and config.diffusion.max_x0_weight > 0:
        weight = jnp.minimum(1.0, config.diffusion.max_x0_weight * jnp.square(t_token[..., 0]))
        token_error = token_error * weight
    in_loss = (segment_ids > 0) & ~batch["cond_mask"]
    slots = segment_ids[..., None] == jnp.arange(1, max_clips + 1)  # [B, L, S]

    def clip_mean(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        one_hot = slots & tokens[..., None]
        count = one_hot.sum(axis=1)
        total = jnp.einsum("bl,bls->bs", token_error, one_hot.astype(token_error.dtype))
        return total / jnp.maximum(count, 1), count

    video_loss, video_count = clip_mean(in_loss & ~audio)
    audio_loss, audio_count = clip_mean(in_loss & audio)
    audio_weight = config.audio.loss_weight
    clip_loss = video_loss + audio_weight * audio_loss
    clip_size = video_count + audio_weight * audio_count  # Each token as much as it counts.
    clip_valid = clip_size > 0
    if config.diffusion.loss_weight == "token":  # A clip counts by its tokens, sound and picture.
        total = jnp.sum(clip_size)
        loss = jnp.sum(clip_loss * clip_size) / jnp.where(total > 0, total, 1.0)
    else:
        loss = jnp.sum(clip_loss * clip_valid) / jnp.maximum(clip_valid.sum(), 1)
    return loss, {
        "clip_loss": clip_loss,
        "clip_t": t_clip,
        "clip_valid": clip_valid,
        "clip_video_loss": video_loss,
        "clip_audio_loss": audio_loss,
        "clip_has_video": video_count > 0,
        "clip_has_audio": audio_count > 0,
    }


def validate_diffusion_section(f: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first ``diffusion.*`` key that cannot work."""

    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"config key 'diffusion.{key}': {problem}")

    for key, allowed in (
        ("sampler", ("euler", "heun")),
        ("prediction", ("data", "preconditioned", "velocity")),
        ("loss_weight", ("token", "clip")),
    ):
        if f[key] not in allowed:
            fail(key, f"{f[key]!r} is not one of {', '.join(allowed)}")
    if f.sample_steps < 1:
        fail("sample_steps", f"must be at least 1, got {f.sample_steps}")
    interval = tuple(f.guidance_interval)
    if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
        fail("guidance_interval", f"must be (lo, hi) with 0 <= lo <= hi <= 1, got {interval}")
    if f.max_x0_weight < 0:
        fail("max_x0_weight", f"must be >= 0 (0: no cap), got {f.max_x0_weight}")
    if not 0.0 <= f.noise_correlation < 1.0:
        fail("noise_correlation", f"must be in [0, 1), got {f.noise_correlation}")
    if not 0.0 <= f.uniform_t <= 1.0:
        fail("uniform_t", f"must be in [0, 1], got {f.uniform_t}")
    if f.sigma_data <= 0:
        fail("sigma_data", f"must be > 0, got {f.sigma_data}")
    if not 0.0 < f.min_t < 1.0:
        fail("min_t", f"must be in (0, 1), got {f.min_t}")
    if f.logit_std <= 0 or f.shift_base_tokens < 1 or f.shift_max < 1:
        fail("shift_max", "logit_std > 0, shift_base_tokens >= 1 and shift_max >= 1")
