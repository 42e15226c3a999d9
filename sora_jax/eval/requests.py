"""``sora-jax sample`` for a DiT run: a :class:`~sora_jax.kinds.base.SampleRequest` turned into a video.

The request's shape is the video's (pixels); a latent run generates the latents of that shape
(:mod:`sora_jax.autoencoder.latent_space`). Given images and videos are read at the video's size
and laid out as conditioning (:mod:`sora_jax.eval.inputs`): an image as the first frame, a video's
end (or start) to extend, two images or videos to connect, or a video to edit.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from sora_jax.autoencoder.latent_space import VideoSpace, model_space
from sora_jax.errors import ConfigError
from sora_jax.eval.generate import Condition, Edit, make_generator
from sora_jax.eval.inputs import ClipLayout, read_frames
from sora_jax.kinds.base import SampleRequest


def model_shape(
    config: ml_collections.ConfigDict, space: VideoSpace, request: SampleRequest
) -> tuple[int, int, int]:
    """What the DiT generates for the asked video shape: the same pixels, or a latent run's latents.

    Raises:
        ConfigError: only some of frames, height and width are given, or the shape has no latents.
    """
    t = config.train
    asked = (request.frames, request.height, request.width)
    if all(v is None for v in asked):
        return t.sample_frames, t.sample_height, t.sample_width
    if any(v is None for v in asked):
        raise ConfigError("give all of --frames, --height and --width, or none")
    try:
        return space.model_shape(*asked)
    except ValueError as error:
        raise ConfigError(f"--frames/--height/--width {asked}: {error}") from None


def given_content(
    request: SampleRequest, layout: ClipLayout, video_shape: tuple[int, int, int]
) -> tuple[Condition | None, Edit | None]:
    """The (condition, edit) the request's images and videos ask for; (None, None) for text alone.

    Raises:
        ValueError: a given file cannot be read, or what it gives does not fit the clip.
    """
    frames, height, width = video_shape

    def piece(path: str, share: int, end: bool) -> np.ndarray:
        """``share`` frames of a video: its last (``end``) or first ones, whole model frames."""
        video = read_frames(path, height, width)
        count = layout.space.whole_frames(max(1, min(request.given_frames or share, len(video))))
        return video[len(video) - count :] if end else video[:count]

    if request.image:
        return layout.condition([("start", read_frames(request.image, height, width)[:1])]), None
    if request.interpolate:
        first, last = (read_frames(path, height, width)[:1] for path in request.interpolate)
        return layout.condition([("start", first), ("end", last)]), None
    if request.video:
        forward = request.extend == "forward"  # The video's end leads into what is generated, or its start.
        given = piece(request.video, frames // 2, end=forward)
        return layout.condition([("start" if forward else "end", given)]), None
    if request.connect:
        head = piece(request.connect[0], frames // 3, end=True)
        tail = piece(request.connect[1], frames // 3, end=False)
        return layout.condition([("start", head), ("end", tail)]), None
    if request.edit:
        return None, layout.edit(read_frames(request.edit, height, width), request.strength)
    return None, None


def generate_for_request(run: Any, request: SampleRequest) -> np.ndarray:
    """uint8 video ``[T, H, W, 3]`` for ``request`` from the EMA parameters of a trained DiT run
    (:class:`~sora_jax.train.trained_run.TrainedRun`) at ``request.step`` (default: the latest).

    Raises:
        ConfigError: the request does not fit the run, or a given file is unusable.
    """
    config, d = run.config, run.config.diffusion
    params = run.params(request.step)
    space = model_space(config)
    shape = model_shape(config, space, request)
    generate = make_generator(
        run.graphdef,
        config,
        frames=shape[0],
        height=shape[1],
        width=shape[2],
        steps=request.steps or d.sample_steps,
        guidance=d.guidance if request.guidance is None else request.guidance,
        method=request.sampler or d.sampler,
        cond_guidance=d.cond_guidance if request.cond_guidance is None else request.cond_guidance,
        space=space,
    )
    m = config.model
    layout = ClipLayout(*shape, m.channels, m.patch_size[0], space)
    try:
        condition, edit = given_content(request, layout, space.pixel_shape(*shape))
        return generate(params, request.prompt, request.seed, condition=condition, edit=edit)
    except ValueError as error:  # Unreadable or unfitting given images and videos.
        raise ConfigError(str(error)) from None
