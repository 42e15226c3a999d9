"""The training input: a grain pipeline from clip sources to packed batches of one static shape.

    sources (world, stores) ── shuffle by (seed, epoch), mix by weight ── one slice per batch row
      ── PackedBatches: choose each clip's shape to fit its row, load, patchify, pack ──
      ── worker processes with prefetch ── numpy batches [rows, L, ...]

A clip's duration and resolution are chosen when it is placed: its shape is drawn at random from
what its source offers, and a clip that does not fit what is left of the row (or would leave a gap
no clip can fill) takes instead the largest shape that does. Rows end nearly full whatever the mix
of shapes, and the train step compiles once.

With sound (``audio.enabled``), a video clip's audio becomes tokens right after its video tokens,
counted in its share of the row: a shape fits with the audio tokens it would have at the slowest
frame rate its source may give the clip (its duration in seconds, hence its sound, is then
longest), so what is loaded always fits.

Row ``i`` of every global batch of ``R`` rows is packed from its own slice of the request stream
(every ``R``-th request, from the ``i``-th), so slices are disjoint and together cover the data. A
process packs only the rows its devices hold: the global batch is the same whether one process
or many build it. The iterator's state (grain's ``get_state``) restores the exact sequence of
batches that would have come next.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags as absl_flags

from sora_jax.audio.codec import AudioCodec, audio_token_times, clip_samples, codec_from_config
from sora_jax.data.clip_store import AUTOENCODER_KEY, ClipStore
from sora_jax.data.packing import PackedClip, pack_rows, token_widths
from sora_jax.data.patches import grid_size, patchify
from sora_jax.data.shards import ShardedClips, open_clips
from sora_jax.data.sources import LatentStoreSource, LoadedClip, StoreSource, WorldSource
from sora_jax.data.tokenizer import WordTokenizer
from sora_jax.diffusion.conditioning import draw_task, given_frame_bits, given_groups, given_tokens, only_text
from sora_jax.errors import ConfigError
from sora_jax.model.text import frozen_text_dim


def pixels_to_model(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` pixels to float32 in [-1, 1], the scale the model is trained on."""
    return frames.astype(np.float32) / 127.5 - 1.0


