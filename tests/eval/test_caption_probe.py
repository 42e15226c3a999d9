"""The caption probes measure what they claim on videos whose answer is known: the world's own clips,
noise, and models that do or do not read their captions."""

import numpy as np
from flax import nnx

from experiments.world_tiny import get_config
from sora_jax.data import world
from sora_jax.eval import caption_probe
from sora_jax.model.dit import build_model
from tests.perturb import perturbed


def _clips(count, frames=8):
    return [world.make_clip(7, i, frames=frames, height=32, width=32, fps=8.0) for i in range(count)]


def test_a_one_object_clip_s_dominant_colour_is_its_object_s():
    clips = [
        c
        for c in _clips(60)
        if len(c.scene["objects"]) == 1
        and c.scene["objects"][0]["size"] != "small"
        and c.visible.mean() > 0.5
    ]
    assert len(clips) >= 5
    for clip in clips:
        assert caption_probe.dominant_colour(clip.frames) == clip.scene["objects"][0]["colour"]
    backdrop_only = np.full((8, 32, 32, 3), 80, np.uint8)
    assert caption_probe.dominant_colour(backdrop_only) is None


def test_seen_colours_are_the_objects_of_a_clip_and_noise_shows_none():
    for clip in _clips(12):
        area = max(np.pi * (o.get("radius", o.get("half_size", 0)) * 32) ** 2 for o in clip.scene["objects"])
        seen = caption_probe.seen_colours(clip.frames, area)
        assert seen <= {o["colour"] for o in clip.scene["objects"]}
    large = [c for c in _clips(40) if all(o["size"] == "large" for o in c.scene["objects"])]
    colours = [{o["colour"] for o in c.scene["objects"]} for c in large]
    assert any(
        caption_probe.seen_colours(c.frames, caption_probe._LARGE_AREA) == w
        for c, w in zip(large, colours, strict=True)
    )
    noise = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    assert caption_probe.seen_colours(noise, caption_probe._LARGE_AREA) == set()


def test_speckle_separates_the_world_s_backdrops_from_noisy_ones():
    clips = _clips(20)
    clean = [caption_probe.speckle(c.frames) for c in clips]
    rng = np.random.default_rng(0)
    noisy = [
        caption_probe.speckle(np.clip(c.frames + rng.normal(0, 12, c.frames.shape), 0, 255).astype(np.uint8))
        for c in clips
    ]
    assert max(clean) < 6.0 and min(noisy) > 8.0, (clean, noisy)


def test_swapping_colours_changes_only_the_colour_words():
    caption = "a large red ball falls; a small white box slides left, on a striped wall"
    assert caption_probe.swap_colours(caption) == (
        "a large orange ball falls; a small red box slides left, on a striped wall"
    )
    assert caption_probe.swap_colours("a ball falls") == "a ball falls"


def test_colour_probe_counts_hits_of_a_generator_that_draws_the_asked_colour():
    def painter(prompt, seed):
        video = np.full((8, 32, 32, 3), 80, np.uint8)
        asked = [colour for colour in caption_probe.COLOURS if f" {colour} " in f" {prompt} "]
        for n, colour in enumerate(asked):
            video[:, 10 + 8 * n : 15 + 8 * n, 10:15] = world.COLOURS[colour]
        return video

    result = caption_probe.colour_probe(painter)
    assert result["colour_hits"] == 9 and result["pair_hits"] == len(caption_probe.COLOUR_PAIRS)
    assert result["speckle"] < 1.0
    blank = caption_probe.colour_probe(lambda prompt, seed: np.full((8, 32, 32, 3), 80, np.uint8))
    assert blank["colour_hits"] == 0 and blank["pair_hits"] == 0


def test_caption_sensitivity_is_zero_for_a_model_that_ignores_captions():
    config = get_config("test")
    config.train.sample_frames = 8
    model = build_model(config, 0)
    graphdef, params = nnx.split(model, nnx.Param)
    clips = _clips(3, frames=8)
    fresh = caption_probe.caption_sensitivity(graphdef, params, config, clips)
    assert fresh["colour_swap"] == 0.0 and fresh["caption_drop"] == 0.0  # adaLN-Zero: output 0.
    # Perturbed, every layer is live: colour words and the caption now move the prediction.
    live = perturbed(params, seed=1)
    moved = caption_probe.caption_sensitivity(graphdef, live, config, clips)
    assert moved["colour_swap"] > 1e-6 and moved["caption_drop"] > 1e-6
    assert moved["clips"] == 3
