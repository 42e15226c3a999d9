"""Conditioning tasks: which of a clip's frames are given clean, so one model learns to animate images,
extend videos either way, interpolate between frames and fill in missing ones, beside text-to-video.

A task chooses a set of *temporal groups* of the clip to give: a group is the frames of one temporal
patch (``model.patch_size[0]`` frames; in a latent run, latent frames). Tokens of given groups are
the packed batch's ``cond_mask``: they stay clean (timestep 0), are left out of the loss, and the
model is told which they are. Tasks, with their ``conditioning.*`` weight keys:

==================  ==============================================================================
text_to_video       nothing given
image_to_video      the first group (the first frame of a latent run: an image)
last_frame          the last group
extend_forward      a prefix: the first 1 .. G-1 groups (the model continues the video)
extend_backward     a suffix: the last 1 .. G-1 groups (the model makes what came before)
interpolate         the first and the last group
random_frames       each group independently with probability ``conditioning.random_rate``, at
                    least one left to generate
video_to_audio      (``audio.enabled``) every video token: the model makes the clip's sound
audio_to_video      (``audio.enabled``) every audio token: the model makes the picture for the sound
==================  ==============================================================================

With ``conditioning.frame_level``, the tasks that give one frame (image_to_video, last_frame) give
exactly that frame, not the whole temporal group it is in: the group's tokens are generated like
the rest, with the given frame's pixels shown to the model clean inside them (the packed batch's
``given_frames``; see :func:`given_frame_bits`). A temporal patch of several frames otherwise turns
an image into a group of copies of it, which a sampled video then shows as frozen frames, and
which training never shows the model (it gives a group's real frames).

A clip of one group (an image, or a clip shorter than two temporal patches) is always text-to-image
for the temporal-group tasks. With audio on, a clip's audio tokens follow its video: a temporal-group
task also gives the audio tokens whose time falls in a given group (:func:`given_tokens`), and
text-to-video generates sound and picture together. The two whole-modality tasks need a clip with
audio tokens; a clip without them (an image, a video with no audio stream) is text-to-video instead.
Tasks are drawn per clip from the weights, with the clip's own random generator, so the data of a
run stays a pure function of (seed, step).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from sora_jax.errors import ConfigError

TASKS = (
    "text_to_video",
    "image_to_video",
    "last_frame",
    "extend_forward",
    "extend_backward",
    "interpolate",
    "random_frames",
    "video_to_audio",
    "audio_to_video",
)
# Tasks that give a whole modality of a clip with audio, not temporal groups. They come last in
# TASKS: a weight of 0 there leaves every draw of the other tasks as it was before they existed.
AUDIO_TASKS = ("video_to_audio", "audio_to_video")


def conditioning_section() -> ml_collections.ConfigDict:
    """The ``conditioning`` config section: the weight of each task (normalised when drawn)."""
    c = ml_collections.ConfigDict()
    c.text_to_video = 1.0
    c.image_to_video = 0.0
    c.last_frame = 0.0
    c.extend_forward = 0.0
    c.extend_backward = 0.0
    c.interpolate = 0.0
    c.random_frames = 0.0
    c.video_to_audio = 0.0  # Needs audio.enabled.
    c.audio_to_video = 0.0  # Needs audio.enabled.
    c.random_rate = 0.25  # random_frames: probability that a group is given.
    # image_to_video and last_frame give their one frame inside its temporal patch (the packed
    # batch's given_frames), not the whole first or last group. Needs a video DiT run.
    c.frame_level = False
    return c


# Tasks that give one frame of a clip: with ``frame_level``, that frame alone, inside its group.
SINGLE_FRAME_TASKS = ("image_to_video", "last_frame")


def given_frame_bits(
    task: str, frames: int, positions: np.ndarray, pt: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """With ``conditioning.frame_level``: ``(cond_mask [N] bool, given_frames [N] int32)`` of one
    clip of ``frames`` real frames (``positions [N, 3]`` its video tokens, ``pt`` frames a temporal
    patch) for a task of :data:`SINGLE_FRAME_TASKS`; None for any other task (it gives whole groups).

    The given frame's group is not given as tokens (``cond_mask`` all False): its tokens are
    generated, and bit ``f`` of a token's ``given_frames`` says frame ``f`` of its temporal patch is
    given clean. image_to_video gives frame 0; last_frame the clip's last real frame (the patch
    padding after it repeats it).
    """
    if task not in SINGLE_FRAME_TASKS:
        return None
    frame = 0 if task == "image_to_video" else frames - 1
    bits = np.where(positions[:, 0] == frame // pt, 1 << (frame % pt), 0).astype(np.int32)
    return np.zeros(len(positions), bool), bits


def token_frame_bits(frames: np.ndarray, positions: np.ndarray, pt: int) -> np.ndarray:
    """int32 ``[N]``: each token's ``given_frames`` bits from the clip's given frames (bool ``[T]``;
    ``positions [N, 3]`` its video tokens, ``pt`` frames a temporal patch)."""
    padded = np.zeros(-(-len(frames) // pt) * pt, bool)
    padded[: len(frames)] = frames
    per_group = (padded.reshape(-1, pt) << np.arange(pt)).sum(axis=1).astype(np.int32)
    return per_group[positions[:, 0]]


def frame_feature_mask(given_frames: np.ndarray, pt: int, patch_dim: int, xp=np) -> np.ndarray:
    """bool ``[..., patch_dim]``: the features of video tokens that belong to given frames, from
    their ``given_frames`` bits ``[...]`` (a patch's features run frame by frame, ``patch_dim / pt``
    each: :func:`sora_jax.data.patches.patchify`). ``xp``: numpy or jax.numpy."""
    frame_of_feature = xp.arange(patch_dim) // (patch_dim // pt)
    return (given_frames[..., None] >> frame_of_feature) & 1 == 1


def task_weights(section: ml_collections.ConfigDict) -> np.ndarray:
    """``[len(TASKS)]`` float64 probabilities, in ``TASKS`` order.

    Raises:
        ValueError: a negative weight, or all zero.
    """
    weights = np.asarray([section[task] for task in TASKS], np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        given = {task: float(w) for task, w in zip(TASKS, weights, strict=True)}
        raise ValueError(f"conditioning weights must be >= 0 and not all 0, got {given}")
    return weights / weights.sum()


def validate_conditioning_section(section: ml_collections.ConfigDict, audio: bool = False) -> None:
    """Raises ConfigError naming the first ``conditioning.*`` key that cannot work; ``audio``: whether
    the run's clips carry audio tokens (``audio.enabled``), which the audio tasks need."""
    for task in AUDIO_TASKS:
        if section[task] > 0 and not audio:
            raise ConfigError(
                f"config key 'conditioning.{task}': {section[task]} needs clips with sound; set "
                f"audio.enabled=True or conditioning.{task}=0"
            )
    try:
        task_weights(section)
    except ValueError as error:
        raise ConfigError(f"config key 'conditioning.text_to_video': {error}") from None
    if section.frame_level and audio:
        raise ConfigError(
            "config key 'conditioning.frame_level': frame-level conditioning is not built for runs "
            "with sound; set conditioning.frame_level=False or audio.enabled=False"
        )
    if not 0.0 < section.random_rate < 1.0:
        raise ConfigError(
            f"config key 'conditioning.random_rate': must be in (0, 1), got {section.random_rate}"
        )


