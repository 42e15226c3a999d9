"""Callers that go over a whole store (prepare's resume, encode's listing) read the index's summary
and parts, never one row, nor any pixels, per clip they pass over."""

import numpy as np
import pytest
from PIL import Image

from sora_jax.autoencoder.config import tiny_config
from sora_jax.autoencoder.model import build_autoencoder
from sora_jax.autoencoder.trained import TrainedAutoencoder
from sora_jax.data.clip_store import AUTOENCODER_KEY, ClipStore
from sora_jax.data.encode import encode_into_store, store_clips
from sora_jax.data.prepare import prepare

_SETTINGS = {"max_seconds": 2.0, "fps": 8.0, "max_area": 64 * 64}


def _no_records(monkeypatch, one_by_one: bool = True) -> None:
    """Makes listing every record at once, and with ``one_by_one`` reading one by position or id,
    fail the test."""
    monkeypatch.setattr(ClipStore, "records", property(lambda _: pytest.fail("listed every record")))
    if one_by_one:
        monkeypatch.setattr(ClipStore, "record", lambda *_: pytest.fail("read one record"))


def _image(folder, name: str, value: int) -> None:
    folder.mkdir(exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(folder / name)
    (folder / name).with_suffix(".txt").write_text(f"caption of {name}")


def test_prepare_finds_sources_with_clips_but_no_done_mark_from_the_index(tmp_path, monkeypatch):
    inputs, out = tmp_path / "in", tmp_path / "store"
    _image(inputs, "a.png", 10)
    assert prepare(str(inputs), str(out), workers=0, **_SETTINGS).sources_done == 1
    store = ClipStore.open(out)
    # Clips of b.png written by other means, without a done mark, then compacted.
    store.append(np.zeros((1, 32, 32, 3), np.uint8), clip_id="b.png#0", fps=0.0, caption="b",
                 source="b.png", start=0.0)  # fmt: skip
    store.compact(min_segments=1)
    _image(inputs, "b.png", 20)
    _image(inputs, "c.png", 30)
    _no_records(monkeypatch, one_by_one=False)  # It reads back the record of a clip it adds.
    report = prepare(str(inputs), str(out), workers=0, **_SETTINGS)
    assert (report.skipped_done, report.sources_done, report.failures) == (1, 1, {"partial_in_store": 1})
    assert [f["path"] for f in report.failed] == ["b.png"]


@pytest.fixture
def pixels(tmp_path) -> ClipStore:
    """Six compacted 1-frame clips whose pixels are their number."""
    store = ClipStore.create(tmp_path / "pixels")
    for index in range(6):
        store.append(np.full((1, 16, 16, 3), index, np.uint8), clip_id=f"v{index}.mp4#0", fps=8.0,
                     caption=f"clip {index}", source=f"v{index}.mp4", start=0.0,
                     phash=f"{index:016x}")  # fmt: skip
    store.compact(min_segments=1)
    return ClipStore.open(store.path)


def _counting_reads(monkeypatch, store: ClipStore) -> list[int]:
    """The positions of ``store`` (by path) whose clips are read from here on."""
    read, real = [], ClipStore.read

    def counted(self, key):
        if self.path == store.path:
            read.append(key)
        return real(self, key)

    monkeypatch.setattr(ClipStore, "read", counted)
    return read


def test_store_clips_lists_from_the_index_parts_and_reads_only_what_is_loaded(pixels, monkeypatch):
    read = _counting_reads(monkeypatch, pixels)
    with monkeypatch.context() as listing:
        _no_records(listing)
        clips = list(store_clips(pixels, keep=lambda clip_id: clip_id != "v2.mp4#0"))
    assert [clip.clip_id for clip in clips] == [f"v{i}.mp4#0" for i in (0, 1, 3, 4, 5)]
    assert read == [] and clips[2].frames is None and clips[2].phash == f"{3:016x}"
    loaded = clips[2].loaded()
    assert read == [3] and loaded.frames.shape == (1, 16, 16, 3) and int(loaded.frames.max()) == 3
    assert (loaded.clip_id, loaded.caption, loaded.phash) == ("v3.mp4#0", "clip 3", f"{3:016x}")


def test_a_resumed_encode_reads_no_pixels_of_the_clips_it_holds(pixels, tmp_path, monkeypatch):
    config = tiny_config(channel_multipliers=(1, 2), temporal_downsample=(True,), norm="rms")
    micro = TrainedAutoencoder(build_autoencoder(config, seed=0), config, "micro", 0)
    # A finished earlier run's output (its latents' values do not matter here).
    channels = config.latent_channels
    output = ClipStore.create(
        tmp_path / "latents", dtype="float16", channels=channels, extra={AUTOENCODER_KEY: micro.describe()}
    )
    for index in range(6):
        output.append(np.full((1, 2, 2, channels), index, np.float16), clip_id=f"v{index}.mp4#0", fps=8.0,
                      caption=f"clip {index}", source=f"v{index}.mp4", start=0.0)  # fmt: skip
    output.flush()
    read = _counting_reads(monkeypatch, pixels)
    report = encode_into_store(micro, store_clips(pixels), str(tmp_path / "latents"))
    assert (report.clips_present, report.clips_written, read) == (6, 0, [])
