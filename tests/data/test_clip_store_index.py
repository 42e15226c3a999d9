"""Tests for the clip store's index: re-captioning, columnar compaction, old layouts, racing readers."""

import json
import logging
import pickle
import re

import numpy as np
import pytest

from sora_jax.data import clip_index
from sora_jax.data.clip_store import ClipStore


def _pixels(t: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, 2, 3, 3), dtype=np.uint8)


def _embedding(tokens: int, seed: int, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(tokens, dim)).astype(np.float32)


def _append(store: ClipStore, clip_id: str, seed: int, **kw) -> None:
    store.append(_pixels(1 + seed % 3, seed), clip_id=clip_id, fps=8.0, caption=f"old {clip_id}",
                 source=clip_id.split("#")[0], start=0.0, **kw)  # fmt: skip


def test_recaption_replaces_caption_and_embedding_later_ones_win(tmp_path):
    path = tmp_path / "s"
    store = ClipStore.create(path, caption_dim=4)
    for i in range(3):
        _append(store, f"v{i}#0", i, caption_embedding=_embedding(2, i))
    store.flush()
    store.recaption("v1#0", "first new caption", _embedding(5, 10))
    store.recaption("v1#0", "second new caption", _embedding(3, 11))
    # The writer sees its staged caption at once, readers only after the flush.
    assert store.record("v1#0").caption == "second new caption"
    assert ClipStore.open(path).record("v1#0").caption == "old v1#0"
    store.flush()

    reopened = ClipStore.open(path)
    record = reopened.record("v1#0")
    assert (record.caption, record.caption_tokens) == ("second new caption", 3)
    np.testing.assert_array_equal(reopened.read_caption_embedding(1), _embedding(3, 11).astype(np.float16))
    np.testing.assert_array_equal(reopened.read("v1#0"), _pixels(2, 1))  # Pixels untouched.
    assert [r.caption for r in reopened.records] == ["old v0#0", "second new caption", "old v2#0"]
    np.testing.assert_array_equal(reopened.read_caption_embedding(2), _embedding(2, 2).astype(np.float16))


def test_recaption_refuses_unknown_clips_and_wrong_embeddings(tmp_path):
    store = ClipStore.create(tmp_path / "s", caption_dim=4)
    _append(store, "a#0", 0, caption_embedding=_embedding(2, 0))
    with pytest.raises(ValueError, match="no clip 'nope'"):
        store.recaption("nope", "x", _embedding(2, 1))
    with pytest.raises(ValueError, match="none was given"):
        store.recaption("a#0", "x")
    with pytest.raises(ValueError, match=r"\[L >= 1, 4\]"):
        store.recaption("a#0", "x", _embedding(2, 1, dim=5))
    with pytest.raises(ValueError, match="caption must be a str"):
        store.recaption("a#0", None, _embedding(2, 1))  # type: ignore[arg-type]
    plain = ClipStore.create(tmp_path / "plain")
    _append(plain, "a#0", 0)
    with pytest.raises(ValueError, match="holds no caption embeddings"):
        plain.recaption("a#0", "x", _embedding(2, 1))
    plain.recaption("a#0", "new")  # A clip staged in this session can be recaptioned too.
    plain.flush()
    assert ClipStore.open(tmp_path / "plain").record(0).caption == "new"


def test_recaption_is_dropped_with_its_atomic_group(tmp_path):
    path = tmp_path / "s"
    store = ClipStore.create(path)
    _append(store, "a#0", 0)
    store.flush()
    store.recaption("a#0", "kept")
    with pytest.raises(RuntimeError, match="interrupted"), store.atomic():
        store.recaption("a#0", "dropped")
        _append(store, "b#0", 1)
        store.recaption("b#0", "dropped too")
        raise RuntimeError("interrupted")
    assert store.record("a#0").caption == "kept" and not store.has("b#0")
    store.flush()
    reopened = ClipStore.open(path)
    assert [(r.clip_id, r.caption) for r in reopened.records] == [("a#0", "kept")]


def test_caption_entry_for_an_unknown_clip_is_a_bad_index_entry(tmp_path):
    path = tmp_path / "s"
    store = ClipStore.create(path)
    _append(store, "a#0", 0)
    store.flush()
    (path / "index" / "000000000002.jsonl").write_text('{"type":"caption","id":"ghost","caption":"x"}\n')
    with pytest.raises(ValueError, match=r"bad index entry at index/000000000002.jsonl:1: .*'ghost'"):
        ClipStore.open(path)


