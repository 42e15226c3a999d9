"""Reading and writing video files with PyAV (FFmpeg).

Pixels crossing this module's boundary are ``uint8`` RGB, channels last: a clip is
``[T, H, W, 3]``, a frame ``[H, W, 3]``. Frame rates are frames/s, timestamps seconds.
Writing supports three containers, chosen by the path's suffix:

* ``.mp4``: H.264 (libx264, ``yuv420p``, CRF 18, tagged BT.709 limited range). 4:2:0 chroma
  needs even sizes, so odd heights/widths are padded by one row/column of edge replication and
  the file (and anything read back from it) has the padded, even size.
* ``.gif``: animated GIF with one global 256-colour palette built over all frames by FFmpeg's
  ``palettegen``/``paletteuse`` (ordered Bayer dithering); loops forever. GIF frame delays are
  whole centiseconds, so timing is rounded to 1/100 s and ``fps`` above 100 is rejected
  (browsers also slow delays under 2 cs down to 10 cs, so keep GIFs at <= 50 fps).
* ``.png``: a single still image (``T == 1``), lossless, any size.

Reading accepts anything FFmpeg demuxes and decodes, including still images (one frame), and
returns the first video stream. Orientation metadata (phone "rotate" side data) is not applied.
:func:`read_video` decodes a whole clip (or its first frames), :func:`read_video_end` only a clip's
last frames, and :func:`iter_frames` streams RGB frames;
:func:`open_video` streams decoded frames that are converted to RGB (and shrunk) only when asked,
so ingest, which keeps few frames of long or large videos, converts only those.

Audio crossing this module's boundary is float32 ``[samples, channels]`` in [-1, 1], channels 1
(mono) or 2 (stereo: left, right); sample ``n`` of a span starting at ``t`` s is at ``t + n /
sample_rate`` s. Times are on the clock of the file's video frames: 0 is the first video
frame's timestamp (the audio stream's own start in a file without video), so a clip's frames and
its sound line up whatever the container's start offsets. :func:`read_audio` decodes the first
audio stream (resampled to the rate and channel count asked: stereo is averaged to mono, mono
copied to both sides), :func:`read_audio_spans` several spans of it in one pass; ``.mp4`` files
written with ``audio`` get an AAC track, and :func:`write_wav` writes 16-bit PCM.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import math
import os
import secrets
import wave
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import IO

import av
import numpy as np
from av.container import InputContainer
from av.video.reformatter import ColorRange, Colorspace
from av.video.stream import VideoStream
from etils import epath

StrPath = str | os.PathLike

# Lower-case suffixes of still-image files, one tuple so that ingest and sampling inputs accept
# the same images. FFmpeg decodes each as a one-frame video (animated WebP it cannot decode).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_MP4_CRF = 18  # Visually near-lossless; lower values grow files with no visible gain.
_GIF_TIME_BASE = Fraction(1, 100)  # GIF frame delays are stored in centiseconds.
_MAX_FPS_DENOMINATOR = 1001  # fps is snapped to a fraction; NTSC's 30000/1001 stays exact.
_AUDIO_LAYOUTS = {1: "mono", 2: "stereo"}
# Rates FFmpeg's native AAC encoder takes (the MPEG-4 sampling frequency table).
_AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_AAC_BITS_PER_CHANNEL = 64_000  # Transparent for speech and impacts at 16-48 kHz.


class VideoDecodeError(ValueError):
    """Unreadable, corrupt or frameless video; args are ``(path, reason)`` so it pickles intact."""

    def __init__(self, path: StrPath, reason: str) -> None:
        super().__init__(os.fspath(path), reason)
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot decode video {self.path!r}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """First video stream's metadata from headers; ``num_frames`` is an estimate (files lie)."""

    width: int  # Decoded pixels.
    height: int
    fps: float  # Average frame rate; 0.0 if unknown or a still image.
    num_frames: int  # Container count, else round(duration * fps); 1 for a still; -1 if unknown.
    duration: float  # Seconds; 0.0 if unknown or a still image.
    codec: str  # FFmpeg decoder name: "h264", "gif", "png", ...

    @property
    def is_still(self) -> bool:
        """True for a still image, which :func:`probe_video` reports as 0.0 fps, 1 frame, 0.0 s."""
        return self.fps == 0.0 and self.num_frames == 1 and self.duration == 0.0


