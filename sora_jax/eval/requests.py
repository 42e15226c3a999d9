"""``sora-jax sample``: a :class:`~sora_jax.kinds.base.SampleRequest` checked, then turned into a video
by a DiT run.

Nothing is loaded for a request that cannot work. :func:`validate_sample` checks what needs no
run (the request's own flags, where the video goes) before the run is opened; :func:`model_shape`
checks the size against the run's config (its patches, a latent run's autoencoder factors) before
any parameters are loaded; given files are read before the DiT's parameters are.

The request's shape is the video's (pixels); a latent run generates the latents of that shape
(:mod:`sora_jax.autoencoder.latent_space`). Given images and videos are read at the video's size
and laid out as conditioning (:mod:`sora_jax.eval.inputs`): an image over the first temporal
group, a video's end (or start) to extend, two images or videos to connect, or a video to edit.
A run with sound (``audio.enabled``) makes each video's sound with it; it can also keep a whole
video and make its sound (``--video FILE --add-sound``), or make the picture of a sound file
(``--audio FILE``). Given images and videos give no sound: the whole clip's sound is made.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from sora_jax.autoencoder.latent_space import model_space
from sora_jax.errors import ConfigError
from sora_jax.eval.generate import Condition, Edit, make_generator
from sora_jax.eval.inputs import ClipLayout, read_frames
from sora_jax.kinds.base import EDIT_STRENGTH, Sample, SampleRequest
from sora_jax.paths import cannot_write_in, nearest_existing

# The .gif written beside the .mp4 stores delays in whole centiseconds (see data/video_io.py), and
# either container needs at least one frame in 1001 s.
MIN_FPS, MAX_FPS = 1 / 1001, 100.0


def validate_sample(request: SampleRequest, out: str, fps: float) -> None:
    """Everything ``sora-jax sample`` can check before it opens the run: the request
    (:meth:`SampleRequest.validate`) and the video it writes, ``out`` (a local ``.mp4`` path or a
    URL; the ``.gif`` goes beside it) at ``fps`` frames/s.

    A local ``out`` must be writable now: its folder, or the nearest existing folder above it (the
    missing ones are made when the video is written), takes a new file.

    Raises:
        ConfigError: naming the first flag that cannot work.
    """
    request.validate()
    if not (math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS):
        raise ConfigError(f"--fps {fps}: must be a number of frames/s in [1/1001, {MAX_FPS:g}]")
    if Path(out).suffix.lower() != ".mp4":
        raise ConfigError(f"--out {out}: must name an .mp4 file (a .gif is written beside it)")
    if "://" in out:
        return  # A bucket tells whether it takes the video only when it is written.
    path = Path(out)
    for target in (path, path.with_suffix(".gif")):
        if target.is_dir():
            raise ConfigError(f"--out {out}: {target} is a folder; name a FILE.mp4")
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise ConfigError(f"--out {out}: {folder} is a file, not a folder")
    refused = cannot_write_in(folder)
    if refused:
        raise ConfigError(f"--out {out}: cannot write in {folder} ({refused})")


def video_factors(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """``(temporal, spatial)``: video frames after the first, and pixels a side, that one model
    frame and pixel stand for: (1, 1) for a pixel run, a latent run's autoencoder factors (read from
    that run's config; no weights are loaded).

    Raises:
        ConfigError: a latent run whose ``model.autoencoder`` is not a training workdir.
    """
    if not config.model.autoencoder:
        return 1, 1
    from sora_jax.autoencoder.config import AutoencoderConfig
    from sora_jax.train.trained_run import local_config

    try:
        section = local_config(config.model.autoencoder).autoencoder
    except FileNotFoundError as error:
        raise ConfigError(f"config key 'model.autoencoder': {error}") from None
    autoencoder = AutoencoderConfig.from_section(section)
    return autoencoder.temporal_factor, autoencoder.spatial_factor


def _nearest(value: int, unit: int, offset: int = 0) -> str:
    """The values ``offset + unit k`` (>= 1) on either side of ``value``, for a message."""
    below = offset + (value - offset) // unit * unit
    return " or ".join(str(v) for v in (below, below + unit) if v >= 1)


def model_shape(config: ml_collections.ConfigDict, request: SampleRequest) -> tuple[int, int, int]:
    """What the DiT generates for the asked video shape: the same pixels, or a latent run's latents;
    the run's ``train.sample_*`` (model units) when the request gives none.

    Raises:
        ConfigError: naming ``--frames``, ``--height`` or ``--width`` where the size has no whole
            patches (of latents, in a latent run), and the nearest sizes that have.
    """
    t = config.train
    if request.frames is None or request.height is None or request.width is None:
        return t.sample_frames, t.sample_height, t.sample_width
    temporal, spatial = video_factors(config)
    if (request.frames - 1) % temporal:
        raise ConfigError(
            f"--frames {request.frames}: a latent run makes 1 + {temporal} k frames (its autoencoder's "
            f"temporal factor), e.g. {_nearest(request.frames, temporal, 1)}"
        )
    _, patch_height, patch_width = config.model.patch_size
    for flag, size, patch in (
        ("--height", request.height, patch_height),
        ("--width", request.width, patch_width),
    ):
        unit = spatial * patch
        if size % unit:
            why = f"model.patch_size {patch}"
            if spatial > 1:
                why = f"the autoencoder's spatial factor {spatial} x {why}"
            raise ConfigError(
                f"{flag} {size}: must be a multiple of {unit} ({why}), e.g. {_nearest(size, unit)}"
            )
    return 1 + (request.frames - 1) // temporal, request.height // spatial, request.width // spatial


def given_content(
    request: SampleRequest,
    layout: ClipLayout,
    video_shape: tuple[int, int, int],
    audio: ml_collections.ConfigDict | None = None,
    fps: float = 8.0,
) -> tuple[Condition | None, Edit | None]:
    """The (condition, edit) the request's images, videos and sounds ask for; (None, None) for text
    alone. Only the frames used are decoded (a video's first or last ones, the first frame of each
    end of an interpolation); a sound file (``--audio``, read with the run's ``audio`` section) for
    the clip's duration at ``fps``.

    Raises:
        ValueError: a given file cannot be read, or what it gives does not fit the clip.
    """
    frames, height, width = video_shape
    if request.add_sound:
        return layout.whole_video(read_frames(request.video, height, width, frames)), None
    if request.audio:
        return layout.sound_only(read_sound(request.audio, audio, frames / fps)), None

    def piece(path: str, share: int, end: bool) -> np.ndarray:
        """``share`` frames of a video (``--given-frames`` if given): its last (``end``) or first
        ones, whole model frames."""
        video = read_frames(path, height, width, max(1, request.given_frames or share), from_end=end)
        count = layout.space.whole_frames(len(video))
        return video[len(video) - count :] if end else video[:count]

    if request.image:
        # The image is given over the whole first temporal group, not its first frame alone: a
        # token holds pt frames and is given or generated whole (see sora_jax.eval.inputs).
        return layout.condition([("start", read_frames(request.image, height, width, 1))]), None
    if request.interpolate:
        first, last = (read_frames(path, height, width, 1) for path in request.interpolate)
        return layout.condition([("start", first), ("end", last)]), None
    if request.video:
        # The video's end leads into what is generated, or (backward) its start follows it.
        forward = request.extend != "backward"
        given = piece(request.video, frames // 2, end=forward)
        return layout.condition([("start" if forward else "end", given)]), None
    if request.connect:
        head = piece(request.connect[0], frames // 3, end=True)
        tail = piece(request.connect[1], frames // 3, end=False)
        return layout.condition([("start", head), ("end", tail)]), None
    if request.edit:
        strength = EDIT_STRENGTH if request.strength is None else request.strength
        return None, layout.edit(read_frames(request.edit, height, width, frames), strength)
    return None, None


def read_sound(path: str, audio: ml_collections.ConfigDict, seconds: float) -> np.ndarray:
    """float32 ``[samples, C]``: the first ``seconds`` of the sound of a file (audio or video), at the
    run's ``audio.sample_rate`` and channels, zero-padded where the file is shorter.

    Raises:
        ValueError: the file has no sound or cannot be read.
    """
    from sora_jax.data.video_io import read_audio

    try:
        sound = read_audio(path, sample_rate=audio.sample_rate, channels=audio.channels, duration=seconds)
    except Exception as error:  # noqa: BLE001 - any decoder failure is a bad input file.
        raise ValueError(f"--audio {path} cannot be read as sound: {error}") from error
    if sound is None:
        raise ValueError(f"--audio {path}: the file has no audio stream")
    return sound


def check_sound_request(config: ml_collections.ConfigDict, request: SampleRequest) -> None:
    """Raises ConfigError when ``request`` asks for sound (``--add-sound``, ``--audio``) of a run
    that has none, or for sound of a single frame."""
    asked = "--add-sound" if request.add_sound else "--audio" if request.audio else ""
    if not asked:
        return
    if not config.audio.enabled:
        raise ConfigError(f"{asked}: this run was trained without sound (audio.enabled is false)")
    if request.frames == 1:
        raise ConfigError(f"{asked}: one frame has no duration to sound over; ask for --frames 2 or more")


def generate_for_request(run: Any, request: SampleRequest) -> np.ndarray | Sample:
    """uint8 video ``[T, H, W, 3]`` for ``request`` from the EMA parameters of a trained DiT run
    (:class:`~sora_jax.train.trained_run.TrainedRun`) at ``request.step`` (default: the latest);
    from a run with sound, a :class:`~sora_jax.kinds.base.Sample` with the video's sound.

    In order, so that a request that cannot work fails before the costly parts: the request and
    its size against the run's config, the checkpoint's step, the given files (through a latent
    run's autoencoder), then the DiT's parameters and the generation.

    Raises:
        ConfigError: the request does not fit the run, or a given file is unusable.
    """
    request.validate()
    config, d, m = run.config, run.config.diffusion, run.config.model
    shape = model_shape(config, request)
    check_sound_request(config, request)
    fps = config.train.sample_fps if request.fps is None else request.fps
    run.step(request.step)  # That the checkpoint exists, before anything is loaded.
    space = model_space(config)
    layout = ClipLayout(*shape, m.channels, m.patch_size[0], space, config.conditioning.frame_level)
    try:
        condition, edit = given_content(request, layout, space.pixel_shape(*shape), config.audio, fps)
    except ValueError as error:  # Unreadable or unfitting given images and videos.
        raise ConfigError(str(error)) from None
    generate = make_generator(
        run.graphdef,
        config,
        frames=shape[0],
        height=shape[1],
        width=shape[2],
        steps=d.sample_steps if request.steps is None else request.steps,
        guidance=d.guidance if request.guidance is None else request.guidance,
        method=request.sampler or d.sampler,
        cond_guidance=d.cond_guidance if request.cond_guidance is None else request.cond_guidance,
        guidance_interval=request.guidance_interval,
        space=space,
        fps=fps,
        with_sound=True,
    )
    params = run.params(request.step)
    video, sound = generate(params, request.prompt, request.seed, condition=condition, edit=edit)
    return video if sound is None else Sample(video, sound, config.audio.sample_rate)
