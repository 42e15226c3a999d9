import numpy as np

from experiments.world_tiny import get_config
from sora_jax.data.patches import unpatchify
from sora_jax.data.pipeline import WorldBatches, batch_stream, model_to_pixels
from sora_jax.data.tokenizer import START_ID


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_are_a_pure_function_of_seed_and_step():
    config = get_config("test")
    first, again = WorldBatches(config).batch(3), WorldBatches(config).batch(3)
    assert _same(first, again)
    assert not _same(first, WorldBatches(config).batch(4))
    config.seed = 1
    assert not _same(first, WorldBatches(config).batch(3))


def test_stream_resumed_at_a_step_continues_the_same_sequence():
    config = get_config("test")
    config.train.steps = 5
    full = list(batch_stream(config, 0))
    resumed = list(batch_stream(config, 3))
    assert len(full) == 5 and len(resumed) == 2
    assert _same(full[3], resumed[0]) and _same(full[4], resumed[1])


def test_a_process_builds_exactly_its_rows_of_the_global_batch():
    config = get_config("test")
    whole = WorldBatches(config).batch(2)
    halves = [WorldBatches(config, rows).batch(2) for rows in ([0, 1, 2, 3], [4, 5, 6, 7])]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_rows_are_full_shapes_vary_and_clips_decode_to_frames():
    config = get_config("test")
    config.data.caption_dropout = 0.0
    batches = [WorldBatches(config).batch(s) for s in range(4)]
    fill = np.mean([(b["segment_ids"] > 0).mean() for b in batches])
    assert fill > 0.9
    shapes = {tuple(g) for b in batches for g in b["clip_grid"].reshape(-1, 3) if g[0] > 0}
    assert len(shapes) >= 5  # Many durations and resolutions share one static batch shape.
    batch = batches[0]
    grid, frames = batch["clip_grid"][0, 0], batch["clip_frames"][0, 0]
    clip = unpatchify(
        batch["patches"][0][batch["segment_ids"][0] == 1], grid, config.model.patch_size, frames
    )
    pixels = model_to_pixels(clip)
    assert pixels.shape == (frames, grid[1] * 4, grid[2] * 4, 3) and pixels.std() > 5
    caption = batch["text_tokens"][0][batch["text_segment_ids"][0] == 1]
    assert caption[0] == START_ID and len(caption) > 3


def test_caption_dropout_leaves_only_the_start_token():
    config = get_config("test")
    config.data.caption_dropout = 1.0
    batch = WorldBatches(config).batch(0)
    in_caption = batch["text_segment_ids"] > 0
    assert (batch["text_tokens"][in_caption] == START_ID).all()