def model_to_pixels(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pixels_to_model`, clipping generated values into the uint8 range."""
    return np.clip(np.round((np.asarray(values) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def caption_states(loaded: LoadedClip, dropped: bool, dim: int, max_tokens: int) -> np.ndarray:
    """The caption states a clip trains with: its stored embedding's first ``max_tokens`` rows, or,
    for a dropped caption, one zero row (the null caption that guidance samples against)."""
    if dropped:
        return np.zeros((1, dim), np.float32)
    if loaded.caption_embedding is None:
        raise ValueError("model.text_encoder is a frozen encoder but data.store holds no caption embeddings")
    if loaded.caption_embedding.shape[1] != dim:
        raise ValueError(
            f"data.store's caption embeddings are {loaded.caption_embedding.shape[1]} wide; "
            f"model.text_encoder's states are {dim}"
        )
    return loaded.caption_embedding[:max_tokens]


@dataclasses.dataclass(frozen=True)
class ClipRequest:
    """One clip of the stream: ``index`` of source ``source``; ``position`` seeds its randomness."""

    source: int
    index: int
    position: int


def make_sources(config: ml_collections.ConfigDict) -> tuple[list, list[float]]:
    """The configured sources and their mixing weights."""
    data, patch, audio = config.data, tuple(config.model.patch_size), config.audio
    if not data.store:
        return [WorldSource(config.seed, data, patch, audio=audio)], [1.0]
    opened = open_store(data.store)
    check_store(config, opened)
    if opened.dtype != np.uint8:
        return [LatentStoreSource(opened, data, patch, config.model.channels, audio=audio)], [1.0]
    store = StoreSource(opened, data, patch, audio=audio)
    if data.store_weight >= 1.0:
        return [store], [1.0]
    world = WorldSource(config.seed, data, patch, audio=audio)
    return [store, world], [data.store_weight, 1 - data.store_weight]


def open_store(path: str) -> ClipStore | ShardedClips:
    """The clips ``data.store`` names: a clip store, or the shards written so far of a sharded
    dataset (see :func:`~sora_jax.data.shards.open_clips`).

    Raises:
        ConfigError: naming ``data.store``, when ``path`` holds neither, or no clips.
    """
    try:
        store = open_clips(path)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"config key 'data.store': {error}") from None
    if not len(store):
        raise ConfigError(f"config key 'data.store': the clip store at {path!r} holds no clips")
    return store


def check_store(config: ml_collections.ConfigDict, store: ClipStore | ShardedClips) -> None:
    """Raises ValueError, naming the config key, when ``store`` cannot feed the configured model."""
    m, data = config.model, config.data
    made_by = store.extra.get(AUTOENCODER_KEY)
    if store.dtype == np.uint8 and m.autoencoder:
        raise ValueError(f"model.autoencoder is set but data.store {data.store} holds pixels, not latents")
    if store.dtype != np.uint8:
        if not m.autoencoder:
            raise ValueError(
                f"data.store {data.store} holds latents of autoencoder {made_by}: set model.autoencoder "
                "to that run so samples can be decoded"
            )
        if made_by and made_by.get("name") != Path(m.autoencoder.rstrip("/")).name:
            raise ValueError(f"data.store {data.store} holds latents of {made_by}, not of {m.autoencoder}")
        if data.store_weight < 1.0:  # The world renders pixels.
            raise ValueError(f"data.store {data.store} holds latents; physics-world pixels cannot mix in")
    if m.text_encoder != "learned":
        wanted = Path(m.text_encoder.rstrip("/")).name
        if not store.caption_dim:
            raise ValueError(
                f"model.text_encoder is {wanted} but data.store {data.store} has no caption embeddings"
            )
        if store.caption_encoder.get("name") != wanted:
            raise ValueError(
                f"data.store {data.store} holds caption embeddings of {store.caption_encoder}, "
                f"not of model.text_encoder {wanted}"
            )
        if data.store_weight < 1.0:  # World clips have no stored caption states.
            raise ValueError("a frozen model.text_encoder needs data.store_weight = 1")


def request_stream(
    config: ml_collections.ConfigDict, sources: Sequence, weights: Sequence[float]
) -> grain.MapDataset:
    """Clip requests, each source reshuffled every epoch by (seed, epoch), mixed by weight."""
    streams = []
    for number, source in enumerate(sources):
        indices = grain.MapDataset.range(len(source))
        if not isinstance(source, WorldSource):  # Procedural clips need no shuffling.
            indices = indices.shuffle(seed=config.seed + number)
        streams.append(indices.repeat().map(lambda index, n=number: (n, int(index))))
    mixed = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, list(weights))
    return mixed.map_with_index(lambda position, item: ClipRequest(item[0], item[1], position))


class PackedBatches(grain.IterDataset):
    """Packs clip requests into batches of the packed layout: row ``i`` from ``parents[i]``."""

    def __init__(
        self,
        parents: Sequence[grain.IterDataset],
        config: ml_collections.ConfigDict,
        sources: Sequence | None = None,
    ) -> None:
        super().__init__(list(parents))
        self.config = config
        self.sources = sources

    def __iter__(self) -> _PackedBatchIterator:
        sources = self.sources if self.sources is not None else make_sources(self.config)[0]
        return _PackedBatchIterator([parent.__iter__() for parent in self._parents], self.config, sources)


@dataclasses.dataclass
class _RowRequests:
    """One row's request iterator. A request pulled that did not fit its row opens the next one;
    the iterator's state from before it was pulled is what a checkpoint records."""

    requests: grain.DatasetIterator
    pending: ClipRequest | None = None
    state_before_pending: dict[str, Any] | None = None

    def next(self) -> ClipRequest:
        if self.pending is not None:
            request, self.pending = self.pending, None
            return request
        self.state_before_pending = self.requests.get_state()
        return next(self.requests)

    def get_state(self) -> dict[str, Any]:
        return self.state_before_pending if self.pending is not None else self.requests.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.requests.set_state(state)
        self.pending = self.state_before_pending = None


class _PackedBatchIterator(grain.DatasetIterator):
    def __init__(
        self, parents: list[grain.DatasetIterator], config: ml_collections.ConfigDict, sources: Sequence
    ) -> None:
        super().__init__(parents)
        self.config, self.data, self.sources = config, config.data, sources
        self.patch = tuple(config.model.patch_size)
        self.patch_dim = max(token_widths(config))
        self.codec = codec_from_config(config.audio) if config.audio.enabled else None
        self.tokenizer = WordTokenizer(config.model.text_vocab_size)
        self.text_dim = frozen_text_dim(config.model)
        self.rows = [_RowRequests(parent) for parent in parents]

    def __next__(self) -> dict[str, np.ndarray]:
        return pack_rows(
            [self._fill_row(row) for row in self.rows],
            seq_len=self.data.seq_len,
            patch_dim=self.patch_dim,
            max_clips=self.data.max_clips_per_row,
            text_len=self.data.text_len,
            text_dim=self.text_dim,
            audio=self.codec is not None,
            frame_level=self.config.conditioning.frame_level,
        )

    def get_state(self) -> dict[str, Any]:
        return {"rows": [row.get_state() for row in self.rows]}

    def set_state(self, state: dict[str, Any]) -> None:
        if len(state["rows"]) != len(self.rows):
            raise ValueError(f"input state has {len(state['rows'])} rows; this stream has {len(self.rows)}")
        for row, row_state in zip(self.rows, state["rows"], strict=True):
            row.set_state(row_state)

    def _fill_row(self, row: _RowRequests) -> list[PackedClip]:
        d = self.data
        clips: list[PackedClip] = []
        tokens_left, text_left = d.seq_len, d.text_len
        while len(clips) < d.max_clips_per_row and text_left >= 1:
            request = row.next()
            clip = self._place(request, tokens_left, text_left)
            if clip is None:  # Opens the next row instead; the state from before its pull stands.
                row.pending = request
                break
            clips.append(clip)
            tokens_left -= clip.num_tokens
            text_left -= len(clip.text_tokens)
        return clips

    def _place(self, request: ClipRequest, budget: int, text_left: int) -> PackedClip | None:
        """Load ``request`` at a shape of at most ``budget`` tokens; None if none fits."""
        d, source = self.data, self.sources[request.source]
        rng = np.random.default_rng([self.config.seed, request.position])
        options = source.shapes(request.index)
        tokens = options.tokens(self.patch)  # [F, Z]
        if self.codec is not None:  # With the most audio tokens the clip can have at each duration.
            slowest = self._slowest_fps(source, request.index)
            sound = [_audio_token_count(self.codec, int(f), slowest) for f in options.frames]
            tokens = tokens + np.asarray(sound, np.int64)[:, None]
        # Durations outside data.frames are never chosen, except one frame: an image.
        allowed = (options.frames == 1) | (options.frames >= d.frames[0])
        videos = np.flatnonzero(allowed & (options.frames > 1))
        frame_row = 0 if rng.random() < d.image_fraction or not len(videos) else int(rng.choice(videos))
        size_col = int(rng.integers(len(options.sizes)))
        wanted = tokens[frame_row, size_col]
        gap = budget - tokens
        # A shape fits if it leaves either no gap or one another clip can still fill.
        fits = ((gap == 0) | (gap >= self._smallest_clip)) & allowed[:, None]
        if not fits[frame_row, size_col]:
            candidates = fits if fits.any() else (gap >= 0) & allowed[:, None]
            if not candidates.any():
                return None
            # The fitting shape nearest in size to the drawn one.
            score = np.where(candidates, -np.abs(tokens - wanted), np.iinfo(np.int64).min)
            frame_row, size_col = np.unravel_index(int(np.argmax(score)), score.shape)
        frames = int(options.frames[frame_row])
        height, width = (int(v) for v in options.sizes[size_col])
        loaded = source.load(request.index, frames, height, width, rng)
        dropped = rng.random() < d.caption_dropout
        text = self.tokenizer.encode("" if dropped else loaded.caption, d.max_caption_tokens)
        embedding = None
        if self.text_dim:  # A frozen encoder's stored states replace the word tokens.
            embedding = caption_states(loaded, dropped, self.text_dim, d.max_caption_tokens)
            text = np.zeros(len(embedding), np.int32)
        if len(text) > text_left:  # Its whole caption opens the next row rather than lose words here.
            return None
        values = loaded.frames if loaded.frames.dtype != np.uint8 else pixels_to_model(loaded.frames)
        patches, positions = patchify(values, self.patch)
        grid = grid_size(frames, height, width, self.patch)
        audio_patches, audio_times = self._sound(loaded, frames, budget - len(patches))
        cond_mask = audio_cond_mask = given_frames = None
        conditioning = self.config.conditioning
        if not only_text(conditioning):  # Drawn last: earlier draws stay as they were.
            task = draw_task(conditioning, rng)
            given = given_groups(task, grid[0], rng, conditioning.random_rate)
            cond_mask, audio_cond_mask = given_tokens(task, given, positions, audio_times, self.patch[0])
            if conditioning.frame_level and given.any():  # The one frame, inside its group.
                single = given_frame_bits(task, frames, positions, self.patch[0])
                if single is not None:
                    cond_mask, given_frames = single
        return PackedClip(
            patches=patches,
            positions=positions,
            grid=grid,
            cond_mask=cond_mask,
            frames=frames,
            fps=loaded.fps,
            text_tokens=text,
            text_embedding=embedding,
            audio_patches=audio_patches,
            audio_times=audio_times,
            audio_cond_mask=audio_cond_mask,
            given_frames=given_frames,
        )

    def _sound(
        self, loaded: LoadedClip, frames: int, budget: int
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The audio tokens ``[Na, P_a]`` of a loaded clip and their times ``[Na]``, or (None, None)
        without sound: audio off, an image, or a clip its source has no audio for."""
        if self.codec is None or frames < 2 or loaded.audio is None:
            return None, None
        codec = self.codec
        samples = clip_samples(frames, loaded.fps, codec.sample_rate)
        if loaded.audio.shape != (samples, codec.channels):
            raise ValueError(
                f"a source gave audio {loaded.audio.shape} for {frames} frames at {loaded.fps} fps; "
                f"expected [{samples}, {codec.channels}]"
            )
        tokens = codec.encode(loaded.audio)
        if len(tokens) > budget:  # Only a source giving a clip a rate below its slowest can do this.
            raise ValueError(f"{len(tokens)} audio tokens at {loaded.fps} fps overflow the row")
        times = audio_token_times(
            len(tokens), codec.token_samples, codec.sample_rate, loaded.fps, self.patch[0]
        )
        return tokens, times

    def _slowest_fps(self, source: Any, index: int) -> float:
        """The lowest frame rate ``source`` may give its clip ``index``: a world clip's rate is drawn
        from ``data.fps`` as it loads, a stored clip keeps its own."""
        if isinstance(source, WorldSource):
            return float(self.data.fps[0])
        return float(source.record(index).fps or 1.0)  # As StoreSource.load gives it.

    @functools.cached_property
    def _smallest_clip(self) -> int:
        """Tokens of the smallest clip any source offers: a gap below it stays padding."""
        _, ph, pw = self.patch
        return (-(-self.data.side[0] // ph)) * (-(-self.data.side[0] // pw))


def batch_stream(
    config: ml_collections.ConfigDict,
    rows: int,
    first_row: int = 0,
    total_rows: int | None = None,
) -> grain.DatasetIterator:
    """Rows ``first_row .. first_row + rows - 1`` of every global batch of ``total_rows`` rows
    (default: all ``rows``), endlessly; ``get_state``/``set_state`` resume it.

    Batches are built ``data.prefetch`` ahead in a background thread, or with ``data.workers > 0``
    in that many worker processes (each packs every ``workers``-th batch from its share of every
    row's requests; the order is fixed either way).
    """
    total_rows = rows if total_rows is None else total_rows
    if not 0 <= first_row <= first_row + rows <= total_rows:
        raise ValueError(f"rows {first_row}..{first_row + rows - 1} are not rows of a {total_rows}-row batch")
    sources, weights = make_sources(config)
    requests = request_stream(config, sources, weights)
    read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    row_requests = [
        requests[row::total_rows].to_iter_dataset(read) for row in range(first_row, first_row + rows)
    ]
    if config.data.workers > 0:
        if not absl_flags.FLAGS.is_parsed():  # grain's workers read absl flags; take the defaults.
            absl_flags.FLAGS.mark_as_parsed()
        batches = PackedBatches(row_requests, config).mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.data.workers, per_worker_buffer_size=config.data.prefetch
            )
        )
    else:
        batches = grain.experimental.ThreadPrefetchIterDataset(
            PackedBatches(row_requests, config, sources), prefetch_buffer_size=config.data.prefetch
        )
    return iter(batches)


def clip_tokens(frames: int, height: int, width: int, patch: tuple[int, int, int]) -> int:
    """Tokens of a ``frames x height x width`` clip cut into ``patch`` spacetime patches."""
    pt, ph, pw = patch
    return math.ceil(frames / pt) * (height // ph) * (width // pw)


def audio_tokens(frames: int, fps: float, audio: ml_collections.ConfigDict) -> int:
    """Audio tokens of a clip of ``frames`` frames at ``fps`` (beside its :func:`clip_tokens`): its
    ``clip_samples`` cut into the tokens of the ``audio`` section's codec; 0 for an image (one frame)
    or with ``audio.enabled`` off."""
    if not audio.enabled:
        return 0
    return _audio_token_count(codec_from_config(audio), frames, fps)


def _audio_token_count(codec: AudioCodec, frames: int, fps: float) -> int:
    return 0 if frames < 2 else codec.num_tokens(clip_samples(frames, fps, codec.sample_rate))


def validate_packing_section(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first ``data.*`` key that cannot make packed rows for the
    model's patches, or a ``train.sample_*`` key whose clip does not fit a row."""
    d, t, patch = config.data, config.train, tuple(config.model.patch_size)
    _, ph, pw = patch

    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"config key {key!r}: {problem}")

    for key in ("seq_len", "max_clips_per_row"):
        if d[key] < 1:
            fail(f"data.{key}", f"must be at least 1, got {d[key]}")
    lo_side, hi_side = d.side
    if not 1 <= lo_side <= hi_side:
        fail("data.side", f"needs 1 <= min <= max, got {d.side}")
    if hi_side < max(ph, pw):
        fail("data.side", f"largest side {hi_side} is smaller than a patch ({ph}x{pw})")
    lo_frames, hi_frames = d.frames
    if not 1 <= lo_frames <= hi_frames:
        fail("data.frames", f"needs 1 <= min <= max, got {d.frames}")
    smallest = clip_tokens(lo_frames, lo_side, lo_side, patch)
    if smallest > d.seq_len:
        fail(
            "data.seq_len",
            f"{d.seq_len} tokens cannot hold even the smallest clip "
            f"({lo_frames}x{lo_side}x{lo_side} = {smallest} tokens)",
        )
    if d.max_caption_tokens < 1 or d.text_len < d.max_caption_tokens:
        fail(
            "data.text_len",
            f"{d.text_len} must hold one caption of data.max_caption_tokens={d.max_caption_tokens}",
        )
    if not 0.0 <= d.caption_dropout <= 1.0:
        fail("data.caption_dropout", "must be a probability in [0, 1]")
    if not 0.0 <= d.image_fraction <= 1.0:
        fail("data.image_fraction", "must be a probability in [0, 1]")
    if not 0 < d.fps[0] <= d.fps[1]:
        fail("data.fps", f"needs 0 < min <= max, got {d.fps}")
    if t.sample_height % ph or t.sample_width % pw:
        fail(
            "train.sample_height",
            f"sample size {t.sample_height}x{t.sample_width} must be a multiple of the patch ({ph}x{pw})",
        )
    if clip_tokens(t.sample_frames, t.sample_height, t.sample_width, patch) > d.seq_len:
        tokens = clip_tokens(t.sample_frames, t.sample_height, t.sample_width, patch)
        fail("train.sample_frames", f"sample clip has {tokens} tokens, over data.seq_len")
    if config.audio.enabled:
        _check_audio_fits(config)


def _check_audio_fits(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming ``data.seq_len`` when the smallest clip (at the slowest
    ``data.fps``, with the most sound) or the sample clip does not fit a row with its audio tokens."""
    d, t, patch = config.data, config.train, tuple(config.model.patch_size)
    lo_frames, lo_side = d.frames[0], d.side[0]
    for what, frames, height, width, fps in (
        ("the smallest clip", lo_frames, lo_side, lo_side, d.fps[0]),
        ("the sample clip", t.sample_frames, t.sample_height, t.sample_width, t.sample_fps),
    ):
        video, sound = clip_tokens(frames, height, width, patch), audio_tokens(frames, fps, config.audio)
        if video + sound > d.seq_len:
            raise ConfigError(
                f"config key 'data.seq_len': {d.seq_len} tokens cannot hold {what} with its sound "
                f"({frames}x{height}x{width} at {fps:g} fps = {video} video + {sound} audio tokens); "
                "raise data.seq_len or make the clip shorter"
            )
