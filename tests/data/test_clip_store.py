"""Tests for sora_jax.data.clip_store: round trips, persistence, validation, crash safety."""

import json
import pickle

import numpy as np
import pytest

from sora_jax.data.clip_store import ClipRecord, ClipStore

# Small chunks so clips straddle chunk boundaries and the array is resized many times.
_CHUNK_BYTES = 1000


def _pixels(t: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _append(store: ClipStore, frames: np.ndarray, clip_id: str, source: str = "src.mp4") -> None:
    store.append(frames, clip_id=clip_id, fps=8.0, caption=f"caption of {clip_id}", source=source, start=0.5)


def test_pixel_round_trip_and_reopen(tmp_path):
    path = tmp_path / "store"
    clips = {
        "a#0": _pixels(5, 16, 24, 0),
        "a#1": _pixels(1, 40, 8, 1),
        "b#0": _pixels(9, 8, 8, 2),
        "c#0": _pixels(2, 32, 48, 3),  # 9216 bytes: spans ten 1000-byte chunks.
    }
    store = ClipStore.create(path, chunk_bytes=_CHUNK_BYTES)
    for clip_id, frames in clips.items():
        _append(store, frames, clip_id)
    for clip_id, frames in clips.items():  # Readable before flush by the writer.
        np.testing.assert_array_equal(store.read(clip_id), frames)
    store.flush()

    reopened = ClipStore.open(path)
    assert len(reopened) == len(clips)
    assert [r.clip_id for r in reopened.records] == list(clips)
    for i, (clip_id, frames) in enumerate(clips.items()):
        got = reopened.read(clip_id)
        assert got.dtype == np.uint8 and got.shape == frames.shape
        np.testing.assert_array_equal(got, frames)
        np.testing.assert_array_equal(reopened.read(i), frames)
    record = reopened.record("a#1")
    assert record == ClipRecord("a#1", (1, 40, 8, 3), 8.0, "caption of a#1", "src.mp4", 0.5, 5 * 16 * 24 * 3)
    np.testing.assert_array_equal(reopened.read(-1), clips["c#0"])
    with pytest.raises(KeyError, match="nope"):
        reopened.read("nope")
    # Pickling gives an independent reader, as data-loader workers need.
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(reopened)).read("b#0"), clips["b#0"])


def test_float16_latent_store(tmp_path):
    path = f"file://{tmp_path}/latents"  # A kvstore URL, the form remote stores (gs://...) take.
    store = ClipStore.create(path, dtype="float16", channels=4, chunk_bytes=_CHUNK_BYTES)
    rng = np.random.default_rng(0)
    latents = [rng.standard_normal(s).astype(np.float16) for s in [(3, 4, 6, 4), (1, 8, 2, 4), (7, 2, 2, 4)]]
    for i, z in enumerate(latents):
        store.append(z, clip_id=f"z{i}", fps=24.0, caption="", source=f"v{i}", start=0.0)
    store.extra["vae"] = {"name": "tiny", "scale": 0.5}
    store.flush()
    reopened = ClipStore.open(path)
    assert reopened.dtype == np.float16 and reopened.channels == 4
    assert reopened.extra == {"vae": {"name": "tiny", "scale": 0.5}}
    for i, z in enumerate(latents):
        got = reopened.read(f"z{i}")
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, z)
    with pytest.raises(ValueError, match="NaN"):
        store.append(
            np.full((1, 2, 2, 4), np.nan, np.float16), clip_id="bad", fps=1, caption="", source="", start=0
        )


def test_rejects_duplicates_and_wrong_arrays(tmp_path):
    store = ClipStore.create(tmp_path / "s")
    _append(store, _pixels(2, 8, 8, 0), "x")
    with pytest.raises(ValueError, match="duplicate clip id 'x'"):
        _append(store, _pixels(2, 8, 8, 1), "x")
    with pytest.raises(ValueError, match="dtype float32 does not match the store's uint8"):
        _append(store, np.zeros((2, 8, 8, 3), np.float32), "y")
    with pytest.raises(ValueError, match="4 channels, the store holds C=3"):
        _append(store, np.zeros((2, 8, 8, 4), np.uint8), "y")
    with pytest.raises(ValueError, match=r"\[T, H, W, C\]"):
        _append(store, np.zeros((8, 8, 3), np.uint8), "y")
    with pytest.raises(ValueError, match="empty clip"):
        _append(store, np.zeros((0, 8, 8, 3), np.uint8), "y")
    assert len(store) == 1 and not store.has("y")
    store.flush()
    reopened = ClipStore.open(tmp_path / "s")
    with pytest.raises(ValueError, match="duplicate clip id 'x'"):  # Also across sessions.
        _append(reopened, _pixels(2, 8, 8, 1), "x")


