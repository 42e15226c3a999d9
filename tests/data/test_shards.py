"""Which shard a worker writes, from its flags or its engine's environment, and claiming a root."""

from __future__ import annotations

import hashlib
import re

import pytest

from sora_jax.data.shards import Shard, claim_dataset, dataset_shards, shard_from_environment, shard_of
from sora_jax.errors import ConfigError


@pytest.mark.parametrize(
    ("flags", "environ", "expected"),
    [
        ((None, None), {}, None),
        ((2, 5), {}, Shard(2, 5)),
        # A SLURM array counts from its first task id, e.g. --array=4-6.
        (
            (None, None),
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"},
            Shard(1, 3),
        ),
        ((None, 8), {"JOB_COMPLETION_INDEX": "7"}, Shard(7, 8)),
        ((None, None), {"TPU_WORKER_ID": "3", "TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3"}, Shard(3, 4)),
        # Flags win over the environment.
        ((0, 2), {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}, Shard(0, 2)),
    ],
)
def test_the_shard_comes_from_the_flags_or_the_engine(flags, environ, expected):
    assert shard_from_environment(*flags, environ=environ) == expected


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        ((None, None), {"JOB_COMPLETION_INDEX": "1"}, "pass --num-shards"),
        ((3, None), {}, "--shard 3 needs --num-shards"),
        ((None, 4), {}, "--num-shards 4 needs --shard"),
        ((4, 4), {}, "shard index 4 is not in [0, 4)"),
        ((None, None), {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "'x' is not an integer"),
    ],
)
def test_a_shard_that_cannot_be_told_is_refused_naming_why(flags, environ, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        shard_from_environment(*flags, environ=environ)


def test_a_key_falls_in_the_same_shard_on_every_machine():
    # A SHA-1, not Python's salted hash(): these values hold in any process.
    assert [shard_of(f"clip{n}.mp4", 4) for n in range(8)] == [shard_of(f"clip{n}.mp4", 4) for n in range(8)]
    assert (
        shard_of("videos/a.mp4", 1000)
        == int.from_bytes(hashlib.sha1(b"videos/a.mp4").digest()[:8], "big") % 1000
    )
    counts = [sum(shard_of(f"v{n}", 4) == i for n in range(4000)) for i in range(4)]
    assert all(900 < c < 1100 for c in counts), counts


def test_every_worker_claims_the_same_count_and_another_is_refused(tmp_path):
    root = str(tmp_path / "dataset")
    assert dataset_shards(root) is None
    claim_dataset(root, 3)
    claim_dataset(root, 3)  # A second worker of the same job.
    assert dataset_shards(root) == 3
    with pytest.raises(ConfigError, match="a dataset of 3 shards, not 4"):
        claim_dataset(root, 4)
    (tmp_path / "dataset" / "clip_dataset.json").write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="not a clip dataset's description"):
        dataset_shards(root)