def write_video(
    path: StrPath,
    frames: np.ndarray,
    fps: float,
    *,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
) -> None:
    """Encodes ``frames`` (uint8 ``[T, H, W, 3]`` RGB) at ``fps`` frames/s to ``path``.

    The format follows the suffix (``.mp4``, ``.gif``, or ``.png`` for ``T == 1``; see the module
    docstring for codecs, odd-size padding and GIF timing). Parent directories are created. The
    file is encoded to a hidden temporary file in the same directory, fsynced, then renamed over
    ``path``, so ``path`` is either absent, its previous content, or the complete new file.
    ``path`` may also be a URL such as ``gs://bucket/run/x.mp4`` (through ``etils.epath``): the
    video is encoded in memory and uploaded as one object, which a bucket only shows once whole.

    ``audio`` (float ``[samples, C]`` or ``[samples]``, C 1 or 2, values clipped to [-1, 1]; only
    with ``.mp4``) adds an AAC track at ``sample_rate`` Hz, mono or stereo as the array, as long
    as the video: sample 0 plays with frame 0, and the track is cut or zero-padded at its end to
    ``round(T / fps * sample_rate)`` samples. The video stream is the same with or without it.

    Raises ValueError for a wrong dtype/shape, an empty clip, ``fps`` not finite or below 1/1001,
    an unknown suffix, several frames for ``.png``, or audio that is not finite, of another
    shape, with a suffix other than ``.mp4`` or at a rate AAC does not take; encoder failures
    propagate as raised.
    """
    url = os.fspath(path) if "://" in os.fspath(path) else None
    path = Path(os.fspath(path))
    suffix = path.suffix.lower()
    encode = _ENCODERS.get(suffix)
    if encode is None:
        raise ValueError(
            f"unsupported video suffix {suffix!r} for {url or path}; use one of {sorted(_ENCODERS)}"
        )
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must have shape [T, H, W, 3], T, H, W > 0; got {frames.shape}")
    if suffix == ".png" and frames.shape[0] != 1:
        raise ValueError(f".png holds a single frame, got T={frames.shape[0]}; use .mp4 or .gif")
    if not (math.isfinite(fps) and fps >= 1 / _MAX_FPS_DENOMINATOR):
        raise ValueError(f"fps must be finite and >= 1/{_MAX_FPS_DENOMINATOR}, got {fps}")
    rate = Fraction(float(fps)).limit_denominator(_MAX_FPS_DENOMINATOR)
    if audio is not None:
        if suffix != ".mp4":
            raise ValueError(f"{url or path}: audio can only be written into an .mp4, not {suffix}")
        if sample_rate not in _AAC_RATES:
            raise ValueError(f"{url or path}: AAC takes sample rates {_AAC_RATES}, not {sample_rate}")
        samples = round(frames.shape[0] / rate * sample_rate)
        track = _fitted(_checked_audio(audio, url or path), samples)
        encode = functools.partial(_encode_mp4, audio=(track, sample_rate))

    def write(f: IO[bytes]) -> None:
        encode(f, np.ascontiguousarray(frames), rate)

    _write_whole(url, path, write)


def write_sample(
    mp4: StrPath, frames: np.ndarray, fps: float, sound: np.ndarray | None = None, sample_rate: int = 16000
) -> list[str]:
    """A generated clip as files: ``mp4`` (with an AAC track of ``sound``, float ``[samples, C]``, when
    given), a ``.gif`` beside it, and with sound a ``.wav`` beside it too (the sound uncompressed).
    ``mp4`` may be a URL. Returns the paths written, the mp4 first."""
    mp4 = epath.Path(mp4)
    write_video(mp4, frames, fps, audio=sound, sample_rate=sample_rate)
    write_video(mp4.with_suffix(".gif"), frames, fps)
    written = [os.fspath(mp4), os.fspath(mp4.with_suffix(".gif"))]
    if sound is not None:
        write_wav(mp4.with_suffix(".wav"), sound, sample_rate)
        written.append(os.fspath(mp4.with_suffix(".wav")))
    return written


