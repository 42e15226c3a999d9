"""Tests for sora_jax.data.prepare: folder and CSV ingest, bad inputs, resume, worker isolation."""

import csv
import json
import signal
import time

import numpy as np
import pytest
from PIL import Image

from sora_jax.data.clip_shaping import target_size
from sora_jax.data.clip_store import ClipStore
from sora_jax.data.isolated_pool import IsolatedPool
from sora_jax.data.prepare import prepare
from sora_jax.data.video_io import IMAGE_SUFFIXES, write_video

_SETTINGS = {"max_seconds": 2.0, "fps": 8.0, "max_area": 64 * 64}


def _ramp(t: int, h: int, w: int, step: int = 3) -> np.ndarray:
    """Flat frames whose value identifies the frame: frame i is ``step * i`` everywhere."""
    return np.broadcast_to((np.arange(t, dtype=np.uint8) * step)[:, None, None, None], (t, h, w, 3)).copy()


def _make_folder(root):
    """Good and bad sources with sidecar captions; returns the expected good clip shapes."""

    def add(name, frames, fps, caption=True):
        write_video(root / name, frames, fps)
        if caption:
            (root / name).with_suffix(".txt").write_text(f"  caption of {name}\n")

    add("z/long.mp4", _ramp(72, 48, 64), 16)  # 4.5 s at 16 fps -> 36 frames at 8 fps.
    add("sub/big.mp4", _ramp(24, 120, 160), 24)  # Scaled to fit 64*64 px, cropped to 48x72.
    add("slow.gif", _ramp(8, 32, 32, step=20), 4)  # Slower than 8 fps: kept at 4 fps.
    add("still.png", _ramp(1, 30, 40), 1)
    add("tiny.mp4", _ramp(8, 8, 8), 8)
    add("nocap.mp4", _ramp(8, 32, 32), 8, caption=False)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    good = (root / "z/long.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "empty.mp4").write_bytes(b"")
    for name in ("corrupt", "truncated", "empty"):
        (root / f"{name}.txt").write_text(name)
    (root / ".hidden.mp4").write_bytes(good)  # Dot-files are partial writes or OS clutter.
    return {
        "z/long.mp4": [(16, 48, 64, 3), (10, 48, 64, 3), (10, 48, 64, 3)],
        "sub/big.mp4": [(8, 48, 72, 3)],
        "slow.gif": [(8, 32, 32, 3)],
        "still.png": [(1, 24, 40, 3)],
    }


_BAD = {
    "corrupt.mp4": "decode_error",
    "truncated.mp4": "decode_error",
    "empty.mp4": "empty_file",
    "nocap.mp4": "missing_caption",
    "tiny.mp4": "too_small",
}


def test_folder_ingest_reports_bad_inputs_and_resumes(tmp_path):
    expected = _make_folder(tmp_path / "in")
    out = tmp_path / "store"
    report = prepare(str(tmp_path / "in"), str(out), workers=2, **_SETTINGS)

    assert report.inputs_seen == 9
    assert (report.sources_done, report.skipped_done) == (4, 0)
    assert report.clips_written == 6
    assert report.frames_written == 16 + 10 + 10 + 8 + 8 + 1
    assert report.failures == {"decode_error": 2, "empty_file": 1, "missing_caption": 1, "too_small": 1}
    assert {f["path"]: f["reason"] for f in report.failed} == _BAD
    assert all(f["detail"] for f in report.failed)
    assert json.loads((out / "prepare_report.json").read_text()) == json.loads(report.to_json())

    store = ClipStore.open(out)
    assert store.sources_done() == set(expected)
    for source, shapes in expected.items():
        records = sorted((r for r in store.records if r.source == source), key=lambda r: r.clip_id)
        assert [r.clip_id for r in records] == [f"{source}#{k}" for k in range(len(shapes))]
        assert [r.shape for r in records] == shapes
        for r in records:
            _, h, w, _ = r.shape
            assert h % 8 == 0 and w % 8 == 0 and h * w <= _SETTINGS["max_area"]
            assert r.caption == f"caption of {source}"
            assert store.read(r.clip_id).shape == r.shape
    assert {r.source: r.fps for r in store.records} == {
        "z/long.mp4": 8.0,
        "sub/big.mp4": 8.0,
        "slow.gif": 4.0,
        "still.png": 0.0,
    }
    # 16 fps -> 8 fps keeps every second frame; frame i of the source has value 3 * i.
    long = [store.record(f"z/long.mp4#{k}") for k in range(3)]
    assert [r.start for r in long] == pytest.approx([0.0, 2.0, 3.25], abs=1e-6)
    means = np.concatenate([store.read(r.clip_id).mean(axis=(1, 2, 3)) for r in long])
    np.testing.assert_allclose(means, 6.0 * np.arange(36), atol=3.0)  # H.264 + YUV round trip.
    means = store.read("slow.gif#0").mean(axis=(1, 2, 3))
    np.testing.assert_allclose(means, 20.0 * np.arange(8), atol=5.0)  # GIF palette quantization.

    again = prepare(str(tmp_path / "in"), str(out), workers=2, **_SETTINGS)
    assert (again.sources_done, again.skipped_done, again.clips_written) == (0, 4, 0)
    assert again.failures == report.failures  # Failed sources are retried, and fail again.
    reopened = ClipStore.open(out)
    assert [r.clip_id for r in reopened.records] == [r.clip_id for r in store.records]


def test_interrupted_run_keeps_whole_sources_and_resumes(tmp_path, monkeypatch):
    expected = _make_folder(tmp_path / "in")
    out = tmp_path / "store"
    real_append = ClipStore.append
    calls = []

    def append_then_die(self, frames, **kwargs):
        calls.append(kwargs["clip_id"])
        # Sources are ingested in sorted order: slow, still, sub/big, z/long (3 clips); die
        # inside z/long, after its first clip was written.
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_append(self, frames, **kwargs)

    monkeypatch.setattr(ClipStore, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(tmp_path / "in"), str(out), workers=0, **_SETTINGS)
    monkeypatch.undo()
    assert calls == ["slow.gif#0", "still.png#0", "sub/big.mp4#0", "z/long.mp4#0", "z/long.mp4#1"]
    interrupted = ClipStore.open(out)
    # Whole sources before the interruption are committed; nothing of the interrupted one is.
    assert interrupted.sources_done() == {"slow.gif", "still.png", "sub/big.mp4"}
    assert sorted(r.clip_id for r in interrupted.records) == ["slow.gif#0", "still.png#0", "sub/big.mp4#0"]

    report = prepare(str(tmp_path / "in"), str(out), workers=0, **_SETTINGS)
    assert (report.skipped_done, report.sources_done, report.clips_written) == (3, 1, 3)
    store = ClipStore.open(out)
    assert store.sources_done() == set(expected)
    assert sorted(r.clip_id for r in store.records) == sorted(
        f"{source}#{k}" for source, shapes in expected.items() for k in range(len(shapes))
    )


def test_folder_ingests_every_image_suffix(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image = _ramp(1, 24, 32)[0]
    for suffix in IMAGE_SUFFIXES:  # lossless is a WebP option; the other formats ignore it.
        Image.fromarray(image).save(folder / f"image{suffix}", lossless=True)
    report = prepare(str(folder), str(tmp_path / "store"), workers=0, caption_default="x", **_SETTINGS)
    assert (report.inputs_seen, report.sources_done, report.failures) == (5, 5, {})
    store = ClipStore.open(tmp_path / "store")
    assert sorted(r.source for r in store.records) == sorted(f"image{s}" for s in IMAGE_SUFFIXES)
    assert {(r.shape, r.fps) for r in store.records} == {((1, 24, 32, 3), 0.0)}


def test_csv_input(tmp_path):
    root = tmp_path / "csv"
    write_video(root / "clips" / "a.mp4", _ramp(24, 32, 48), 12)  # 2 s, fps=None keeps 12 fps.
    write_video(root / "b.gif", _ramp(3, 16, 16), 10)
    write_video(root / "big.mp4", _ramp(2, 64, 64), 10)
    rows = [
        {"path": "clips/a.mp4", "text": "a red ball", "num_frames": 24, "height": 32, "width": 48, "fps": 12},
        {"path": str(root / "b.gif"), "text": "", "num_frames": 3, "height": 16, "width": 16, "fps": 10},
        {"path": "missing.mp4", "text": "gone", "num_frames": "", "height": "", "width": "", "fps": ""},
        {"path": "./clips/a.mp4", "text": "again", "num_frames": 24, "height": 32, "width": 48, "fps": 12},
        {"path": "big.mp4", "text": "too many pixels", "num_frames": 2, "height": 64, "width": 64, "fps": 10},
    ]
    with open(root / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    out = tmp_path / "store"
    report = prepare(
        str(root / "data.csv"),
        str(out),
        max_seconds=1.5,
        fps=None,
        max_input_pixels=64 * 48,
        workers=0,
        caption_default="a default caption",
    )
    assert (report.inputs_seen, report.sources_done, report.clips_written) == (5, 2, 3)
    assert {f["path"]: f["reason"] for f in report.failed} == {
        "missing.mp4": "missing_file",
        "clips/a.mp4": "duplicate",
        "big.mp4": "too_large",
    }
    store = ClipStore.open(out)
    # 24 frames, at most 18 per clip: the 6-frame tail is merged and split evenly, 12 + 12.
    assert [(r.clip_id, r.shape, r.fps) for r in store.records if r.source == "clips/a.mp4"] == [
        ("clips/a.mp4#0", (12, 32, 48, 3), 12.0),
        ("clips/a.mp4#1", (12, 32, 48, 3), 12.0),
    ]
    assert store.record("clips/a.mp4#1").start == pytest.approx(1.0)
    gif = store.record(f"{root / 'b.gif'}#0")
    assert (gif.shape, gif.caption) == ((3, 16, 16, 3), "a default caption")


def test_target_size_bounds_area_and_rounds_to_8():
    for h, w in [(720, 1280), (1080, 1920), (30, 40), (256, 256), (17, 1000), (4000, 50), (100, 100)]:
        resize_h, resize_w, crop_h, crop_w = target_size(h, w, 256 * 256)
        assert crop_h % 8 == 0 and crop_w % 8 == 0 and crop_h * crop_w <= 256 * 256
        assert crop_h <= resize_h <= h and crop_w <= resize_w <= w
        assert resize_h - crop_h < 8 and resize_w - crop_w < 8  # A crop, not a distortion.
        assert abs(resize_h / resize_w - h / w) < 0.05 * h / w
    assert target_size(720, 1280, 256 * 256)[2:] == (192, 336)
    assert target_size(7, 100, 256 * 256) is None


def test_pool_pins_crashes_and_hangs_on_their_task():
    pool = IsolatedPool(2, timeout=1.0)
    try:
        tasks = [
            ("ok", abs, (-3,)),
            ("crash", signal.raise_signal, (signal.SIGKILL,)),  # As a segfaulting decoder would.
            ("hang", time.sleep, (60,)),
            ("error", int, ("x",)),
            ("after", abs, (-5,)),
        ]
        results = {key: (ok, value) for key, ok, value in pool.run(tasks)}
    finally:
        pool.close()
    assert results["ok"] == (True, 3)
    assert results["after"] == (True, 5)  # The pool outlives its dead workers.
    assert results["crash"] == (False, ("worker_crash", "decoding process killed by SIGKILL"))
    assert results["hang"][1][0] == "timeout"
    assert results["error"][1][0] == "internal_error" and "ValueError" in results["error"][1][1]


def test_caption_embeddings_are_computed_once_at_prepare_time(tmp_path):
    from sora_jax.text.encoder import load_text_encoder
    from sora_jax.text.tiny import write_tiny_bert

    encoder_dir = write_tiny_bert(tmp_path / "tiny-bert")
    videos = tmp_path / "videos"
    write_video(videos / "long.mp4", _ramp(40, 32, 32), 8)  # 5 s: three 2 s clips of one caption.
    (videos / "long.txt").write_text("a red ball rolls across the field")
    write_video(videos / "still.png", _ramp(1, 32, 32), 1)
    (videos / "still.txt").write_text("two blue cubes")
    out = tmp_path / "store"
    report = prepare(videos, out, workers=0, text_encoder=encoder_dir, caption_tokens=6, **_SETTINGS)
    assert report.clips_written == 4

    store = ClipStore.open(out)
    encoder = load_text_encoder(encoder_dir)
    assert store.caption_dim == encoder.dim
    assert store.caption_encoder == {"model_type": "bert", "name": "tiny-bert", "max_tokens": 6}
    for record in store.records:
        hidden, mask = encoder.encode([record.caption], 6)
        expected = np.asarray(hidden[0])[np.asarray(mask[0])]
        stored = store.read_caption_embedding(record.clip_id)
        assert stored.dtype == np.float16 and stored.shape == expected.shape
        np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=1e-3, atol=1e-3)
    # "two blue cubes" is [CLS] two blue cubes [SEP]; the long caption is cut at 6 tokens.
    assert {r.source: r.caption_tokens for r in store.records} == {"long.mp4": 6, "still.png": 5}

    # Resuming with another encoder setting would mix embeddings: refused, by name.
    with pytest.raises(ValueError, match="caption embeddings"):
        prepare(videos, out, workers=0, text_encoder=encoder_dir, caption_tokens=8, **_SETTINGS)
    with pytest.raises(ValueError, match="caption embeddings"):
        prepare(videos, out, workers=0, **_SETTINGS)
