"""Does a model draw what its caption asks for? Probes of caption following in the physics world.

Four measurements, each a plain function so a benchmark or a test can put any video beside them:

* **Colour prompts** (:func:`colour_probe`): one object of each of the world's nine colours, asked
  for with the same seed and the same words but the colour. A video's *dominant object colour* is
  the world colour with the most pixels near it (RGB distance below ``tolerance``); a model that
  follows its captions makes the asked colour dominant in every video. Two-colour prompts ask for
  two objects: both colours must show as objects (:func:`seen_colours`, the world metric's test of
  an object seen).
* **Backdrop** (:func:`speckle`): the mean absolute difference, in pixel levels, between each frame
  and its 3x3 median, over the pixels of no object colour. The world's walls (plain, stripes,
  checkers, gradients with one-pixel soft edges) score low; per-pixel noise scores high.
* **Caption sensitivity** (:func:`caption_sensitivity`): how far the network's clean prediction of
  held-out clips moves when only the caption's colour words change (each to the next world colour),
  at fixed noise and timesteps, beside how far it moves when the caption is dropped. A model that
  reads colour words moves by about as much as the colour of its objects is worth.
* **Denoising** (:func:`denoising_error`): the error of the network's clean prediction of held-out
  clips from one noisy look, beside the error of the noisy clip itself; near t = 0 it shows what
  detail a model drops even when it is shown the clip almost clean.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.data import world
from sora_jax.data.patches import patchify
from sora_jax.data.pipeline import pixels_to_model
from sora_jax.diffusion.flow import clean_predictor
from sora_jax.eval.world_score import colour_masks, follow

COLOURS = tuple(world.COLOURS)
COLOUR_PROMPT = "a large {} ball falls and bounces on the floor twice"
PAIR_PROMPT = "a large {} ball falls and bounces twice; a large {} box drops to the left"
# Pairs of distinct hues, each colour once or twice.
COLOUR_PAIRS = (
    ("red", "blue"),
    ("yellow", "purple"),
    ("green", "pink"),
    ("cyan", "orange"),
    ("white", "red"),
    ("blue", "yellow"),
)
_LARGE_AREA = float(np.pi * (world.SIZES["large"] * 32) ** 2)  # A large ball at 32 pixels high.


def colour_pixels(video: np.ndarray, tolerance: float = 60.0) -> dict[str, int]:
    """Pixels of uint8 ``video [T, H, W, 3]`` within ``tolerance`` of each world object colour."""
    return {name: int(mask.sum()) for name, mask in colour_masks(video, tolerance).items()}


def dominant_colour(video: np.ndarray, tolerance: float = 60.0, min_pixels: int = 4) -> str | None:
    """The world colour with the most pixels near it in ``video``; None when none has ``min_pixels``
    pixels a frame on average (no object of any colour)."""
    counts = colour_pixels(video, tolerance)
    best = max(counts, key=counts.get)
    return best if counts[best] >= min_pixels * len(video) else None


def seen_colours(video: np.ndarray, object_area: float, tolerance: float = 60.0) -> set[str]:
    """The colours that show as one object of about ``object_area`` pixels in at least a quarter of
    the frames, by the world metric's test (:func:`sora_jax.eval.world_score.follow`: at least two
    pixels, at most three times the area, not spread wider than the object)."""
    seen = set()
    for name, mask in colour_masks(video, tolerance).items():
        centres = follow(mask, 2, 3.0 * object_area + 8.0, np.sqrt(object_area) + 2.0)
        if np.isfinite(centres[:, 0]).sum() >= max(1, len(video) // 4):
            seen.add(name)
    return seen


def speckle(video: np.ndarray, tolerance: float = 60.0) -> float:
    """Mean absolute difference (pixel levels, 0-255) between ``video``'s frames and their 3x3
    median, over the pixels near no object colour (the backdrop)."""
    pixels = video.astype(np.float32)
    padded = np.pad(pixels, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = video.shape[1:3]
    shifted = [padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
    deviation = np.abs(pixels - np.median(np.stack(shifted), axis=0)).mean(axis=-1)
    backdrop = ~np.any(np.stack(list(colour_masks(video, tolerance).values())), axis=0)
    return float(deviation[backdrop].mean()) if backdrop.any() else float("nan")


def colour_probe(
    generate: Callable[[str, int], np.ndarray], seed: int = 11, object_area: float = _LARGE_AREA
) -> dict:
    """Caption following of a generator ``generate(prompt, seed) -> uint8 [T, H, W, 3]``.

    Returns ``colour_hits`` (of the 9 single-colour prompts, how many make the asked colour
    dominant), ``dominant`` (the dominant colour per asked colour), ``pair_hits`` (of the
    two-colour prompts, how many show both colours as objects), ``speckle`` (mean over all videos)
    and ``videos`` (prompt -> video, for frame strips).
    """
    videos, dominant = {}, {}
    for colour in COLOURS:
        prompt = COLOUR_PROMPT.format(colour)
        videos[prompt] = generate(prompt, seed)
        dominant[colour] = dominant_colour(videos[prompt])
    pair_hits = 0
    for first, second in COLOUR_PAIRS:
        prompt = PAIR_PROMPT.format(first, second)
        videos[prompt] = generate(prompt, seed)
        pair_hits += {first, second} <= seen_colours(videos[prompt], object_area)
    return {
        "colour_hits": sum(dominant[c] == c for c in COLOURS),
        "dominant": dominant,
        "pair_hits": pair_hits,
        "pairs": len(COLOUR_PAIRS),
        "speckle": float(np.nanmean([speckle(v) for v in videos.values()])),
        "videos": videos,
    }


_COLOUR_WORD = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


def swap_colours(caption: str) -> str:
    """``caption`` with every object colour word replaced by the next colour of the world's list."""
    return _COLOUR_WORD.sub(lambda m: COLOURS[(COLOURS.index(m.group(1)) + 1) % len(COLOURS)], caption)