def _index_objects(path) -> set[str]:
    """The names in ``index/``, each object of a columnar compaction as ``SEQ.columns-*``."""
    return {re.sub(r"\.columns-.*", ".columns-*", p.name) for p in (path / "index").iterdir()}


def _columns(seq: int) -> set[str]:
    return {f"{seq:012d}.columns.json", f"{seq:012d}.columns-*"}


def _varied_store(path) -> tuple[ClipStore, dict]:
    """A store whose clips use every field: caption embeddings, sound of each state, scores on
    some clips only, perceptual hashes, a caption with a Unicode line separator."""
    store = ClipStore.create(path, caption_dim=4, audio_sample_rate=800, audio_channels=2)
    expected = {}
    for i in range(8):
        clip_id = f"v{i // 3}.mp4#{i % 3}"
        frames = _pixels(1 + i % 3, i)
        audio = None
        if i % 4 == 1:
            audio = np.random.default_rng(i).uniform(-0.5, 0.5, (len(frames) * 100, 2))
        elif i % 4 == 2:
            audio = np.zeros((len(frames) * 100, 2))
        scores = {"motion": i / 7, **({"dark": 0.25 * i} if i % 2 else {})}
        store.append(
            frames, clip_id=clip_id, fps=8.0, caption=f"clip {i}\u2028line two" if i == 5 else f"clip {i}",
            source=clip_id.split("#")[0], start=0.5 * i, caption_embedding=_embedding(1 + i, i),
            audio=audio, scores=scores, phash=f"{i:016x}" if i != 3 else "",
        )  # fmt: skip
        expected[clip_id] = (frames, audio)
        if i % 3 == 2:
            store.mark_done(clip_id.split("#")[0])
        store.flush()  # A segment per clip, as a long ingest writes them.
    return store, expected


def _assert_same_index(got: ClipStore, want: ClipStore) -> None:
    assert len(got) == len(want)
    assert got.records == want.records
    assert [got.record(i) for i in range(len(got))] == want.records
    assert [got.record(r.clip_id) for r in want.records] == want.records
    assert got.record(-1) == want.records[-1]
    np.testing.assert_array_equal(got.shapes, want.shapes)
    assert got.shapes.dtype == np.int64
    assert got.score_names() == want.score_names()
    for name in [*want.score_names(), "never"]:
        np.testing.assert_array_equal(got.scores(name), want.scores(name))
        assert got.scores(name).dtype == np.float64
    assert got.sources_done() == want.sources_done()
    hashes, known = got.phashes()
    assert hashes.dtype == np.uint64 and known.dtype == bool and len(hashes) == len(known) == len(want)
    assert [f"{h:016x}" if k else "" for h, k in zip(hashes, known, strict=True)] == [
        r.phash for r in want.records
    ]
    assert got.sources() == {r.source for r in want.records}
    for i in range(len(want)):
        np.testing.assert_array_equal(got.read(i), want.read(i))
        np.testing.assert_array_equal(got.read_caption_embedding(i), want.read_caption_embedding(i))
        want_audio = want.read_audio(i)
        assert (got.read_audio(i) is None) == (want_audio is None)
        if want_audio is not None:
            np.testing.assert_array_equal(got.read_audio(i), want_audio)


def test_columnar_compaction_round_trips_every_field(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_index, "ROWS_PER_PART", 3)  # Rows in three parts, the last one short.
    path = tmp_path / "s"
    store, expected = _varied_store(path)
    before = ClipStore.open(path)  # From the JSON-lines segments.
    assert {r.audio for r in before.records} == {"sound", "silent", "none"}
    assert before.score_names() == {"motion", "dark"}
    assert before.record(5).caption == "clip 5\u2028line two"
    store.compact()
    index = path / "index"
    assert _index_objects(path) == _columns(8)
    assert len(list(index.glob("000000000008.columns-rows-*.jsonl"))) == 3

    after = ClipStore.open(path)
    assert after._base is not None and after._tail == []  # Opened from the columns alone.
    _assert_same_index(after, before)
    _assert_same_index(store, before)  # The writer reads its own compaction the same way.
    _assert_same_index(pickle.loads(pickle.dumps(after)), before)
    for clip_id, (frames, audio) in expected.items():
        np.testing.assert_array_equal(after.read(clip_id), frames)
        if audio is not None:
            np.testing.assert_allclose(after.read_audio(clip_id), audio, atol=1 / 32767)
    assert after.has("v2.mp4#1") and not after.has("v2.mp4#2") and not after.has("")
    with pytest.raises(KeyError, match="v9"):
        after.record("v9.mp4#0")
    with pytest.raises(IndexError, match="holds 8 clips"):
        after.record(8)
    with pytest.raises(ValueError, match="duplicate clip id 'v1.mp4#0'"):
        _append(after, "v1.mp4#0", 0, caption_embedding=_embedding(1, 0))
    # Compacting a compacted index again changes nothing.
    after.compact(min_segments=1)
    assert _index_objects(path) == _columns(8)


