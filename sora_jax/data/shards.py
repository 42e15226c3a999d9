"""One dataset written by many independent workers: a root of clip-store shards.

Layout under a sharded dataset's root (a local directory or a kvstore URL such as ``gs://b/d``)::

    clip_dataset.json           {"format": "sora_jax.clip_dataset", "version": 1, "shards": N}
    shard-00003-of-00016/       an ordinary ClipStore, written by worker 3 of 16 alone

Worker ``i`` of ``N`` takes the inputs whose key (a source's path, a clip's id) hashes to ``i``
(:func:`shard_of`: a stable hash, so every worker agrees without talking to the others) and writes
only its own shard, with the single-writer ClipStore rules: nothing is locked, a crashed worker
resumes its shard from the shard's own done marks, and the shards' clips never overlap. The only
coordination is the shard number and count, which come from flags or from the engine that started
the worker (:func:`shard_from_environment`). ``clip_dataset.json`` is written by whichever worker
comes first; the others check that it names the same count.

Readers open a dataset with :func:`open_clips`, which takes a plain store or a sharded root alike:
a sharded root reads as :class:`ShardedClips`, the union of the shards written so far, with the
reader API of a :class:`~sora_jax.data.clip_store.ClipStore`.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tensorstore as ts

from sora_jax.data.clip_store import AUTOENCODER_KEY, STATS_KEY, ClipRecord, ClipStore
from sora_jax.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "sora_jax.clip_dataset"
VERSION = 1
DATASET_KEY = "clip_dataset.json"
_NO_VALUE = b"\x02"  # A key's generation when absent: a write conditioned on it only creates.


@dataclasses.dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count`` (``0 <= index < count``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and self.count >= 1):
            raise ConfigError(f"the shard count must be an int >= 1, got {self.count!r}")
        if not (isinstance(self.index, int) and 0 <= self.index < self.count):
            raise ConfigError(f"shard index {self.index!r} is not in [0, {self.count})")

    @property
    def name(self) -> str:
        """The shard's folder under the dataset root, e.g. ``shard-00003-of-00016``."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def owns(self, key: str) -> bool:
        """Whether ``key`` (a source path or clip id) falls in this shard."""
        return shard_of(key, self.count) == self.index


def shard_of(key: str, count: int) -> int:
    """The shard in ``[0, count)`` that ``key`` belongs to: the same on every machine and Python
    (a SHA-1 of its UTF-8 bytes, not ``hash()``, which is salted per process)."""
    digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_path(root: str, shard: Shard) -> str:
    """Where ``shard``'s clip store lies under the dataset ``root`` (a path or URL)."""
    return f"{root.rstrip('/')}/{shard.name}"