def test_create_and_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no clip store"):
        ClipStore.open(tmp_path / "missing")
    ClipStore.create(tmp_path / "s")
    with pytest.raises(FileExistsError):
        ClipStore.create(tmp_path / "s")
    assert ClipStore.create(tmp_path / "s", exist_ok=True).dtype == np.uint8
    with pytest.raises(ValueError, match="holds uint8 clips with C=3"):
        ClipStore.create(tmp_path / "s", dtype="float16", channels=4, exist_ok=True)
    with pytest.raises(ValueError, match="dtype must be one of"):
        ClipStore.create(tmp_path / "t", dtype="int32")
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "clip_store.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a clip store"):
        ClipStore.open(tmp_path / "u")


def test_unflushed_clips_are_not_committed(tmp_path):
    path = tmp_path / "s"
    store = ClipStore.create(path, chunk_bytes=_CHUNK_BYTES)
    committed = _pixels(3, 8, 16, 0)
    _append(store, committed, "kept")
    store.flush()
    # Data written, entry staged, then the process "dies" before flush.
    _append(store, _pixels(4, 8, 8, 1), "lost")
    store.mark_done("src.mp4")
    assert store.has("lost") and "src.mp4" in store.sources_done()
    reopened = ClipStore.open(path)
    assert [r.clip_id for r in reopened.records] == ["kept"]
    assert reopened.sources_done() == set()
    # The next writer reuses the orphaned space without disturbing committed data.
    replacement = _pixels(2, 16, 16, 2)
    _append(reopened, replacement, "next")
    reopened.flush()
    final = ClipStore.open(path)
    assert [r.clip_id for r in final.records] == ["kept", "next"]
    assert final.record("next").offset == committed.size
    np.testing.assert_array_equal(final.read("kept"), committed)
    np.testing.assert_array_equal(final.read("next"), replacement)


def test_atomic_group_is_all_or_nothing(tmp_path):
    path = tmp_path / "s"
    store = ClipStore.create(path)
    _append(store, _pixels(1, 8, 8, 0), "a#0", source="a")
    with pytest.raises(RuntimeError, match="decoder died"):
        with store.atomic():
            _append(store, _pixels(2, 8, 8, 1), "b#0", source="b")
            store.mark_done("b")
            raise RuntimeError("decoder died")
    assert not store.has("b#0") and store.sources_done() == set() and len(store) == 1
    with store.atomic():
        _append(store, _pixels(2, 8, 8, 2), "b#0", source="b")
        store.mark_done("b")
    store.flush()
    reopened = ClipStore.open(path)
    assert [r.clip_id for r in reopened.records] == ["a#0", "b#0"]
    assert reopened.record("b#0").offset == 8 * 8 * 3  # The dropped clip's space was reused.
    assert reopened.sources_done() == {"b"}


def test_sources_done_and_compaction_survive_reopen(tmp_path):
    path = tmp_path / "s"
    clips = {}
    with ClipStore.create(path) as store:
        for i in range(4):
            clips[f"v{i}#0"] = _pixels(1, 8, 8, i)
            _append(store, clips[f"v{i}#0"], f"v{i}#0", source=f"v{i}")
            store.mark_done(f"v{i}")
            store.flush()  # One segment per source, as a long ingest writes them.
    assert ClipStore.open(path).sources_done() == {"v0", "v1", "v2", "v3"}
    segments = sorted(p.name for p in (path / "index").iterdir())
    assert segments == [f"{i:012d}.jsonl" for i in range(1, 5)]

    store = ClipStore.open(path)
    store.compact()
    # One columnar compaction: its manifest and its objects.
    names = {p.name for p in (path / "index").iterdir()}
    assert "000000000004.columns.json" in names and all(n.startswith("000000000004.columns") for n in names)
    _append(store, _pixels(1, 8, 8, 9), "w#0", source="w")
    store.mark_done("w")
    store.flush()
    reopened = ClipStore.open(path)
    assert reopened.sources_done() == {"v0", "v1", "v2", "v3", "w"}
    assert [r.clip_id for r in reopened.records] == [*clips, "w#0"]
    for clip_id, frames in clips.items():
        np.testing.assert_array_equal(reopened.read(clip_id), frames)