def test_tail_and_recaption_after_compaction(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_index, "ROWS_PER_PART", 3)
    path = tmp_path / "s"
    store, _ = _varied_store(path)
    store.compact()
    # New clips and new captions go to JSON-lines segments after the compaction.
    store.recaption("v0.mp4#1", "recaptioned in the columns", _embedding(6, 20))
    _append(store, "w.mp4#0", 30, caption_embedding=_embedding(2, 30), scores={"new": 1.0})
    store.recaption("w.mp4#0", "recaptioned in the tail", _embedding(3, 31))
    store.mark_done("w.mp4")
    store.flush()
    reader = ClipStore.open(path)
    assert len(reader) == 9 and reader._tail and reader.records == store.records
    assert reader.record(1).caption == "recaptioned in the columns"
    np.testing.assert_array_equal(reader.read_caption_embedding(1), _embedding(6, 20).astype(np.float16))
    assert reader.record("w.mp4#0").caption == "recaptioned in the tail"
    assert reader.score_names() == {"motion", "dark", "new"}
    np.testing.assert_array_equal(reader.scores("new"), [np.nan] * 8 + [1.0])
    assert "w.mp4" in reader.sources_done()

    store.compact()  # Folds the captions into the rows.
    folded = ClipStore.open(path)
    assert folded._tail == [] and folded._base_captions == {}
    _assert_same_index(folded, reader)
    # A clip id repeated in a later segment is a bad index, however it got there.
    segment = path / "index" / "000000000010.jsonl"
    segment.write_bytes((path / "index" / "000000000009.columns-rows-000000.jsonl").read_bytes())
    with pytest.raises(ValueError, match=r"index/000000000010.jsonl:1: duplicate clip id 'v0.mp4#0'"):
        ClipStore.open(path)


def test_reader_racing_compactions_sees_a_complete_index(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_index, "ROWS_PER_PART", 3)
    path = tmp_path / "s"
    store, _ = _varied_store(path)
    store.compact()
    reader = ClipStore.open(path)  # Holds the compaction at seq 8, reads nothing of it yet.
    want = ClipStore.open(path).records
    saved = {p.relative_to(path): p.read_bytes() for p in (path / "index").rglob("*") if p.is_file()}
    _append(store, "w.mp4#0", 30, caption_embedding=_embedding(2, 30))
    store.flush()
    store.compact()  # Deletes the objects the reader opened.
    assert not (path / "index" / "000000000008.columns.json").exists()
    # The reader follows the new compaction and keeps the clips it opened with.
    assert len(reader) == 8 and reader.records == want and reader.record("v1.mp4#1") == want[4]
    assert not reader.has("w.mp4#0")
    np.testing.assert_array_equal(reader.shapes, np.asarray([r.shape for r in want]))

    # A reader that lists the index between a compaction's manifest and the deletion of the
    # objects it replaces sees both: it takes the newer.
    for name, blob in saved.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(blob)
    assert len(ClipStore.open(path)) == 9


