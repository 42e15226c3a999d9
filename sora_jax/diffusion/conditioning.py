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
==================  ==============================================================================

A clip of one group (an image, or a clip shorter than two temporal patches) is always text-to-image.
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
)


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
    c.random_rate = 0.25  # random_frames: probability that a group is given.
    return c


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


def validate_conditioning_section(section: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first ``conditioning.*`` key that cannot work."""
    try:
        task_weights(section)
    except ValueError as error:
        raise ConfigError(f"config key 'conditioning.text_to_video': {error}") from None
    if not 0.0 < section.random_rate < 1.0:
        raise ConfigError(
            f"config key 'conditioning.random_rate': must be in (0, 1), got {section.random_rate}"
        )


def only_text(section: ml_collections.ConfigDict) -> bool:
    """Whether every clip is text-to-video (then no task is drawn and no random number is used)."""
    return all(section[task] == 0 for task in TASKS[1:])


def given_groups(task: str, groups: int, rng: np.random.Generator, random_rate: float = 0.25) -> np.ndarray:
    """bool ``[groups]``: which temporal groups ``task`` gives clean (all False for one group)."""
    given = np.zeros(groups, bool)
    if groups < 2 or task == "text_to_video":
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
