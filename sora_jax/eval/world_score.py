"""Scoring a video against the physics-world scene its caption describes: is it the world it was asked for?

A held-out caption comes from a world clip (``world.make_clip(seed, index, ...)``), so the scene it
describes is known exactly: :func:`scene_facts` reads from that clip what its caption says of each
object (its colour, which way it heads, whether it falls, how often it bounces, whether it passes
behind the pillar and comes out). A generated video is not expected to match the clip pixel for
pixel, only those facts. :func:`world_scores` finds each object in the video by its colour (the
world's object colours are saturated and distinct from its backdrops and pillars), follows its
centre, and scores, each in [0, 1]:

==============  ==========================================================================
colours         Jaccard index of the object colours seen and the colours of the scene
count           1 if exactly the scene's number of object colours is seen
direction       objects that head left or right: the followed centre moves that way
gravity         falling objects: a parabola fitted to the centre's height while the scene
                has it falling bends downwards, at least a quarter as strongly as in the scene
bounces         objects that move: as many falling-to-rising turns as the scene has, counted
                over the frames the object is seen in
permanence      objects that pass behind the pillar: seen before, unseen at least once while
                the scene hides them, seen again after
consistency     the share of the followed centres' frame-to-frame steps no longer than the
                scene's largest step plus two pixels (no jumps, no teleporting)
==============  ==========================================================================

A score is NaN when the scene gives it nothing to judge (no falling object, say); ``overall`` is
the mean of the others. An object counts as seen in a frame when at least ``min_pixels`` pixels lie
within ``colour_tolerance`` (RGB distance) of its colour, at most about three times its area and
no farther apart than about its size (a frame washed or scattered with its colour, noise say, shows
no object).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sora_jax.data import world

BOUNCE_EPS = 1.0  # pixels a frame: slower height changes are neither falling nor rising
SCORES = ("colours", "count", "direction", "gravity", "bounces", "permanence", "consistency")


@dataclasses.dataclass(frozen=True)
class ObjectFacts:
    """What the caption says of one object, in pixels of a ``height``-pixel view (y points down)."""

    colour: str
    heading: int  # +1 right, -1 left, 0 neither
    falling: tuple[int, int] | None  # frames [start, stop) of its first free fall, to the impact
    heights: np.ndarray  # float [T] the centre's height in the scene (pixels, down), frame by frame
    hidden: tuple[int, int] | None  # frames [start, stop) behind the pillar, if it comes out after
    largest_step: float  # the largest frame-to-frame move of its centre, pixels
    gravity: float  # the downward acceleration while falling, pixels / frame^2 (0 if not falling)
    area: float  # its area in pixels


def _turns(y: np.ndarray, eps: float) -> int:
    """Falling-to-rising turns of a height series in pixels (y down): a descent then an ascent."""
    dy = np.diff(y[np.isfinite(y)])
    dy = dy[np.abs(dy) > eps]
    return int(np.sum((dy[:-1] > 0) & (dy[1:] < 0)))


def _area(obj: dict, height: int) -> float:
    if obj["kind"] == "ball":
        return float(np.pi * (obj["radius"] * height) ** 2)
    return float((2.0 * obj["half_size"] * height) ** 2)


def scene_facts(clip: world.WorldClip) -> list[ObjectFacts]:
    """The facts of every object of ``clip``, the clip its held-out caption was written for."""
    frames, height = clip.frames.shape[0], clip.frames.shape[1]
    facts = []
    for n, obj in enumerate(clip.scene["objects"]):
        x, y = clip.positions[:, n, 0].astype(np.float64), clip.positions[:, n, 1].astype(np.float64)
        moved = np.flatnonzero(np.abs(x - x[0]) > 0.02 * height)
        heading = (
            int(np.sign(x[moved[0]] - x[0])) if moved.size and np.abs(np.diff(x)).sum() > 0.05 * height else 0
        )
        # Free fall: from the first frame while the descent speeds up, to the impact.
        falling = None
        dy = np.diff(y)
        if frames >= 4 and dy[0] > 0:
            stop = next((k for k in range(1, len(dy)) if dy[k] <= dy[k - 1]), len(dy)) + 1
            if stop >= 4 and y[stop - 1] - y[0] > 0.03 * height:
                falling = (0, stop)
        gravity = 0.0
        if falling is not None:
            t = np.arange(*falling, dtype=np.float64)
            gravity = 2.0 * np.polyfit(t, y[falling[0] : falling[1]], 2)[0]
        hidden = None
        visible = clip.visible[:, n]
        enter = next((k for k in range(1, frames) if not visible[k] and visible[k - 1]), None)
        if enter is not None:
            out = next((k for k in range(enter, frames) if visible[k]), None)
            in_view = (0 <= x[enter]) and (x[enter] < clip.frames.shape[2])
            if out is not None and in_view and out - enter >= 1 and frames - out >= 1:
                hidden = (enter, out)
        steps = np.hypot(np.diff(x), np.diff(y))
        facts.append(
            ObjectFacts(
                colour=obj["colour"],
                heading=heading,
                falling=falling,
                heights=y,
                hidden=hidden,
                largest_step=float(steps.max()) if steps.size else 0.0,
                gravity=float(gravity),
                area=_area(obj, height),
            )
        )
    return facts


def colour_masks(video: np.ndarray, tolerance: float = 60.0) -> dict[str, np.ndarray]:
    """bool ``[T, H, W]`` per object colour: pixels within ``tolerance`` of it (RGB distance)."""
    pixels = video.astype(np.float32)
    return {
        name: np.linalg.norm(pixels - np.asarray(rgb, np.float32), axis=-1) < tolerance
        for name, rgb in world.COLOURS.items()
    }


def follow(
    mask: np.ndarray, min_pixels: int, max_pixels: float = np.inf, max_spread: float = np.inf
) -> np.ndarray:
    """``[T, 2]`` (x, y) centre of the mask in each frame; NaN where fewer than ``min_pixels`` or more
    than ``max_pixels`` are set, or where they spread (RMS distance from their centre) over more than
    ``max_spread`` pixels: a wash or a scatter of the colour is not one object."""
    counts = mask.sum(axis=(1, 2)).astype(np.float64)
    rows, cols = np.arange(mask.shape[1]) + 0.5, np.arange(mask.shape[2]) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (mask.sum(axis=1) * cols).sum(axis=1) / counts
        y = (mask.sum(axis=2) * rows).sum(axis=1) / counts
        x2 = (mask.sum(axis=1) * cols**2).sum(axis=1) / counts
        y2 = (mask.sum(axis=2) * rows**2).sum(axis=1) / counts
    spread = np.sqrt(np.maximum(x2 - x**2 + y2 - y**2, 0.0))
    centres = np.stack([x, y], axis=-1)
    centres[(counts < min_pixels) | (counts > max_pixels) | ~(spread <= max_spread)] = np.nan
    return centres


def world_scores(
    video: np.ndarray, facts: list[ObjectFacts], *, colour_tolerance: float = 60.0, min_pixels: int = 2
) -> dict[str, float]:
    """The scores of ``video`` (uint8 ``[T, H, W, 3]``) against the scene ``facts``, and ``overall``."""
    frames = video.shape[0]
    masks = colour_masks(video, colour_tolerance)
    # An object's colour covers at most about its area (plus anti-aliased edges); a colour of the
    # scene is followed with that cap, any other colour with the largest object's.
    largest = max((fact.area for fact in facts), default=0.0)
    areas = {name: largest for name in masks} | {fact.colour: fact.area for fact in facts}
    centres = {
        name: follow(mask, min_pixels, 3.0 * areas[name] + 8.0, np.sqrt(areas[name]) + 2.0)
        for name, mask in masks.items()
    }
    seen = {name for name, c in centres.items() if np.isfinite(c[:, 0]).sum() >= max(1, frames // 4)}
    wanted = {f.colour for f in facts}
    scores: dict[str, list[float]] = {name: [] for name in SCORES}
    scores["colours"].append(len(seen & wanted) / max(len(seen | wanted), 1))
    scores["count"].append(float(len(seen) == len(wanted)))
    for fact in facts:
        track = centres[fact.colour]
        present = np.isfinite(track[:, 0])
        x, y = track[:, 0], track[:, 1]
        if fact.heading:  # Which way it first moves (it may come back off a wall later).
            found = np.flatnonzero(present)
            shift = x[found] - x[found[0]] if found.size else np.zeros(0)
            moved = shift[np.abs(shift) >= 1.0]
            scores["direction"].append(float(moved.size > 0 and np.sign(moved[0]) == fact.heading))
        if fact.falling is not None:
            window = np.arange(*fact.falling)
            usable = window[present[window]]
            bend = 2.0 * np.polyfit(usable, y[usable], 2)[0] if usable.size >= 4 else 0.0
            scores["gravity"].append(float(bend >= 0.25 * fact.gravity))
        if fact.heading or fact.falling is not None:  # Turns counted over the frames it is seen in.
            expected = _turns(np.where(present, fact.heights, np.nan), BOUNCE_EPS)
            found = _turns(y, BOUNCE_EPS)
            scores["bounces"].append(float(present.sum() >= frames // 2 and found == expected))
        if fact.hidden is not None:
            start, stop = fact.hidden
            # Its edges may show beside the pillar while its centre is behind: unseen once is hidden.
            before, during, after = present[:start].any(), present[start:stop].all(), present[stop:].any()
            scores["permanence"].append(float(before and not during and after))
        steps = np.hypot(np.diff(x), np.diff(y))
        steps = steps[np.isfinite(steps)]
        if steps.size:
            scores["consistency"].append(float(np.mean(steps <= fact.largest_step + 2.0)))
        else:
            scores["consistency"].append(0.0)  # Never followed for two frames running.
    result = {name: float(np.mean(values)) if values else float("nan") for name, values in scores.items()}
    judged = [value for value in result.values() if np.isfinite(value)]
    result["overall"] = float(np.mean(judged))
    return result


REFERENCES = ("real", "other_scene", "noise", "frozen", "shuffled", "wrong_colour")


def reference_scores(clips: Sequence[world.WorldClip], seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean scores, per reference, of videos every generator can be put beside, each scored against
    its clip's scene: ``real`` (the clip as rendered, what a perfect world simulator scores),
    ``other_scene`` (the next clip of ``clips``: a real world video that ignores the caption, i.e.
    chance for a generator that makes the world but not the scene asked for), ``noise``, ``frozen``
    (its first frame held), ``shuffled`` (its frames in random order, seeded by ``seed``) and
    ``wrong_colour`` (colours moved round the hue circle). Needs at least two clips."""
    if len(clips) < 2:
        raise ValueError(f"reference scores need at least 2 clips (other_scene), got {len(clips)}")
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in REFERENCES}
    for index, clip in enumerate(clips):
        facts, video = scene_facts(clip), clip.frames
        other = clips[(index + 1) % len(clips)].frames
        variants = {
            "real": video,
            "other_scene": other,
            "noise": rng.integers(0, 256, video.shape, dtype=np.uint8),
            "frozen": np.repeat(video[:1], len(video), axis=0),
            "shuffled": video[rng.permutation(len(video))],
            "wrong_colour": video[..., [1, 2, 0]],
        }
        for name, variant in variants.items():
            rows[name].append(world_scores(variant, facts))
    return {name: mean_scores(found) for name, found in rows.items()}


def mean_scores(
    rows: Sequence[dict[str, float]], names: Sequence[str] = (*SCORES, "overall")
) -> dict[str, float]:
    """The mean of each score ``names`` over ``rows`` (``world_scores`` results by default), skipping
    NaN; NaN if all are."""
    result = {}
    for score in names:
        values = np.asarray([row[score] for row in rows], np.float64)
        values = values[np.isfinite(values)]
        result[score] = float(values.mean()) if values.size else float("nan")
    return result


def corruption_check(clips: int = 40, seed: int = 1_000_003) -> dict[str, dict[str, float]]:
    """:func:`reference_scores` of ``clips`` held-out world clips (16 frames, 32x32, 8 fps, of world
    seed ``seed``): what the metric must tell apart. ``python -m sora_jax.eval.world_score`` prints them."""
    made = [world.make_clip(seed, index, frames=16, height=32, width=32, fps=8.0) for index in range(clips)]
    return reference_scores(made)


if __name__ == "__main__":
    for name, scores in corruption_check().items():
        print(f"{name:13s}", "  ".join(f"{score} {value:.2f}" for score, value in scores.items()))