def write_wav(path: StrPath, audio: np.ndarray, sample_rate: int) -> None:
    """Writes ``audio`` (float ``[samples, C]`` or ``[samples]``, C 1 or 2, clipped to [-1, 1]) to
    ``path`` as a 16-bit PCM WAV file at ``sample_rate`` Hz.

    Written whole or not at all, to a local path or a URL, as :func:`write_video` writes. Raises
    ValueError naming ``path`` for audio that is not finite or of another shape, or a sample
    rate that is not a positive int.
    """
    url = os.fspath(path) if "://" in os.fspath(path) else None
    path = Path(os.fspath(path))
    if not (isinstance(sample_rate, int | np.integer) and 0 < sample_rate < 2**31):
        raise ValueError(f"{url or path}: sample_rate must be a positive int, got {sample_rate!r}")
    track = _checked_audio(audio, url or path)
    pcm = np.round(track * 32767).astype("<i2")

    def write(f: IO[bytes]) -> None:
        with wave.open(f, "wb") as wav:
            wav.setnchannels(track.shape[1])
            wav.setsampwidth(2)
            wav.setframerate(int(sample_rate))
            wav.writeframes(pcm.tobytes())

    _write_whole(url, path, write)


def _checked_audio(audio: np.ndarray, where: StrPath) -> np.ndarray:
    """``audio`` as float32 ``[samples, C]`` clipped to [-1, 1], after checking its shape."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.dtype.kind != "f" or audio.ndim != 2 or audio.shape[1] not in _AUDIO_LAYOUTS:
        raise ValueError(
            f"{where}: audio must be float [samples, 1 or 2 channels], got {audio.dtype} {audio.shape}"
        )
    if not np.isfinite(audio).all():
        raise ValueError(f"{where}: audio contains NaN or inf")
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _fitted(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` cut or zero-padded at its end to exactly ``samples`` samples."""
    if len(audio) >= samples:
        return audio[:samples]
    return np.pad(audio, ((0, samples - len(audio)), (0, 0)))