# Environment variables that carry a worker's index, and where known its count, on the engines a
# sharded job runs on. Kubernetes exposes no count, so an Indexed Job passes --num-shards.
ENGINES = (
    ("SLURM array task", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
    ("Kubernetes Indexed Job", "JOB_COMPLETION_INDEX", None),
    # Set on GKE's TPU nodes; a TPU VM does not set it (launch/tpu_vm.sh passes --shard instead).
    ("TPU worker", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES"),
)


def shard_from_environment(
    index: int | None = None, count: int | None = None, environ: Mapping[str, str] | None = None
) -> Shard | None:
    """The shard a worker writes: from ``index``/``count`` (the ``--shard``/``--num-shards``
    flags) where given, else from its engine's environment (see :data:`ENGINES`: a SLURM array
    task's id counted from ``SLURM_ARRAY_TASK_MIN``, a Kubernetes Indexed Job's completion index,
    a TPU worker's id with one worker per host of ``TPU_WORKER_HOSTNAMES``). None when neither
    says anything: an unsharded run.

    Raises:
        ConfigError: a flag without the other and no engine to fill it in, or values out of range.
    """
    environ = os.environ if environ is None else environ
    if index is None or count is None:
        for engine, index_var, count_var in ENGINES:
            if index_var not in environ:
                continue
            found_index = _env_int(environ, index_var, engine)
            if index_var == "SLURM_ARRAY_TASK_ID":
                found_index -= _env_int(environ, "SLURM_ARRAY_TASK_MIN", engine, default=0)
            found_count = None
            if count_var == "TPU_WORKER_HOSTNAMES":
                found_count = len([h for h in environ[count_var].split(",") if h.strip()]) or None
            elif count_var is not None and count_var in environ:
                found_count = _env_int(environ, count_var, engine)
            index = found_index if index is None else index
            count = found_count if count is None else count
            if count is None:
                raise ConfigError(
                    f"{engine} {index_var}={environ[index_var]} gives this worker's shard but not how "
                    "many there are: pass --num-shards"
                )
            break
    if index is None and count is None:
        return None
    if index is None:
        raise ConfigError(
            f"--num-shards {count} needs --shard (or a SLURM array task, Indexed Job or GKE TPU worker)"
        )
    if count is None:
        raise ConfigError(f"--shard {index} needs --num-shards")
    return Shard(index, count)


def _env_int(environ: Mapping[str, str], name: str, engine: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{engine}: {name}={value!r} is not an integer") from None


def _kvstore(root: str) -> ts.KvStore:
    path = root.rstrip("/") + "/"
    # A spec rather than a "file://" URL for local paths: they may hold characters URLs escape.
    spec = path if "://" in path else {"driver": "file", "path": os.path.abspath(path) + "/"}
    return ts.KvStore.open(spec).result()


def claim_dataset(root: str, count: int) -> None:
    """Makes ``root`` a dataset of ``count`` shards, or checks that it already is one.

    Every worker calls it before writing its shard; the first writes :data:`DATASET_KEY` (a
    conditional create, so concurrent workers cannot both write it) and the rest read it back.

    Raises:
        ConfigError: ``root`` is a dataset of another shard count, or holds a file by that name
            that is not a dataset's.
    """
    store = _kvstore(root)
    wanted = {"format": FORMAT, "version": VERSION, "shards": count}
    store.write(DATASET_KEY, json.dumps(wanted), if_equal=_NO_VALUE).result()
    held = dataset_shards(root)
    if held != count:
        raise ConfigError(
            f"{root} is a dataset of {held} shards, not {count}: every worker must use the same "
            "--num-shards (or write a new dataset)"
        )


def dataset_shards(root: str) -> int | None:
    """The shard count of the dataset at ``root``, or None when ``root`` is not a sharded dataset.

    Raises:
        ConfigError: ``root`` holds a :data:`DATASET_KEY` that is not a dataset's.
    """
    result = _kvstore(root).read(DATASET_KEY).result()
    if result.state != "value":
        return None
    try:
        held = json.loads(result.value)
        if held["format"] != FORMAT or held["version"] != VERSION:
            raise ValueError(f"format {held.get('format')!r} version {held.get('version')!r}")
        return int(held["shards"])
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{root}/{DATASET_KEY} is not a clip dataset's description ({error})") from None


# -- reading ---------------------------------------------------------------------------------


def open_clips(path: str | os.PathLike) -> ClipStore | ShardedClips:
    """The clips at ``path`` for reading: a :class:`ShardedClips` when ``path`` is the root of a
    sharded dataset, else the :class:`ClipStore` there.

    Raises:
        FileNotFoundError: ``path`` holds neither, or a dataset none of whose shards is written yet.
        ValueError: a store whose metadata is not a clip store's, or shards of different kinds.
        ConfigError: a :data:`DATASET_KEY` that is not a dataset's description.
    """
    path = os.fspath(path)
    if dataset_shards(path) is not None:
        return ShardedClips.open(path)
    return ClipStore.open(path)


class ShardedClips:
    """The union of a sharded dataset's shard stores, read like one :class:`ClipStore`.

    Offers the reader API every consumer of clips uses: ``len``, :meth:`record`, :attr:`shapes`,
    :meth:`scores`, :meth:`score_names`, :meth:`phashes`, :meth:`iter_records`, :meth:`read`,
    :meth:`read_audio`, :meth:`read_caption_embedding`, :meth:`has`, :meth:`sources`,
    :meth:`sources_done`, the format attributes and
    pickling (a fresh reader of the same root). Positions are shard-major: the clips of the first
    written shard in its own order, then the next shard's. An id is looked up in the shard its
    source hashes to first, then in the others.

    Each shard is read as it was when the dataset was opened; a shard not yet started adds nothing
    (:attr:`missing` names those). ``extra`` holds the keys on which all shards agree, with latent
    statistics pooled over the shards (see :func:`_pooled_stats`); it lacks them when any shard's
    encode has not finished.
    """

    def __init__(self, path: str, root: ts.KvStore, count: int, stores: Mapping[int, ClipStore]) -> None:
        """Internal: use :meth:`open` (or :func:`open_clips`)."""
        if not stores:
            raise FileNotFoundError(f"no shard of the dataset at {path!r} is written yet (0 of {count})")
        self._path = path
        self._root = root
        self.count = count
        self.shards: list[tuple[Shard, ClipStore]] = [(Shard(i, count), stores[i]) for i in sorted(stores)]
        self.missing = [Shard(i, count).name for i in range(count) if i not in stores]
        first_shard, first = self.shards[0]
        for shard, store in self.shards[1:]:
            for what, ours, theirs in (
                ("clips", _clip_format(store), _clip_format(first)),
                ("caption embeddings", _caption_format(store), _caption_format(first)),
                ("sound", _sound_format(store), _sound_format(first)),
            ):
                if ours != theirs:
                    raise ValueError(
                        f"{path}: {shard.name} holds {what} {ours}, {first_shard.name} {theirs}: "
                        "the shards of one dataset must be written with the same settings"
                    )
        self.dtype = first.dtype
        self.channels = first.channels
        self.caption_dim = first.caption_dim
        self.caption_dtype = first.caption_dtype
        self.caption_encoder = dict(first.caption_encoder)
        self.audio_sample_rate = first.audio_sample_rate
        self.audio_channels = first.audio_channels
        self.extra = _common_extra(path, self.shards)
        lengths = [len(store) for _, store in self.shards]
        self._starts = [0, *np.cumsum(lengths[:-1], dtype=np.int64).tolist()]
        self._length = sum(lengths)
        self._by_index = {shard.index: store for shard, store in self.shards}
        self._shapes: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> ShardedClips:
        """Opens every written shard of the dataset at ``path`` (concurrently: a bucket answers
        each in a round trip). Logs the shards not written yet.

        Raises:
            FileNotFoundError: ``path`` is not a sharded dataset, or none of its shards is written.
            ValueError: a shard that is not a clip store, or shards holding clips of other kinds.
        """
        path = os.fspath(path)
        count = dataset_shards(path)
        if count is None:
            raise FileNotFoundError(f"no sharded clip dataset at {path!r} (missing {DATASET_KEY})")

        def opened(index: int) -> ClipStore | None:
            try:
                return ClipStore.open(shard_path(path, Shard(index, count)))
            except FileNotFoundError:
                return None

        with ThreadPoolExecutor(min(32, count)) as pool:
            found = dict(enumerate(pool.map(opened, range(count))))
        stores = {index: store for index, store in found.items() if store is not None}
        display = path if "://" in path else os.path.abspath(path)
        clips = cls(display, _kvstore(path), count, stores)
        if clips.missing:
            shown = ", ".join(clips.missing[:8]) + (", ..." if len(clips.missing) > 8 else "")
            log.warning(
                "%s: %d of %d shards not written yet (%s); reading the other %d",
                display,
                len(clips.missing),
                count,
                shown,
                len(stores),
            )
        return clips

    def __reduce__(self) -> tuple:
        return (ShardedClips.open, (self._path,))

    def __repr__(self) -> str:
        return (
            f"ShardedClips({self._path!r}, dtype={self.dtype.name}, channels={self.channels}, "
            f"shards={len(self.shards)}/{self.count}, clips={len(self)})"
        )

    def __len__(self) -> int:
        return self._length

    @property
    def path(self) -> str:
        """The dataset's root: an absolute local path or the URL it was opened with."""
        return self._path

    @property
    def kvstore(self) -> ts.KvStore:
        """The root kvstore, for side files that belong to the dataset as a whole."""
        return self._root

    @property
    def records(self) -> list[ClipRecord]:
        """All clips in position order (a new list each call; small datasets only)."""
        return list(self.iter_records())

    def iter_records(self) -> Iterator[ClipRecord]:
        """Every clip's record in position order, each shard's read a part at a time (see
        :meth:`ClipStore.iter_records`)."""
        for _, store in self.shards:
            yield from store.iter_records()

    @property
    def shapes(self) -> np.ndarray:
        """Every clip's ``(T, H, W, C)`` in position order: int64 ``[len(self), 4]``."""
        if self._shapes is None:
            self._shapes = np.concatenate([store.shapes for _, store in self.shards]).reshape(-1, 4)
        return self._shapes

    def scores(self, name: str) -> np.ndarray:
        """Every clip's score ``name`` in position order: float64 ``[len(self)]``, NaN where absent."""
        return np.concatenate([store.scores(name) for _, store in self.shards]).astype(np.float64)

    def score_names(self) -> set[str]:
        """The names of the scores any clip of any shard has."""
        return set().union(*(store.score_names() for _, store in self.shards))

    def phashes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every clip's perceptual hash in position order, uint64 ``[len(self)]``, and bool
        ``[len(self)]``: which clips have one (see :meth:`ClipStore.phashes`)."""
        parts = [store.phashes() for _, store in self.shards]
        return (
            np.concatenate([hashes for hashes, _ in parts]).astype(np.uint64),
            np.concatenate([known for _, known in parts]).astype(bool),
        )

    def sources(self) -> set[str]:
        """The sources that have clips in any shard (see :meth:`ClipStore.sources`)."""
        return set().union(*(store.sources() for _, store in self.shards))

    def sources_done(self) -> set[str]:
        """Sources marked done in any shard."""
        return set().union(*(store.sources_done() for _, store in self.shards))

    def has(self, clip_id: str) -> bool:
        return self._holder(clip_id) is not None

    def record(self, key: int | str) -> ClipRecord:
        """The record at position ``key`` (negative counts from the end) or with id ``key``."""
        store, local = self._locate(key)
        return store.record(local)

    def read(self, key: int | str) -> np.ndarray:
        """The clip at position ``key`` or with id ``key`` (see :meth:`ClipStore.read`)."""
        store, local = self._locate(key)
        return store.read(local)

    def read_audio(self, key: int | str) -> np.ndarray | None:
        """The sound of the clip at position ``key`` or with id ``key`` (see :meth:`ClipStore.read_audio`)."""
        store, local = self._locate(key)
        return store.read_audio(local)

    def read_caption_embedding(self, key: int | str) -> np.ndarray:
        """The caption embedding of the clip at ``key`` (see :meth:`ClipStore.read_caption_embedding`)."""
        if not self.caption_dim:
            raise ValueError(f"{self._path!r} holds no caption embeddings (prepared without a text encoder)")
        store, local = self._locate(key)
        return store.read_caption_embedding(local)

    def _locate(self, key: int | str) -> tuple[ClipStore, int | str]:
        """The shard store holding ``key`` and the key to use in it."""
        if isinstance(key, str):
            store = self._holder(key)
            if store is None:
                raise KeyError(f"no clip {key!r} in {self._path!r}")
            return store, key
        position = int(key)
        if position < 0:
            position += self._length
        if not 0 <= position < self._length:
            raise IndexError(f"clip position {key} out of range for {self._length} clips in {self._path!r}")
        number = bisect.bisect_right(self._starts, position) - 1
        return self.shards[number][1], position - self._starts[number]

    def _holder(self, clip_id: str) -> ClipStore | None:
        # prepare shards by source and names clips "<source>#<k>"; other writers may shard by id.
        guesses = [shard_of(clip_id.rpartition("#")[0] or clip_id, self.count), shard_of(clip_id, self.count)]
        for index in guesses:
            store = self._by_index.get(index)
            if store is not None and store.has(clip_id):
                return store
        return next((store for _, store in self.shards if store.has(clip_id)), None)


def _clip_format(store: ClipStore) -> str:
    return f"{store.dtype.name} with C={store.channels}"


def _caption_format(store: ClipStore) -> str:
    if not store.caption_dim:
        return "none"
    return f"{store.caption_dim} wide in {store.caption_dtype.name} by {store.caption_encoder}"


def _sound_format(store: ClipStore) -> str:
    if not store.audio_sample_rate:
        return "none"
    return f"at {store.audio_sample_rate} Hz x{store.audio_channels}"


def _common_extra(path: str, shards: list[tuple[Shard, ClipStore]]) -> dict[str, Any]:
    """The ``extra`` keys all shards hold with one value, and the pooled latent statistics.

    Raises:
        ValueError: shards holding latents of different autoencoders.
    """
    extras = [store.extra for _, store in shards]
    made_by = {json.dumps(extra.get(AUTOENCODER_KEY), sort_keys=True) for extra in extras}
    if len(made_by) > 1:
        raise ValueError(
            f"{path}: its shards hold latents of different autoencoders ({', '.join(sorted(made_by))}): "
            "latents decode only with the autoencoder that made them; encode every shard with one"
        )
    common: dict[str, Any] = {}
    differing = []
    for key in sorted({key for extra in extras for key in extra} - {STATS_KEY}):
        values = {json.dumps(extra.get(key), sort_keys=True) for extra in extras}
        if len(values) == 1:
            common[key] = extras[0][key]
        else:
            differing.append(key)
    if differing:
        log.warning("%s: its shards differ in %s; reading the clips without it", path, ", ".join(differing))
    # A shard that holds no clip has no statistics to give (nor clips to normalise).
    holding = [(shard, store) for shard, store in shards if len(store)]
    unfinished = [shard.name for shard, store in holding if STATS_KEY not in store.extra]
    if made_by != {"null"} and unfinished:
        shown = ", ".join(unfinished[:8]) + (", ..." if len(unfinished) > 8 else "")
        log.warning("%s: %s have no latent statistics yet (encode unfinished)", path, shown)
    if holding and not unfinished:
        common[STATS_KEY] = _pooled_stats([(len(store), store.extra[STATS_KEY]) for _, store in holding])
    return common


def _pooled_stats(parts: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per-channel latent statistics of the union of shards, from each shard's ``(clips, stats)``.

    Each shard's mean and variance count as many times as it has clips (its statistics stand for
    all of them, however few it measured): pooled mean ``sum(n m) / N`` and variance
    ``sum(n (s^2 + m^2)) / N - mean^2``, the exact statistics of the union when every shard's are
    exact. ``"clips"`` is the number of clips measured, summed. Identical statistics (a pretrained
    autoencoder's fixed ones) come back unchanged.
    """
    if all(stats == parts[0][1] for _, stats in parts):
        return dict(parts[0][1])
    weights = np.asarray([clips for clips, _ in parts], np.float64)[:, None]
    means = np.asarray([stats["mean"] for _, stats in parts], np.float64)
    stds = np.asarray([stats["std"] for _, stats in parts], np.float64)
    mean = (weights * means).sum(0) / weights.sum()
    variance = (weights * (stds**2 + means**2)).sum(0) / weights.sum() - mean**2
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(np.maximum(variance, 0.0)).tolist(),
        "clips": int(sum(int(stats.get("clips", 0)) for _, stats in parts)),
    }
