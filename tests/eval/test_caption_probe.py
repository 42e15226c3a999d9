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


def test_denoising_error_of_a_fresh_network_is_the_clips_own_square_or_the_linear_guess_s():
    from sora_jax.data.patches import patchify
    from sora_jax.data.pipeline import pixels_to_model
    from sora_jax.diffusion.flow import preconditioning

    config = get_config("test")
    graphdef, params = nnx.split(build_model(config, 0), nnx.Param)
    clips = _clips(2, frames=8)
    x0 = [patchify(pixels_to_model(c.frames), config.model.patch_size)[0] for c in clips]
    noise = [np.random.default_rng([0, i]).standard_normal(x.shape) for i, x in enumerate(x0)]
    timesteps = (0.05, 0.5)
    # adaLN-Zero: a fresh network outputs 0, so a clean-clip (data) prediction misses by x0 itself.
    fresh = caption_probe.denoising_error(graphdef, params, config, clips, timesteps)
    for t in timesteps:
        np.testing.assert_allclose(fresh[t]["model"], np.mean([np.mean(x**2) for x in x0]), rtol=1e-5)
        noisy = [np.mean((t * (e - x)) ** 2) for x, e in zip(x0, noise, strict=True)]
        np.testing.assert_allclose(fresh[t]["noisy"], np.mean(noisy), rtol=1e-4)
    # Preconditioned, the same 0 leaves the linear guess from the noisy clip, far better near t = 0.
    config.diffusion.prediction = "preconditioned"
    guessed = caption_probe.denoising_error(graphdef, params, config, clips, timesteps)
    for t in timesteps:
        skip = float(preconditioning(np.float32(t), config.diffusion.sigma_data)[0])
        misses = [x - skip * ((1 - t) * x + t * e) for x, e in zip(x0, noise, strict=True)]
        expected = np.mean([np.mean(m**2) for m in misses])
        np.testing.assert_allclose(guessed[t]["model"], expected, rtol=1e-4)
    assert guessed[0.05]["model"] < 0.2 * fresh[0.05]["model"]
