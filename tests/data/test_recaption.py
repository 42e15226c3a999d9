"""``sora-jax recaption``: captions from a captioning model's CSV or JSONL replace stored ones."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sora_jax import cli
from sora_jax.data.clip_store import ClipStore
from sora_jax.data.recaption import read_captions, recaption
from sora_jax.data.shards import Shard, claim_dataset, open_clips, shard_of, shard_path
from sora_jax.data.source_list import MAX_CAPTION_CHARS
from sora_jax.errors import ConfigError

# Sources and their clip counts, named as prepare names them.
_SOURCES = {"a.mp4": 2, "sub/b.mp4": 1, "c.png": 1}


def _fill(store: ClipStore, sources: dict[str, int], embedder=None) -> None:
    for source, count in sources.items():
        for k in range(count):
            caption = f"old caption of {source}"
            store.append(
                np.full((1, 8, 8, 3), k, np.uint8), clip_id=f"{source}#{k}", fps=8.0, caption=caption,
                source=source, start=float(k),
                caption_embedding=None if embedder is None else embedder(caption),
            )  # fmt: skip
        store.mark_done(source)
    store.close()


@pytest.fixture
def store(tmp_path) -> str:
    path = tmp_path / "store"
    _fill(ClipStore.create(path, dtype="uint8", channels=3), _SOURCES)
    return str(path)


def _captions(store: str) -> dict[str, str]:
    return {r.clip_id: r.caption for r in ClipStore.open(store).records}


def test_csv_by_clip_id_replaces_those_captions_and_counts_unknown_ids(store, tmp_path):
    file = tmp_path / "captions.csv"
    long = "word " * (MAX_CAPTION_CHARS // 4)
    file.write_text(
        'id,caption,score\n'
        'a.mp4#1,"  a dog runs, then sits  ",0.9\n'
        'nope.mp4#0,a caption for no clip,0.1\n'
        f'c.png#0,{long},0.5\n'
        'sub/b.mp4#0,,0.2\n'
        'a.mp4#1,a dog runs and sits,0.8\n'
    )  # fmt: skip
    report = recaption(store, file)
    assert (report.rows, report.clips, report.unknown, report.empty, report.cut) == (5, 2, 1, 1, 1)
    assert report.unknown_shown == ["nope.mp4#0"]
    captions = _captions(store)
    assert captions["a.mp4#1"] == "a dog runs and sits"  # Cleaned; the later row wins.
    assert captions["c.png#0"] == long.strip()[:MAX_CAPTION_CHARS].rstrip()
    assert (
        captions["a.mp4#0"] == "old caption of a.mp4"
        and captions["sub/b.mp4#0"] == "old caption of sub/b.mp4"
    )
    assert ClipStore.open(store).read("a.mp4#1")[0, 0, 0, 0] == 1  # Pixels untouched.


def test_open_sora_paths_and_jsonl_recaption_every_clip_of_a_source(store, tmp_path):
    (tmp_path / "paths.csv").write_text("path,text\n./a.mp4,a red ball\nsub//b.mp4,a blue cube\n")
    assert recaption(store, tmp_path / "paths.csv").clips == 3
    captions = _captions(store)
    assert [captions[f"a.mp4#{k}"] for k in (0, 1)] == ["a red ball"] * 2 and captions[
        "sub/b.mp4#0"
    ] == "a blue cube"
    lines = [{"id": "c.png#0", "caption": "a still of a cat"}, {"path": "a.mp4", "text": "two balls"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert recaption(store, tmp_path / "c.jsonl").clips == 3
    captions = _captions(store)
    assert captions["c.png#0"] == "a still of a cat" and captions["a.mp4#1"] == "two balls"


def test_bad_files_and_files_that_match_nothing_are_refused_before_writing(store, tmp_path, capsys):
    for name, text, said in (
        ("cols.csv", "clip,text\nx,y\n", "cols.csv has columns clip, text: it needs id,caption (clips)"),
        ("comma.csv", "id,caption\na.mp4#0,a cat, a dog\n", "comma.csv line 2: more fields than the header"),
        ("bad.jsonl", '{"id": "a.mp4#0", "caption": "x"}\n{oops\n', "bad.jsonl:2: not JSON"),
        ("keys.jsonl", '{"clip": "a.mp4#0"}\n', 'keys.jsonl:1: each line must be an object {"id"'),
        ("empty_id.csv", "id,caption\n,x\n", "empty_id.csv:2: empty id"),
        ("none.csv", "id,caption\nz#0,x\ny#1,w\n", "none of its 2 rows names a clip"),
        ("captions.txt", "id,caption\n", "give a .csv"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=re.escape(said)):
            recaption(store, tmp_path / name)
    assert set(_captions(store).values()) == {f"old caption of {s}" for s in _SOURCES}
    # Through the command line: one line, exit 2; and the summary of a good run.
    assert cli.main(["recaption", "--store", store, "--captions", str(tmp_path / "none.csv")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sora-jax recaption: ") and error.count("\n") == 1
    (tmp_path / "good.csv").write_text("id,caption\na.mp4#0,a ball\nq#0,x\n")
    assert cli.main(["recaption", "--store", store, "--captions", str(tmp_path / "good.csv")]) == 0
    assert (
        capsys.readouterr().out.strip() == "recaptioned 1 clips from 2 rows; 1 rows name no stored clip (q#0)"
    )
    assert read_captions(tmp_path / "good.csv")[0].id == "a.mp4#0"


def test_a_store_with_caption_embeddings_gets_the_new_captions_embedded(tmp_path):
    from sora_jax.text.embedder import CaptionEmbedder
    from sora_jax.text.tiny import write_tiny_bert

    encoder_dir = write_tiny_bert(tmp_path / "tiny-bert")
    embedder = CaptionEmbedder(encoder_dir, 6)
    path = tmp_path / "store"
    made = ClipStore.create(
        path, dtype="uint8", channels=3, caption_dim=embedder.dim, caption_encoder=embedder.description
    )
    _fill(made, {"a.mp4": 2}, embedder)
    (tmp_path / "c.csv").write_text("path,text\na.mp4,two blue cubes\n")
    with pytest.raises(ConfigError, match="keeps caption embeddings by 'tiny-bert'.*--text-encoder"):
        recaption(path, tmp_path / "c.csv")
    other = write_tiny_bert(tmp_path / "other-bert", seed=1)
    with pytest.raises(ConfigError, match="give that encoder"):
        recaption(path, tmp_path / "c.csv", other)
    assert recaption(path, tmp_path / "c.csv", encoder_dir).clips == 2
    store = ClipStore.open(path)
    expected = embedder("two blue cubes")
    for k in (0, 1):
        assert store.record(f"a.mp4#{k}").caption == "two blue cubes"
        stored = store.read_caption_embedding(f"a.mp4#{k}")
        np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=1e-3, atol=1e-3)
    plain = tmp_path / "plain"
    _fill(ClipStore.create(plain, dtype="uint8", channels=3), {"a.mp4": 1})
    with pytest.raises(ConfigError, match="keeps no caption embeddings"):
        recaption(plain, tmp_path / "c.csv", encoder_dir)


def test_a_sharded_dataset_is_recaptioned_in_the_shards_that_hold_the_clips(tmp_path):
    root = str(tmp_path / "dataset")
    claim_dataset(root, 3)
    for index in range(3):  # prepare's layout: each source in the shard its key hashes to.
        owned = {s: n for s, n in _SOURCES.items() if shard_of(s, 3) == index}
        if owned:
            _fill(ClipStore.create(shard_path(root, Shard(index, 3)), dtype="uint8", channels=3), owned)
    (tmp_path / "c.csv").write_text("path,text\na.mp4,a\nsub/b.mp4,b\nmissing.mp4,m\n")
    (tmp_path / "ids.csv").write_text("id,caption\nc.png#0,c\n")
    first = recaption(root, tmp_path / "c.csv")
    assert (first.clips, first.unknown) == (3, 1)
    assert recaption(root, tmp_path / "ids.csv").clips == 1
    clips = open_clips(root)
    assert {r.clip_id: r.caption for r in clips.records} == {
        "a.mp4#0": "a",
        "a.mp4#1": "a",
        "sub/b.mp4#0": "b",
        "c.png#0": "c",
    }


def test_the_recaptioned_store_is_left_compacted(store, tmp_path):
    """Caption entries are folded into the index's rows, not left in segments every open parses."""
    ClipStore.open(store).compact(min_segments=1)  # As prepare leaves a big store.
    (tmp_path / "ids.csv").write_text("id,caption\na.mp4#1,first\nc.png#0,second\n")
    assert recaption(store, tmp_path / "ids.csv").clips == 2
    index = sorted(p.name for p in (Path(store) / "index").iterdir())
    assert not [name for name in index if re.fullmatch(r"\d{12}\.jsonl", name)], index
    assert len([name for name in index if name.endswith(".columns.json")]) == 1
    reopened = ClipStore.open(store)
    assert reopened._tail == [] and reopened._base_captions == {}  # Nothing left to parse at open.
    assert _captions(store) == {
        "a.mp4#0": "old caption of a.mp4",
        "a.mp4#1": "first",
        "sub/b.mp4#0": "old caption of sub/b.mp4",
        "c.png#0": "second",
    }