def test_compaction_that_died_before_its_manifest_is_invisible(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_index, "ROWS_PER_PART", 3)
    path = tmp_path / "s"
    store, _ = _varied_store(path)
    store.compact()
    _append(store, "w.mp4#0", 30, caption_embedding=_embedding(2, 30))
    store.flush()
    # Objects of a compaction at seq 9, but no manifest.
    (path / "index" / "000000000009.columns-rows-000000.jsonl").write_text("not json\n")
    (path / "index" / "000000000009.columns-score-00007").write_text("left over")
    reopened = ClipStore.open(path)
    assert len(reopened) == 9 and reopened.record(8).clip_id == "w.mp4#0"
    reopened.compact()  # Replaces the dead one's objects and removes what it does not write.
    assert _index_objects(path) == _columns(9)
    assert not (path / "index" / "000000000009.columns-score-00007").exists()
    assert ClipStore.open(path).records == reopened.records == store.records


def test_json_lines_compaction_of_older_stores_still_opens(tmp_path):
    path = tmp_path / "s"
    store, expected = _varied_store(path)
    want = ClipStore.open(path)
    # The layout older versions compacted to: every entry in one JSON-lines object.
    index = path / "index"
    entries = [r.to_entry() for r in want.records] + [
        {"type": "done", "source": s} for s in sorted(want.sources_done())
    ]
    for segment in index.iterdir():
        segment.unlink()
    (index / "000000000008.all.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    old = ClipStore.open(path)
    _assert_same_index(old, want)
    _append(old, "w.mp4#0", 30, caption_embedding=_embedding(2, 30))
    old.flush()
    ClipStore.open(path).compact()  # Converts it to columns.
    assert _index_objects(path) == _columns(9)
    converted = ClipStore.open(path)
    assert converted.records == [*want.records, old.record("w.mp4#0")]
    assert converted.sources_done() == want.sources_done()


def test_columnar_index_in_a_bucket(monkeypatch):
    from tests.gcs_emulator import emulated_bucket  # Skips this test without the emulator.

    monkeypatch.setattr(clip_index, "ROWS_PER_PART", 3)
    with emulated_bucket() as bucket:
        path = f"{bucket}/store"
        store, _ = _varied_store(path)
        before = ClipStore.open(path)
        store.compact()
        reader = ClipStore.open(path)
        assert reader._base is not None and reader._tail == []
        _assert_same_index(reader, before)
        store.recaption("v0.mp4#0", "in a bucket", _embedding(2, 40))
        store.compact()  # Replaces the objects the reader opened: it follows, captions and all.
        assert reader.records == [ClipStore.open(path).record(0), *before.records[1:]]
        assert reader.record(0).caption == "in a bucket"


def _rows_unread(monkeypatch) -> None:
    """Makes reading any row of a columnar compaction fail the test."""

    def unread(*_):
        pytest.fail("read a row of the compaction")

    monkeypatch.setattr(clip_index.ColumnIndex, "entry", unread)
    monkeypatch.setattr(clip_index.ColumnIndex, "part_lines", unread)


def test_perceptual_hashes_and_sources_come_from_their_objects(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_index, "ROWS_PER_PART", 3)
    path = tmp_path / "s"
    store = ClipStore.create(path)
    # The all-zero and all-one hashes are real ones: only the mask tells a missing hash apart.
    for i, phash in enumerate(["0000000000000000", "", "ffffffffffffffff", "8000000000000001", ""]):
        _append(store, f"v{i % 2}.mp4#{i}", i, phash=phash)
    store.compact()
    _append(store, "w.mp4#0", 9, phash="00000000000000ff")  # The tail, read from its record.
    store.flush()
    reader = ClipStore.open(path)
    _rows_unread(monkeypatch)
    hashes, known = reader.phashes()
    np.testing.assert_array_equal(hashes, np.asarray([0, 0, 2**64 - 1, 2**63 + 1, 0, 255], np.uint64))
    np.testing.assert_array_equal(known, [True, False, True, True, False, True])
    assert reader.sources() == {"v0.mp4", "v1.mp4", "w.mp4"}
    # The compaction keeps every source's clip count, so the next one carries them over unread.
    store.compact()
    [summary] = (path / "index").glob("*.columns-sources.json")
    assert json.loads(summary.read_text()) == {"v0.mp4": 3, "v1.mp4": 2, "w.mp4": 1}
    np.testing.assert_array_equal(ClipStore.open(path).phashes()[0], hashes)


def test_compactions_made_before_the_hash_and_source_objects_still_read(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(clip_index, "ROWS_PER_PART", 3)
    path = tmp_path / "s"
    store, _ = _varied_store(path)
    want = ClipStore.open(path)
    store.compact()
    index = path / "index"
    manifest = json.loads((index / "000000000008.columns.json").read_text())
    for name in ("phash", "phash_known", "sources.json"):
        (index / f"000000000008.columns-{name}").unlink()
    del manifest["phash"], manifest["sources"]
    (index / "000000000008.columns.json").write_text(json.dumps(manifest))

    old = ClipStore.open(path)
    with caplog.at_level(logging.INFO, logger="sora_jax"):
        _assert_same_index(old, want)
        old.phashes(), old.sources()
    assert sum("predates its perceptual-hash and source objects" in m for m in caplog.messages) == 1
    # Its next compaction writes them, from the rows it copies.
    _append(old, "w.mp4#0", 30, caption_embedding=_embedding(2, 30), phash="0123456789abcdef")
    old.compact()
    assert {"phash", "sources"} <= set(json.loads((index / "000000000009.columns.json").read_text()))
    converted = ClipStore.open(path)
    _rows_unread(monkeypatch)
    assert converted.sources() == want.sources() | {"w.mp4"}
    hashes, known = converted.phashes()
    np.testing.assert_array_equal(hashes[:8], want.phashes()[0])
    assert hashes[8] == 0x0123456789ABCDEF and known[8]


def test_compaction_waits_for_the_index_to_grow_by_min_growth(tmp_path):
    path = tmp_path / "s"
    store = ClipStore.create(path)
    for i in range(8):
        _append(store, f"v{i}.mp4#0", i)
    assert store.compact(min_segments=1)
    # Three segments of one entry each: a clip, a caption entry, a done mark.
    _append(store, "w0.mp4#0", 0)
    store.flush()
    store.recaption("v0.mp4#0", "new")
    store.flush()
    store.mark_done("w0.mp4")
    store.flush()
    assert not store.compact(min_segments=2, min_growth=0.5)  # 3 entries since, < 0.5 * 8 clips.
    assert not ClipStore.open(path).compact(min_segments=5)  # 4 objects: the compaction, 3 segments.
    _append(store, "w9.mp4#0", 9)
    store.flush()
    assert ClipStore.open(path).compact(min_segments=2, min_growth=0.5)  # Counted at open too.
    assert _index_objects(path) == _columns(5)
    assert ClipStore.open(path).record("v0.mp4#0").caption == "new"


def test_iter_records_reads_a_part_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_index, "ROWS_PER_PART", 3)
    path = tmp_path / "s"
    store, _ = _varied_store(path)
    store.compact()
    store.recaption("v1.mp4#0", "recaptioned", _embedding(2, 20))
    _append(store, "w.mp4#0", 30, caption_embedding=_embedding(2, 30))
    store.flush()
    reader = ClipStore.open(path)
    want = [reader.record(i) for i in range(len(reader))]
    monkeypatch.setattr(clip_index.ColumnIndex, "entry", lambda *_: pytest.fail("read one row"))
    records = reader.iter_records()
    assert next(records) == want[0]  # The first record before the other parts are read.
    assert [want[0], *records] == want and want[3].caption == "recaptioned"


def test_a_clip_read_again_reuses_its_row_and_a_recaption_still_shows(tmp_path, monkeypatch):
    path = tmp_path / "s"
    store = ClipStore.create(path)
    for i in range(100):
        _append(store, f"v{i}#0", i)
    store.compact(min_segments=1)
    reader = ClipStore.open(path)
    reads = []
    read = clip_index.ColumnIndex._read

    def counted(self, key, byte_range=None):
        if byte_range is not None:
            reads.append(key)
        return read(self, key, byte_range)

    monkeypatch.setattr(clip_index.ColumnIndex, "_read", counted)
    # A loader's draw: the record for its shape, then its frames (which look the record up again).
    assert reader.record(7).clip_id == "v7#0"
    assert reader.read(7).shape == reader.record(7).shape
    assert len(reads) == 1
    for position in range(100):  # Every row once more, but 7's, which is still kept.
        reader.record(position)
    assert len(reads) == 100
    reader.record(0)  # Past the rows a reader keeps: the oldest is read again.
    assert len(reads) == 101
    # A recaption is applied on top of the kept row, not hidden by it.
    store.recaption("v99#0", "a new caption")
    store.flush()
    reader = ClipStore.open(path)
    assert reader.record(99).caption == "a new caption" and reader.record(99).caption == "a new caption"
