"""Images and videos given to ``sora-jax sample``: read, fitted to the clip, and turned into what the
generator conditions on (:class:`~sora_jax.eval.generate.Condition`) or edits
(:class:`~sora_jax.eval.generate.Edit`).

Frames are fitted to the video's height and width keeping their aspect ratio: scaled to cover it
(PIL box filter), then centre-cropped. Only the frames used are decoded: a video's first ones, or
its last ones after a seek near its end. Everything ends in model units: pixels in [-1, 1], or in
a latent run the autoencoder's normalised latents of the given frames.

What is given is whole temporal groups, because that is what a token holds and what training gave
(:mod:`sora_jax.diffusion.conditioning` marks given tokens, ``pt`` frames each): a token cannot be
given for one of its frames and generated for the others. So an image (``--image``, each end of
``--interpolate``) is held still over its whole group, ``pt`` frames of a pixel run; in a latent
run ``pt`` latent frames, ``1 + ft (pt - 1)`` video frames, just the image when ``pt`` is 1:

* pixels (``pt`` frames a group): a piece that does not fill its last (or, at the end of the clip,
  first) group is completed by repeating its edge frame, a still moment;
* latents: a piece of ``1 + ft k`` frames is encoded alone to ``1 + k`` latent frames (frames past
  the last whole step are dropped). At the start of the clip this equals the whole video's latents
  (the encoder is causal); elsewhere it is the piece's own encoding, an approximation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from sora_jax.autoencoder.latent_space import PixelSpace, VideoSpace
from sora_jax.data.video_io import IMAGE_SUFFIXES, read_video, read_video_end
from sora_jax.eval.generate import Condition, Edit


def read_frames(
    path: str | Path, height: int, width: int, max_frames: int | None = None, *, from_end: bool = False
) -> np.ndarray:
    """uint8 ``[T, height, width, 3]`` of an image (T = 1) or a video file: its first ``max_frames``
    (all when None), or with ``from_end`` its last ``max_frames``, decoded alone (the rest of a long
    video is never held in memory). Frames are scaled to cover ``height x width`` and centre-cropped.

    Raises:
        ValueError: the file cannot be read as an image or video.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if from_end and max_frames is None:
        raise ValueError("from_end reads a video's last max_frames: give max_frames")
    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            frames = np.asarray(Image.open(path).convert("RGB"))[None]
        elif from_end:
            frames, _ = read_video_end(path, max_frames)
        else:
            frames, _ = read_video(path, max_frames=max_frames)
    except Exception as error:  # noqa: BLE001 - any decoder failure is a bad input file.
        raise ValueError(f"{path} cannot be read as an image or video: {error}") from error
    if not len(frames):
        raise ValueError(f"{path} holds no frames")
    return np.stack([fit_frame(frame, height, width) for frame in frames])


def fit_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> ``[height, width, 3]``: scaled to cover that size with its aspect ratio
    kept, then the centre cut out (squashing would make a round ball an egg the model never saw)."""
    return np.asarray(ImageOps.fit(Image.fromarray(frame), (width, height), Image.BOX))


@dataclasses.dataclass(frozen=True)
class ClipLayout:
    """The generated clip: ``frames x height x width`` in model units (latents in a latent run), its
    temporal patch, and the space given pixels are brought into. ``frame_level``: the run's
    ``conditioning.frame_level`` (an image is given as one frame, not a temporal group of copies)."""

    frames: int
    height: int
    width: int
    channels: int
    time_patch: int
    space: VideoSpace = dataclasses.field(default_factory=PixelSpace)
    frame_level: bool = False

    @property
    def groups(self) -> int:
        return -(-self.frames // self.time_patch)

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 video ``[T, H, W, 3]`` (video size) -> model units ``[T', h, w, C]``."""
        return self.space.to_model(pixels)

    def model_frames(self, pixel_frames: int) -> int:
        """How many model frames a piece of ``pixel_frames`` video frames gives."""
        return 1 + (pixel_frames - 1) // self.space.temporal_factor

    def condition(self, pieces: list[tuple[str, np.ndarray]]) -> Condition:
        """A :class:`Condition` from ``(where, pixels)`` pieces, ``where`` "start" or "end".

        A piece gives whole temporal groups: the first (or last) frame it gives fills the rest of
        its last group. With ``frame_level``, a piece of one model frame (an image) gives that frame
        alone, the first (or last) of the clip, and its group is generated around it, as the run's
        image_to_video and last_frame tasks trained it.

        Raises:
            ValueError: the pieces leave no group to generate, or overlap.
        """
        values = np.zeros((self.frames, self.height, self.width, self.channels), np.float32)
        groups = np.zeros(self.groups, bool)
        frames = np.zeros(self.frames, bool)
        pt = self.time_patch
        for where, pixels in pieces:
            model = self.to_model(pixels)[: self.frames]
            if self.frame_level and len(model) == 1 and pt > 1:
                frame = 0 if where == "start" else self.frames - 1
                if frames[frame]:
                    raise ValueError("the given images overlap: ask for more --frames")
                values[frame], frames[frame] = model[0], True
                continue
            count = -(-len(model) // pt)  # Whole groups; the edge frame fills the rest of one.
            fill = np.repeat(model[-1:] if where == "start" else model[:1], count * pt - len(model), 0)
            if where == "start":
                span, padded = slice(0, count), np.concatenate([model, fill])
                length = min(count * pt, self.frames)
                values[:length] = padded[:length]
            else:  # The piece's last frame is the clip's last frame.
                span, padded = slice(self.groups - count, self.groups), np.concatenate([fill, model])
                length = self.frames - span.start * pt
                values[span.start * pt :] = padded[len(padded) - length :]
            if groups[span].any():
                raise ValueError("the given images and videos overlap: ask for more --frames")
            groups[span] = True
        if groups.all():
            raise ValueError(f"the given frames fill all {self.frames} frames: nothing is left to generate")
        if (frames & np.repeat(groups, pt)[: self.frames]).any():
            raise ValueError("the given images and videos overlap: ask for more --frames")
        return Condition(values, groups, frames=frames if frames.any() else None)

    def whole_video(self, pixels: np.ndarray) -> Condition:
        """A :class:`Condition` giving every frame of the clip, from a video at least as long: what a
        run with sound makes the sound of (video-to-audio).

        Raises:
            ValueError: the video is shorter than the clip.
        """
        model = self.to_model(pixels)
        if len(model) < self.frames:
            raise ValueError(
                f"the video gives {len(model)} frames; the clip needs {self.frames}: ask for fewer --frames"
            )
        return Condition(model[: self.frames], np.ones(self.groups, bool))

    def sound_only(self, sound: np.ndarray) -> Condition:
        """A :class:`Condition` giving the clip's whole sound (float32 ``[samples, C]``) and none of
        its frames: audio-to-video."""
        values = np.zeros((self.frames, self.height, self.width, self.channels), np.float32)
        return Condition(values, np.zeros(self.groups, bool), sound=sound)

    def edit(self, pixels: np.ndarray, strength: float) -> Edit:
        """An :class:`Edit` of a video (at least as long as the clip)."""
        model = self.to_model(pixels)
        if len(model) < self.frames:
            raise ValueError(f"the video to edit gives {len(model)} frames; the clip needs {self.frames}")
        return Edit(model[: self.frames], strength)