def _embedding(tokens: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(tokens, dim)).astype(np.float32)


def test_caption_embeddings_round_trip_beside_latents(tmp_path):
    path = tmp_path / "latents"
    encoder = {"model_type": "bert", "path": "/models/minilm", "max_tokens": 16}
    store = ClipStore.create(
        path, dtype="float16", channels=4, chunk_bytes=_CHUNK_BYTES, caption_dim=6, caption_encoder=encoder
    )
    clips = {
        f"v#{i}": np.random.default_rng(i).normal(size=(1 + i, 2, 3, 4)).astype(np.float16) for i in range(5)
    }
    embeddings = {clip_id: _embedding(2 + 7 * i, 6, 10 + i) for i, clip_id in enumerate(clips)}
    for clip_id, latents in clips.items():
        store.append(
            latents, clip_id=clip_id, fps=8.0, caption="c", source="s", start=0.0,
            caption_embedding=embeddings[clip_id],
        )  # fmt: skip
    np.testing.assert_array_equal(store.read_caption_embedding("v#3"), embeddings["v#3"].astype(np.float16))
    store.flush()

    reopened = ClipStore.open(path)
    assert (reopened.caption_dim, reopened.caption_dtype, reopened.caption_encoder) == (
        6,
        np.float16,
        encoder,
    )
    for clip_id, latents in clips.items():
        np.testing.assert_array_equal(reopened.read(clip_id), latents)
        stored = reopened.read_caption_embedding(clip_id)
        assert stored.dtype == np.float16 and stored.shape == embeddings[clip_id].shape
        np.testing.assert_array_equal(stored, embeddings[clip_id].astype(np.float16))
    assert [r.caption_tokens for r in reopened.records] == [2, 9, 16, 23, 30]

    # Reopening for more writes needs the same encoder; another one is refused by name.
    with pytest.raises(ValueError, match="caption embeddings"):
        ClipStore.create(
            path, dtype="float16", channels=4, exist_ok=True, caption_dim=8, caption_encoder=encoder
        )
    again = ClipStore.create(
        path, dtype="float16", channels=4, exist_ok=True, caption_dim=6, caption_encoder=encoder
    )
    assert len(again) == len(clips)


def test_caption_embeddings_are_checked_and_dropped_with_their_atomic_group(tmp_path):
    store = ClipStore.create(tmp_path / "s", chunk_bytes=_CHUNK_BYTES, caption_dim=4)
    frames = _pixels(2, 4, 4, 0)
    base = {"fps": 8.0, "caption": "c", "source": "s", "start": 0.0}
    with pytest.raises(ValueError, match="none was given"):
        store.append(frames, clip_id="a", **base)
    with pytest.raises(ValueError, match=r"\[L >= 1, 4\]"):
        store.append(frames, clip_id="a", caption_embedding=_embedding(3, 5, 0), **base)
    with pytest.raises(ValueError, match="finite"):
        store.append(frames, clip_id="a", caption_embedding=np.full((2, 4), np.nan, np.float32), **base)
    with pytest.raises(ValueError, match="overflows float16"):
        store.append(frames, clip_id="a", caption_embedding=np.full((2, 4), 1e6, np.float32), **base)

    store.append(frames, clip_id="kept", caption_embedding=_embedding(3, 4, 1), **base)
    with pytest.raises(RuntimeError), store.atomic():
        store.append(frames, clip_id="dropped", caption_embedding=_embedding(50, 4, 2), **base)
        raise RuntimeError("interrupted")
    store.append(frames, clip_id="next", caption_embedding=_embedding(2, 4, 3), **base)
    store.flush()
    reopened = ClipStore.open(tmp_path / "s")
    assert [r.clip_id for r in reopened.records] == ["kept", "next"]
    # The dropped group's embedding space was reused: "next" follows "kept" directly.
    assert reopened.record("next").caption_offset == 3 * 4
    np.testing.assert_array_equal(
        reopened.read_caption_embedding("next"), _embedding(2, 4, 3).astype(np.float16)
    )

    plain = ClipStore.create(tmp_path / "plain")
    with pytest.raises(ValueError, match="holds no caption embeddings"):
        plain.append(frames, clip_id="a", caption_embedding=_embedding(2, 4, 0), **base)
    plain.append(frames, clip_id="a", **base)
    with pytest.raises(ValueError, match="holds no caption embeddings"):
        plain.read_caption_embedding("a")
