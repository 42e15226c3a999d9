import itertools

import numpy as np
import pytest

from experiments.world_tiny import get_config
from sora_jax.data.patches import unpatchify
from sora_jax.data.pipeline import batch_stream, make_sources, model_to_pixels, request_stream
from sora_jax.data.prepare import prepare
from sora_jax.data.tokenizer import START_ID
from sora_jax.data.video_io import write_video


def _take(iterator, n):
    return list(itertools.islice(iterator, n))


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_gives_the_same_batches_and_another_seed_others():
    config = get_config("test")
    first, again = _take(batch_stream(config, 4), 3), _take(batch_stream(config, 4), 3)
    assert all(_same(a, b) for a, b in zip(first, again, strict=True))
    assert not _same(first[0], first[1])
    config.seed = 1
    assert not _same(first[0], _take(batch_stream(config, 4), 1)[0])


def test_restored_iterator_state_continues_the_exact_sequence():
    config = get_config("test")
    stream = batch_stream(config, 4)
    _take(stream, 3)
    state = stream.get_state()
    expected = _take(stream, 3)
    resumed = batch_stream(config, 4)
    resumed.set_state(state)
    assert all(_same(a, b) for a, b in zip(expected, _take(resumed, 3), strict=True))


def test_rows_are_full_shapes_vary_and_clips_decode_to_frames():
    config = get_config("test")
    config.data.caption_dropout = 0.0
    batches = _take(batch_stream(config, 8), 4)
    fill = np.mean([(b["segment_ids"] > 0).mean() for b in batches])
    assert fill > 0.98
    shapes = {
        (int(f), *g[1:])
        for b in batches
        for f, g in zip(b["clip_frames"].reshape(-1), b["clip_grid"].reshape(-1, 3), strict=True)
        if f
    }
    assert len(shapes) >= 10  # Many durations and resolutions share one static batch shape.
    batch = batches[0]
    grid, frames = batch["clip_grid"][0, 0], batch["clip_frames"][0, 0]
    clip = unpatchify(
        batch["patches"][0][batch["segment_ids"][0] == 1], grid, config.model.patch_size, frames
    )
    pixels = model_to_pixels(clip)
    assert pixels.shape == (frames, grid[1] * 4, grid[2] * 4, 3) and pixels.std() > 5
    caption = batch["text_tokens"][0][batch["text_segment_ids"][0] == 1]
    assert caption[0] == START_ID and len(caption) > 3


def test_a_caption_that_does_not_fit_its_row_opens_the_next_row_whole(store):
    config = get_config("test")
    config.data.store = store  # Captions "video number I": the start token and 3 words.
    config.data.caption_dropout = 0.0
    config.data.max_caption_tokens = 4
    config.data.text_len = 6  # A second caption would have 2 tokens left: it waits for a row.
    for batch in _take(batch_stream(config, 2), 3):
        for row in range(2):
            slots = np.unique(batch["text_segment_ids"][row][batch["text_segment_ids"][row] > 0])
            for slot in slots:
                assert (batch["text_segment_ids"][row] == slot).sum() == 4


def test_the_world_s_captions_reach_the_model_whole():
    from sora_jax.data import world
    from sora_jax.data.tokenizer import WordTokenizer

    config = get_config()
    tokenizer = WordTokenizer(config.model.text_vocab_size)
    clips = (world.make_clip(0, i, frames=16, height=32, width=32, fps=8.0) for i in range(200))
    assert max(len(tokenizer.encode(c.caption, 10**6)) for c in clips) <= config.data.max_caption_tokens


def test_caption_dropout_leaves_only_the_start_token():
    config = get_config("test")
    config.data.caption_dropout = 1.0
    batch = next(batch_stream(config, 2))
    in_caption = batch["text_segment_ids"] > 0
    assert (batch["text_tokens"][in_caption] == START_ID).all()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of 6 short videos of different sizes, prepared the way users prepare theirs."""
    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for i, (frames, height, width) in enumerate(
        [(12, 48, 64), (6, 40, 40), (9, 64, 48), (1, 32, 56), (16, 36, 64), (4, 56, 56)]
    ):
        video = np.clip(rng.normal(120, 40, (frames, height, width, 3)), 0, 255).astype(np.uint8)
        write_video(folder / f"clip{i}.mp4", video, 8.0)
        (folder / f"clip{i}.txt").write_text(f"video number {i}")
    out = str(tmp_path_factory.mktemp("store") / "store")
    report = prepare(str(folder), out, fps=8.0, workers=0, min_side=8)
    assert report.clips_written == 6, report.failed
    return out


def test_process_shares_are_disjoint_and_cover_the_store(store):
    config = get_config("test")
    config.data.store = store
    sources, weights = make_sources(config)
    requests = request_stream(config, sources, weights)
    epoch = len(sources[0])
    shares = [[requests[p::2][i].index for i in range(epoch // 2)] for p in range(2)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(epoch))
    # The next epoch is reshuffled.
    assert [requests[i].index for i in range(epoch)] != [requests[epoch + i].index for i in range(epoch)]


def test_store_clips_keep_their_aspect_and_mix_with_the_world(store):
    config = get_config("test")
    config.data.store = store
    config.data.store_weight = 0.5
    config.data.caption_dropout = 0.0
    batches = _take(batch_stream(config, 8), 2)
    assert np.mean([(b["segment_ids"] > 0).mean() for b in batches]) > 0.95
    captions = [
        b["text_tokens"][r][b["text_segment_ids"][r] == s].tolist()
        for b in batches
        for r in range(8)
        for s in range(1, 9)
    ]
    from sora_jax.data.tokenizer import WordTokenizer

    number = WordTokenizer(config.model.text_vocab_size).encode("video number", 3).tolist()
    from_store = [c for c in captions if c[:3] == number]
    assert 0 < len(from_store) < len([c for c in captions if c])


def test_a_process_share_of_rows_equals_those_rows_of_the_whole_batch():
    """Rows are packed per row slot, so any split of the rows over processes gives the same batch."""
    config = get_config("test")
    whole = _take(batch_stream(config, 4), 2)
    lower = _take(batch_stream(config, 2, first_row=0, total_rows=4), 2)
    upper = _take(batch_stream(config, 2, first_row=2, total_rows=4), 2)
    for full, low, up in zip(whole, lower, upper, strict=True):
        for name in full:
            np.testing.assert_array_equal(full[name], np.concatenate([low[name], up[name]]), err_msg=name)
    other = _take(batch_stream(config, 2, first_row=1, total_rows=4), 1)[0]
    assert not np.array_equal(other["patches"], lower[0]["patches"])