def _clean_prediction(graphdef: nnx.GraphDef, params: nnx.State, config: ml_collections.ConfigDict):
    """Jitted ``clean(batch, noisy [R, N, P], t) -> [R, N, P]``: the network's clean prediction of
    rows holding one clip each, all at timestep ``t``, whatever the run's prediction target."""
    model = nnx.merge(graphdef, params)

    @jax.jit
    def clean(batch: dict, noisy: jax.Array, t: jax.Array) -> jax.Array:
        return clean_predictor(model, batch, config.diffusion)(noisy, jnp.full((noisy.shape[0], 1), t))

    return clean


def caption_sensitivity(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    config: ml_collections.ConfigDict,
    clips: Sequence[world.WorldClip],
    timesteps: Sequence[float] = (0.2, 0.5, 0.8),
    seed: int = 0,
) -> dict[str, float]:
    """Mean square change of the network's clean prediction of ``clips`` (pixel units in [-1, 1])
    when their captions' colour words are swapped (``colour_swap``) or the captions dropped
    (``caption_drop``), at fixed noise, averaged over ``timesteps``; ``prediction_ms`` is the
    prediction's own mean square, for scale. Clips whose caption names no colour are skipped."""
    from sora_jax.eval.generate import prompt_batch, prompt_encoder

    patch = tuple(config.model.patch_size)
    encode = prompt_encoder(config)
    clean = _clean_prediction(graphdef, params, config)
    swap, drop, scale = [], [], []
    for index, clip in enumerate(clips):
        swapped = swap_colours(clip.caption)
        if swapped == clip.caption:
            continue
        frames, height, width = clip.frames.shape[:3]
        x0 = patchify(pixels_to_model(clip.frames), patch)[0]
        rows = []
        for caption in (clip.caption, swapped):
            states = encode(caption) if encode is not None else None
            rows.append(prompt_batch(config, caption, frames, height, width, states))
        batch = {k: np.concatenate([rows[0][k], rows[1][k][:1]]) for k in rows[0]}  # caption, none, swap
        noise = np.random.default_rng([seed, index]).standard_normal(x0.shape).astype(np.float32)
        for t in timesteps:
            noisy = np.broadcast_to((1 - t) * x0 + t * noise, (3, *x0.shape))
            predicted = np.asarray(clean(batch, jnp.asarray(noisy), jnp.float32(t)))
            swap.append(np.mean((predicted[2] - predicted[0]) ** 2))
            drop.append(np.mean((predicted[1] - predicted[0]) ** 2))
            scale.append(np.mean(predicted[0] ** 2))
    return {
        "colour_swap": float(np.mean(swap)),
        "caption_drop": float(np.mean(drop)),
        "prediction_ms": float(np.mean(scale)),
        "clips": len(swap) // len(timesteps),
    }


def denoising_error(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    config: ml_collections.ConfigDict,
    clips: Sequence[world.WorldClip],
    timesteps: Sequence[float] = (0.05, 0.2, 0.5, 0.8),
    seed: int = 0,
) -> dict[float, dict[str, float]]:
    """How well the network recovers held-out ``clips`` from one noisy look, with their captions.

    Per t: ``model``, the mean square error of its clean prediction (pixel units in [-1, 1], fixed
    noise), and ``noisy``, that of the noisy clip itself taken as the guess, ``t^2 E(e - x0)^2``.
    Near t = 0 a network that keeps what it is shown is below ``noisy``; one above it there loses
    detail (textures, small or fast objects) that its input still holds, and its samples, whose
    last step is such a prediction, lose it too.
    """
    from sora_jax.eval.generate import prompt_batch, prompt_encoder

    patch = tuple(config.model.patch_size)
    encode = prompt_encoder(config)
    clean = _clean_prediction(graphdef, params, config)
    errors: dict[float, dict[str, list[float]]] = {t: {"model": [], "noisy": []} for t in timesteps}
    for index, clip in enumerate(clips):
        frames, height, width = clip.frames.shape[:3]
        x0 = patchify(pixels_to_model(clip.frames), patch)[0]
        states = encode(clip.caption) if encode is not None else None
        batch = prompt_batch(config, clip.caption, frames, height, width, states)
        rows = batch["segment_ids"].shape[0]
        noise = np.random.default_rng([seed, index]).standard_normal(x0.shape).astype(np.float32)
        for t in timesteps:
            noisy = (1 - t) * x0 + t * noise
            predicted = np.asarray(
                clean(batch, jnp.asarray(np.broadcast_to(noisy, (rows, *x0.shape))), jnp.float32(t))
            )
            errors[t]["model"].append(np.mean((predicted[0] - x0) ** 2))
            errors[t]["noisy"].append(np.mean((noisy - x0) ** 2))
    return {t: {name: float(np.mean(values)) for name, values in e.items()} for t, e in errors.items()}


def frame_strip(videos: Sequence[np.ndarray], frames: int = 8, gap: int = 2) -> np.ndarray:
    """uint8 ``[rows * (H + gap), frames * (W + gap), 3]``: one video a row, ``frames`` of its frames
    evenly spaced left to right, on a white ground (for a PNG beside the numbers)."""
    height, width = videos[0].shape[1:3]
    strip = np.full((len(videos) * (height + gap), frames * (width + gap), 3), 255, np.uint8)
    for row, video in enumerate(videos):
        picks = np.linspace(0, len(video) - 1, frames).round().astype(int)
        for col, k in enumerate(picks):
            top, left = row * (height + gap), col * (width + gap)
            strip[top : top + height, left : left + width] = video[k]
    return strip