def only_text(section: ml_collections.ConfigDict) -> bool:
    """Whether every clip is text-to-video (then no task is drawn and no random number is used)."""
    return all(section[task] == 0 for task in TASKS[1:])


def given_groups(task: str, groups: int, rng: np.random.Generator, random_rate: float = 0.25) -> np.ndarray:
    """bool ``[groups]``: which temporal groups ``task`` gives clean (all False for one group, and for
    the whole-modality tasks, which :func:`given_tokens` resolves)."""
    given = np.zeros(groups, bool)
    if groups < 2 or task == "text_to_video" or task in AUDIO_TASKS:
        return given
    if task == "image_to_video":
        given[0] = True
    elif task == "last_frame":
        given[-1] = True
    elif task == "extend_forward":
        given[: rng.integers(1, groups)] = True
    elif task == "extend_backward":
        given[groups - rng.integers(1, groups) :] = True
    elif task == "interpolate":
        given[[0, -1]] = True
    elif task == "random_frames":
        given = rng.random(groups) < random_rate
        if given.all():
            given[rng.integers(groups)] = False
    else:
        raise ValueError(f"unknown conditioning task {task!r}; one of {TASKS}")
    return given


def draw_task(section: ml_collections.ConfigDict, rng: np.random.Generator) -> str:
    """One task drawn by the configured weights."""
    return TASKS[int(rng.choice(len(TASKS), p=task_weights(section)))]


def token_mask(given: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """bool ``[N]``: the tokens (``positions [N, 3]`` of one clip) whose temporal group is given."""
    return given[positions[:, 0]]


def audio_token_groups(times: np.ndarray, pt: int, groups: int) -> np.ndarray:
    """int ``[Na]``: the temporal group of each audio token of a clip of ``groups`` groups.

    ``times`` are the tokens' times on the clip's video clock in temporal patches (the centre of
    group ``g`` is ``g``; see :func:`sora_jax.audio.codec.audio_token_times`). Group ``g`` spans the
    frames ``g * pt .. g * pt + pt - 1``, each shown for one frame period, so a token belongs to the
    group its centre falls in; one centred exactly on a boundary (within float rounding) goes to the
    later group. Tokens past the last frame (the last token's tail) belong to the last group.
    """
    frame_time = np.asarray(times, np.float64) * pt + (pt - 1) / 2  # in frames since frame 0 began
    return np.clip(np.floor((frame_time + 1e-3) / pt), 0, groups - 1).astype(np.int64)


def given_tokens(
    task: str,
    given: np.ndarray,
    positions: np.ndarray,
    audio_times: np.ndarray | None = None,
    pt: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """bool ``(video [N], audio [Na] or None)``: the tokens of one clip given clean by ``task``.

    ``given``: the task's temporal groups (:func:`given_groups`); ``positions [N, 3]``: the clip's
    video tokens; ``audio_times [Na]``: its audio tokens' times (None: the clip has no audio, and
    then the audio mask is None too). Temporal-group tasks give the video tokens of the given groups
    and the audio tokens whose time falls in them (:func:`audio_token_groups`, ``pt`` frames a
    group); ``video_to_audio`` gives every video token, ``audio_to_video`` every audio token; both
    give nothing to a clip without audio (it is text-to-video).
    """
    video = token_mask(given, positions)  # No group is given by the whole-modality tasks.
    if audio_times is None:
        return video, None
    if task == "video_to_audio":
        return np.ones_like(video), np.zeros(len(audio_times), bool)
    if task == "audio_to_video":
        return np.zeros_like(video), np.ones(len(audio_times), bool)
    return video, given[audio_token_groups(audio_times, pt, len(given))]