def _write_whole(url: str | None, path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Runs ``write`` into ``url`` (one upload) or into a temporary file renamed over ``path``."""
    if url is not None:
        from etils import epath  # Imported here: local files, what data workers write, need none of it.

        encoded = io.BytesIO()
        write(encoded)
        epath.Path(url).write_bytes(encoded.getvalue())
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # Dot-prefixed so globs like "*.mp4" over the directory never pick up a partial file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # "x" (O_EXCL) refuses to clobber, and unlike mkstemp honours the umask for permissions.
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _encode_mp4(
    f: IO[bytes], frames: np.ndarray, rate: Fraction, audio: tuple[np.ndarray, int] | None = None
) -> None:
    # ``audio``: ([samples, C] float32 already fitted to the video's duration, sample rate).
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(f, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(_MP4_CRF)})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        # Convert with BT.709 and say so in the bitstream: untagged files leave players guessing
        # (601 vs 709 by resolution), which visibly shifts saturated colours.
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # AVCOL_*_BT709
        cc.color_range = int(ColorRange.MPEG)
        sound = None
        if audio is not None:  # Every stream is added before the first packet writes the header.
            track, sample_rate = audio
            layout = _AUDIO_LAYOUTS[track.shape[1]]
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout, sound.bit_rate = layout, _AAC_BITS_PER_CHANNEL * track.shape[1]
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
            )
            frame.pts = i  # The encoder time base is 1/rate, so pts counts frames.
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            # One planar frame from time 0: the encoder cuts it into its own 1024-sample frames.
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(track.T), format="fltp", layout=layout)
            chunk.sample_rate, chunk.pts = sample_rate, 0
            container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))


def _encode_gif(f: IO[bytes], frames: np.ndarray, rate: Fraction) -> None:
    if rate > 1 / _GIF_TIME_BASE:
        raise ValueError(f"GIF delays are whole centiseconds; fps {float(rate)} > 100 unsupported")
    _, h, w, _ = frames.shape
    # palettegen emits one global palette at end of input; paletteuse then maps every frame.
    graph = av.filter.Graph()
    full = graph.add_buffer(width=w, height=h, format="rgb24", time_base=_GIF_TIME_BASE)
    coarse = graph.add_buffer(width=w, height=h, format="rgb24", time_base=_GIF_TIME_BASE)
    palettegen = graph.add("palettegen", stats_mode="full", reserve_transparent="0")
    # Ordered (Bayer) dither is temporally stable: error diffusion makes static areas crawl.
    paletteuse = graph.add("paletteuse", dither="bayer", bayer_scale="3")
    sink = graph.add("buffersink")
    full.link_to(paletteuse, 0, 0)
    coarse.link_to(palettegen)
    palettegen.link_to(paletteuse, 0, 1)
    paletteuse.link_to(sink)
    graph.configure()
    for i, rgb in enumerate(frames):
        # floor(x + 1/2) rather than round(): banker's rounding can give two frames equal pts.
        pts = math.floor(i / rate / _GIF_TIME_BASE + Fraction(1, 2))
        # palettegen is ~7x slower on millions of distinct colours (measured: noisy 64x256x256
        # clip); snapping its input to 5-bit bin centres caps them at 32768, moving entries <= 4.
        for ctx, image in ((full, rgb), (coarse, (rgb & 0xF8) | 0x04)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, _GIF_TIME_BASE
            ctx.push(frame)
    graph.push(None)  # End of input on both sources: palettegen now emits the palette.
    with av.open(f, "w", format="gif", options={"loop": "0"}) as container:
        stream = container.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "pal8"
        stream.codec_context.time_base = _GIF_TIME_BASE
        with contextlib.suppress(av.error.EOFError):  # The sink is drained.
            while True:
                container.mux(stream.encode(graph.pull()))
        container.mux(stream.encode(None))


def _encode_png(f: IO[bytes], frames: np.ndarray, rate: Fraction) -> None:
    del rate  # A still image has no timing.
    # Raw codec packets rather than the image2 muxer, which treats "%d" in names as a pattern.
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
    frame = av.VideoFrame.from_ndarray(frames[0], format="rgb24")
    for packet in codec.encode(frame) + codec.encode(None):
        f.write(bytes(packet))


_Encoder = Callable[[IO[bytes], np.ndarray, Fraction], None]
_ENCODERS: dict[str, _Encoder] = {".mp4": _encode_mp4, ".gif": _encode_gif, ".png": _encode_png}


@contextlib.contextmanager
def _open_video(path: StrPath) -> Iterator[tuple[InputContainer, VideoStream]]:
    # FFmpeg errors inside the block become VideoDecodeError, except a missing file, which
    # stays a FileNotFoundError so callers can tell "absent" from "broken".
    try:
        # "file:" stops FFmpeg reading "name:with:colons" as a protocol prefix.
        with av.open("file:" + os.fspath(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            yield container, stream
    except FileNotFoundError:
        raise
    except av.FFmpegError as e:
        raise VideoDecodeError(path, e.strerror or str(e)) from e


def _is_still_image(container: InputContainer) -> bool:
    # Image demuxers ("png_pipe", "jpeg_pipe", "image2", ...) report a made-up 25 fps.
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def _fps(container: InputContainer, stream: VideoStream) -> float:
    rate = None if _is_still_image(container) else stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def _decoded(container: InputContainer, stream: VideoStream) -> Iterator[tuple[float, av.VideoFrame]]:
    # Every frame the decoder gives from the container's position on, with its time in seconds.
    t0, tb = stream.start_time or 0, stream.time_base
    fps = _fps(container, stream)
    for i, frame in enumerate(container.decode(stream)):
        t = float((frame.pts - t0) * tb) if frame.pts is not None else i / (fps or 1.0)
        yield t, frame


def _seek(container: InputContainer, stream: VideoStream, start: float) -> bool:
    # To the keyframe at or before ``start`` seconds; False (position unchanged) if the input
    # cannot seek.
    try:
        container.seek((stream.start_time or 0) + int(start / stream.time_base), stream=stream)
    except av.FFmpegError:
        return False
    return True


def _decode(container: InputContainer, stream: VideoStream, start: float) -> Iterator[tuple]:
    if start > 0:
        # Lands on the keyframe at or before ``start``; frames before it are skipped below. An
        # unseekable input is decoded from the beginning and skipped the same way.
        _seek(container, stream, start)
    for t, frame in _decoded(container, stream):
        if t >= start - 1e-6:  # Tolerance for float seconds vs exact rational pts.
            yield t, frame


def _info(container: InputContainer, stream: VideoStream) -> VideoInfo:
    cc = stream.codec_context
    if _is_still_image(container):
        return VideoInfo(cc.width, cc.height, 0.0, 1, 0.0, cc.name)
    fps = _fps(container, stream)
    if stream.duration:
        duration = float(stream.duration * stream.time_base)
    else:  # Container-level duration is in AV_TIME_BASE units (microseconds).
        duration = (container.duration or 0) / av.time_base
    estimate = round(duration * fps) if duration > 0 and fps > 0 else -1
    num_frames = stream.frames if stream.frames > 0 else estimate
    return VideoInfo(cc.width, cc.height, fps, num_frames, duration, cc.name)


class DecodedFrame:
    """One decoded frame, kept in the decoder's pixel format until :meth:`to_rgb` is called.

    ``time`` is seconds from the start of the video stream; ``height`` and ``width`` the decoded
    size, which may differ between frames of one stream. Converting lazily lets a caller that
    keeps few of many frames (frame-rate resampling) pay for few conversions, and shrink in the
    same pass. A frame stays usable after its :func:`open_video` block has closed the file.
    """

    __slots__ = ("_frame", "_path", "time")

    def __init__(self, time: float, frame: av.VideoFrame, path: str) -> None:
        """Internal: frames come from :meth:`VideoReader.frames`."""
        self.time = time
        self._frame = frame
        self._path = path

    @property
    def height(self) -> int:
        """Decoded rows."""
        return self._frame.height

    @property
    def width(self) -> int:
        """Decoded columns."""
        return self._frame.width

    def to_rgb(self, height: int | None = None, width: int | None = None) -> np.ndarray:
        """The frame as uint8 ``[H, W, 3]`` RGB.

        Without a size, ``H, W`` is the decoded size. With both ``height`` and ``width`` the frame
        is resampled to that size by area averaging (FFmpeg swscale ``AREA``, in the same pass as
        the YUV->RGB conversion), which suits shrinking; the aspect ratio is the caller's concern.

        Raises ValueError if only one of ``height``/``width`` is given or either is below 1, and
        VideoDecodeError if FFmpeg cannot convert the frame.
        """
        if (height is None) != (width is None):
            raise ValueError(f"give both height and width or neither, got {height=}, {width=}")
        size: dict[str, int | str] = {}
        if height is not None and width is not None:
            if height < 1 or width < 1:
                raise ValueError(f"height and width must be >= 1, got {height}x{width}")
            size = {"height": height, "width": width, "interpolation": "AREA"}
        try:
            return self._frame.to_ndarray(format="rgb24", **size)
        except av.FFmpegError as e:
            raise VideoDecodeError(self._path, e.strerror or str(e)) from e


class VideoReader:
    """An open video file: its first video stream's metadata and decoded frames.

    Made by :func:`open_video` and usable only inside its ``with`` block.
    """

    __slots__ = ("_container", "_stream", "path")

    def __init__(self, path: StrPath, container: InputContainer, stream: VideoStream) -> None:
        """Internal: use :func:`open_video`."""
        self.path = os.fspath(path)
        self._container = container
        self._stream = stream

    @property
    def info(self) -> VideoInfo:
        """The stream's metadata from the headers, as :func:`probe_video` reports it."""
        return _info(self._container, self._stream)

    def frames(self, start: float = 0.0) -> Iterator[DecodedFrame]:
        """Yields the decoded frames with ``time >= start`` seconds, in presentation order.

        ``start > 0`` seeks to the preceding keyframe rather than decoding from zero. Frames are
        decoded one at a time, so long videos are never held in memory. The ``i``-th frame of a
        file without timestamps gets ``time = i / fps`` (``i`` s if the rate is unknown).
        Iterate once per :func:`open_video`: the decoder's position is shared, so a second
        iteration continues where the first stopped.
        """
        for t, frame in _decode(self._container, self._stream, start):
            yield DecodedFrame(t, frame, self.path)


@contextlib.contextmanager
def open_video(path: StrPath) -> Iterator[VideoReader]:
    """Opens ``path`` for decoding its first video stream: ``with open_video(p) as video: ...``.

    Inside the block, any FFmpeg failure (demuxing, decoding, converting) is raised as
    VideoDecodeError; other exceptions pass through unchanged. The file is closed when the block
    exits. Raises FileNotFoundError if ``path`` does not exist and VideoDecodeError if it cannot
    be opened or has no video stream.
    """
    with _open_video(path) as (container, stream):
        yield VideoReader(path, container, stream)


def iter_frames(path: StrPath, *, start: float = 0.0) -> Iterator[tuple[float, np.ndarray]]:
    """Yields ``(timestamp, frame)`` for each decoded frame with ``timestamp >= start``.

    ``timestamp`` is seconds from the start of the video stream, ``frame`` uint8 ``[H, W, 3]`` RGB,
    in presentation order, one at a time, so long videos are never held in memory. ``start > 0``
    seeks to the preceding keyframe rather than decoding from zero. The file stays open until
    the iterator is exhausted or closed.

    Raises VideoDecodeError for an unreadable or corrupt file (possibly after some frames were
    yielded) and FileNotFoundError if ``path`` does not exist.
    """
    with open_video(path) as video:
        for frame in video.frames(start):
            yield frame.time, frame.to_rgb()


def read_video(path: StrPath, *, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decodes ``path`` to ``(frames, fps)``.

    ``frames`` is uint8 ``[T, H, W, 3]`` RGB with ``T <= max_frames`` (all frames if None); a
    still image gives ``T == 1``. If the stream changes resolution midway, later frames are
    resized to the first frame's size. ``fps`` is the average frame rate (falling back to the
    stream's guessed rate), or 0.0 when unknown or for still images; callers pick a default.

    Raises VideoDecodeError for an unreadable or corrupt file or zero decodable frames,
    FileNotFoundError if ``path`` does not exist, and ValueError if ``max_frames < 1``.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    frames: list[np.ndarray] = []
    with _open_video(path) as (container, stream):
        fps = _fps(container, stream)
        for _, frame in _decode(container, stream, 0.0):
            size = {"height": frames[0].shape[0], "width": frames[0].shape[1]} if frames else {}
            frames.append(frame.to_ndarray(format="rgb24", **size))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise VideoDecodeError(path, "no decodable video frames")
    return np.stack(frames), fps


def read_video_end(path: StrPath, count: int) -> tuple[np.ndarray, float]:
    """Decodes the last ``count`` frames of ``path`` (all if it has fewer) to ``(frames, fps)``.

    ``frames`` is uint8 ``[T, H, W, 3]`` RGB, ``T <= count``: the frames :func:`read_video` would
    end with, at the size of the first one returned; ``fps`` as :func:`read_video` gives it. Only
    the end is decoded: it seeks to the keyframe before where the last ``count`` frames begin (by
    the stream's duration and frame rate) and decodes to the end. If that gives fewer than
    ``count`` frames (headers that misstate the duration, an unseekable file), it starts further
    back, up to the whole file. At most ``count`` decoded frames are held at once, however long
    the video.

    Raises VideoDecodeError for an unreadable or corrupt file or zero decodable frames,
    FileNotFoundError if ``path`` does not exist, and ValueError if ``count < 1``.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    with _open_video(path) as (container, stream):
        duration, fps = _info(container, stream).duration, _fps(container, stream)
    # Seconds before the end where the wanted frames begin, with one frame to spare for rounding.
    lead = (count + 1) / fps if fps > 0 and duration > 0 else math.inf
    while True:
        start = duration - lead
        with _open_video(path) as (container, stream):
            if start > 0 and not _seek(container, stream, start):
                start = 0.0  # An unseekable input: decoded from its beginning.
            kept: collections.deque[av.VideoFrame] = collections.deque(maxlen=count)
            kept.extend(frame for _, frame in _decoded(container, stream))
        if len(kept) == count or start <= 0:
            break
        lead *= 4  # The seek landed after the wanted frames began: start further back.
    if not kept:
        raise VideoDecodeError(path, "no decodable video frames")
    size = {"height": kept[0].height, "width": kept[0].width}
    try:
        return np.stack([frame.to_ndarray(format="rgb24", **size) for frame in kept]), fps
    except av.FFmpegError as e:
        raise VideoDecodeError(path, e.strerror or str(e)) from e


def read_audio(
    path: StrPath,
    *,
    sample_rate: int,
    channels: int,
    start: float = 0.0,
    duration: float | None = None,
) -> np.ndarray | None:
    """The first audio stream of ``path`` from ``start`` s, or None if the file has no audio stream.

    float32 ``[samples, channels]`` at ``sample_rate`` Hz (FFmpeg's resampler; see the module
    docstring for the clock and the channel mixing). With ``duration``, exactly
    ``round(duration * sample_rate)`` samples, zeros where the stream has no sound (before it
    starts, after it ends); without, up to the stream's end. ``start > 0`` seeks near it rather
    than decoding from zero.

    Raises VideoDecodeError for an unreadable or corrupt file, FileNotFoundError if ``path`` does
    not exist, and ValueError for a rate, channel count, start or duration out of range.
    """
    spans = read_audio_spans(
        path, [(start, duration)], sample_rate=sample_rate, channels=channels, seek=start > 0
    )
    if spans is None:
        return None
    try:
        return next(spans)
    finally:
        spans.close()  # Closes the file now rather than when the generator is collected.


def read_audio_spans(
    path: StrPath,
    spans: Iterable[tuple[float, float | None]],
    *,
    sample_rate: int,
    channels: int,
    seek: bool = False,
) -> Iterator[np.ndarray] | None:
    """The audio of each ``(start, duration)`` span of ``path``, in one pass over its first audio
    stream, or None (before decoding anything) if the file has no audio stream.

    Yields what :func:`read_audio` gives for each span, in order. Starts (s, on the module
    docstring's clock) must not decrease; only the last span may have ``duration`` None (up to
    the stream's end). At most the sound from the current span's start on is held, so a long
    file cut into clips needs the memory of one clip. ``seek`` seeks to the first span's start
    instead of decoding from the beginning. The file stays open until the iterator is exhausted
    or closed.

    Raises as :func:`read_audio` does (decoding errors when iterating).
    """
    if not (isinstance(sample_rate, int | np.integer) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if channels not in _AUDIO_LAYOUTS:
        raise ValueError(f"channels must be 1 (mono) or 2 (stereo), got {channels!r}")
    spans = list(spans)
    for (start, duration), (next_start, _) in zip(spans, spans[1:] + [(math.inf, None)], strict=True):
        if not (math.isfinite(start) and next_start >= start):
            raise ValueError(f"span starts must be finite and not decrease; got {start}")
        if duration is None and next_start != math.inf:
            raise ValueError("only the last span may run to the end of the stream (duration None)")
        if duration is not None and not (math.isfinite(duration) and duration >= 0):
            raise ValueError(f"span durations must be finite and >= 0, got {duration}")
    try:
        container = av.open("file:" + os.fspath(path))
    except FileNotFoundError:
        raise
    except av.FFmpegError as e:
        raise VideoDecodeError(path, e.strerror or str(e)) from e
    if not container.streams.audio:
        container.close()
        return None
    return _cut_spans(path, container, spans, sample_rate, channels, seek)


def _cut_spans(
    path: StrPath,
    container: InputContainer,
    spans: list[tuple[float, float | None]],
    sample_rate: int,
    channels: int,
    seek: bool,
) -> Iterator[np.ndarray]:
    stream = container.streams.audio[0]
    # The video's clock: 0 at its first frame's timestamp, as VideoReader.frames gives times.
    clock = container.streams.video[0] if container.streams.video else stream
    origin = float((clock.start_time or 0) * clock.time_base) if clock.time_base else 0.0
    try:
        if seek and spans and spans[0][0] > 0:
            # The packet at or before the start; decoded sound carries its own time from there.
            target = origin + spans[0][0]
            with contextlib.suppress(av.FFmpegError):  # Unseekable: decoded from the beginning.
                container.seek(int(target / stream.time_base), stream=stream)
        chunks = _resampled(container, stream, sample_rate, channels)
        first = next(chunks, None)
        # Where the decoded sound begins on the clock, counted in output samples.
        at = round((first[0] - origin) * sample_rate) if first and first[0] is not None else 0
        held: list[np.ndarray] = [first[1]] if first else []
        held_len = len(held[0]) if held else 0
        for start, duration in spans:
            begin = round(start * sample_rate)
            end = None if duration is None else begin + round(duration * sample_rate)
            while end is None or at + held_len < end:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                held.append(chunk[1])
                held_len += len(chunk[1])
            sound = np.concatenate(held) if held else np.zeros((0, channels), np.float32)
            if end is None:
                end = max(begin, at + held_len)
            span = np.zeros((end - begin, channels), np.float32)
            lo, hi = max(begin, at), min(end, at + held_len)
            if hi > lo:
                span[lo - begin : hi - begin] = sound[lo - at : hi - at]
            yield span
            # Later spans start here or after: what lies before is not needed again.
            drop = max(0, min(begin, at + held_len) - at)
            held, held_len, at = [sound[drop:]], held_len - drop, at + drop
    except av.FFmpegError as e:
        raise VideoDecodeError(path, f"audio: {e.strerror or e}") from e
    finally:
        container.close()


def _resampled(
    container: InputContainer, stream: av.audio.stream.AudioStream, sample_rate: int, channels: int
) -> Iterator[tuple[float | None, np.ndarray]]:
    """float32 ``[n, channels]`` chunks of the decoded, resampled stream, each with the time (s)
    of the stream's first decoded sample (None if it has no timestamp): the chunks run on from
    there without gaps (gaps in the stream are not kept), whatever the resampler holds back."""
    # FFmpeg resamples to the source's own width (surround folded to stereo by its standard
    # downmix); channels are then mixed here, as the module docstring says, because FFmpeg's
    # stereo-to-mono keeps power ((L + R) / sqrt 2), which can pass full scale.
    width = 1 if stream.codec_context.channels == 1 else 2
    resampler = av.AudioResampler(format="flt", layout=_AUDIO_LAYOUTS[width], rate=sample_rate)

    def mixed(out: av.AudioFrame) -> np.ndarray:
        sound = out.to_ndarray().reshape(-1, width)
        if width == channels:
            return sound
        return np.repeat(sound, 2, axis=1) if channels == 2 else sound.mean(1, keepdims=True)

    first: list[float | None] = []
    for frame in container.decode(stream):
        if not first:
            first.append(float(frame.pts * frame.time_base) if frame.pts is not None else None)
        for out in resampler.resample(frame):
            yield first[0], mixed(out)
    for out in resampler.resample(None):
        yield first[0] if first else None, mixed(out)


def probe_video(path: StrPath) -> VideoInfo:
    """Reads ``path``'s first video stream metadata (container headers only, no frame decode).

    Raises VideoDecodeError for an unreadable file or one without a video stream, and
    FileNotFoundError if ``path`` does not exist.
    """
    with open_video(path) as video:
        return video.info
