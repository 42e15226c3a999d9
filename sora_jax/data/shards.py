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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping

import tensorstore as ts

from sora_jax.errors import ConfigError

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
    ("TPU VM worker", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES"),
)


def shard_from_environment(
    index: int | None = None, count: int | None = None, environ: Mapping[str, str] | None = None
) -> Shard | None:
    """The shard a worker writes: from ``index``/``count`` (the ``--shard``/``--num-shards``
    flags) where given, else from its engine's environment (see :data:`ENGINES`: a SLURM array
    task's id counted from ``SLURM_ARRAY_TASK_MIN``, a Kubernetes Indexed Job's completion index,
    a TPU VM's worker id with one worker per host of ``TPU_WORKER_HOSTNAMES``). None when neither
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
        raise ConfigError(f"--num-shards {count} needs --shard (or a SLURM array, Indexed Job or TPU VM)")
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
