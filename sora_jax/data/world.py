"""The built-in "physics world": procedural captioned videos whose ground truth is known.

Each clip is a side view of a small 2D world. World units: the view is 1.0 unit high and
``aspect = width / height`` units wide; x points right from the left wall, y points up from the
bottom of the view, and a floor sits at ``y = scene["world"]["floor"]``. Balls and square boxes
fall under gravity, bounce off the floor and walls, and collide with each other. An optional
opaque pillar stands in front of the objects, and an optional camera pan moves the view across a
world twice as wide as the view.

Everything is a pure function of ``(seed, index)`` plus the output format: the physics runs on a
fixed 1/240 s grid regardless of fps, so the same scene at another fps or resolution is the same
trajectory sampled differently. Only correctly rounded IEEE operations (arithmetic, sqrt, floor,
mod; no transcendental functions, whose SIMD versions differ by CPU) touch the output, so frames
are bit-identical across machines for a given numpy version.

The simulation also records every audible impact (floor bounces and landings, wall hits, collisions
between objects) as an :class:`Impact` at the step it happens; ``world_audio`` renders a clip's
sound from them, and captions may mention them (``caption_sounds``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from sora_jax.data import world_audio
from sora_jax.data.world_audio import Impact  # Re-exported: world.Impact is the record of a simulated impact.

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 190, 60),
    "cyan": (40, 215, 225),
    "blue": (45, 95, 245),
    "purple": (165, 60, 225),
    "pink": (250, 110, 185),
    "white": (245, 245, 245),
}
"""Object colours: saturated, so they stand out against the muted backdrops below."""

PILLAR_COLOURS: dict[str, tuple[int, int, int]] = {
    "grey": (175, 175, 175),
    "brown": (130, 85, 45),
    "black": (15, 15, 20),
}
"""Occluder colours, disjoint from COLOURS so a caption's colour word names one thing."""

SIZES: dict[str, float] = {"small": 0.05, "medium": 0.075, "large": 0.1}
"""Ball radius per size name, in world units; a box's half-size is 0.9 of it."""

BACKGROUNDS = ("plain", "stripes", "checker", "gradient")
_BACKGROUND_WORDS = {"plain": "plain", "stripes": "striped", "checker": "checkered"}
_BACKDROP_TONES = ((70, 78, 92), (92, 80, 70), (64, 84, 72), (84, 74, 96), (90, 90, 86))

STEPS_PER_SECOND = 240
"""Physics steps per simulated second; an integer so frame times land exactly on the grid."""
_DT = 1.0 / STEPS_PER_SECOND
# A floor impact whose rebound would rise less than this (units) stops the object dead: no
# sub-pixel chatter, and every bounce the physics makes is big enough to see.
_MIN_HOP = 0.02
_MIN_WALL_SPEED = 0.05  # slower wall contacts (units/s) are pushes, not hits worth a caption
_BALL_PAIR_RESTITUTION = 0.9
# Slower impacts (normal speed, units/s) are silent: resting contact meets the floor or another
# object at g * dt ~ 0.02 units/s every step, and that is no sound.
_MIN_IMPACT_SPEED = 0.15
_WHERE = {True: ("in the air", "in mid air"), False: ("on the floor", "resting on the floor")}
_PANS = ("the camera pans {}", "the camera moves {}", "the view pans to the {}")
_COUNT_WORDS = ("no times", "once", "twice", "three times", "four times", "five times")
_COUNT_WORDS += tuple(f"{w} times" for w in ("six", "seven", "eight", "nine", "ten", "eleven"))


@dataclasses.dataclass(frozen=True)
class WorldClip:
    """One rendered clip with its ground truth.

    Attributes:
      frames: uint8 [T, H, W, 3] RGB video.
      fps: frames per second; frame k shows simulated time k / fps seconds.
      caption: lowercase words and punctuation describing what happens within the frames.
      scene: JSON-serialisable scene parameters in world units (see module docstring); identical
        for the same (seed, index, frames, fps) at any resolution with the same aspect ratio.
      positions: float32 [T, N, 2] object centres (x, y) in pixel coordinates of the frame: x
        right, y down, pixel (i, j) covers [i, i + 1) x [j, j + 1). N = len(scene["objects"]).
      visible: bool [T, N]; the object's centre is inside the view and not behind the occluder.
      impacts: the audible impacts at times in [0, T / fps), in time order.
    """

    frames: np.ndarray
    fps: float
    caption: str
    scene: dict
    positions: np.ndarray
    visible: np.ndarray
    impacts: tuple[Impact, ...] = ()


def make_clip(
    seed: int, index: int, *, frames: int, height: int, width: int, fps: float, caption_sounds: float = 0.0
) -> WorldClip:
    """Makes clip ``index`` of the world with ``seed``.

    The scene (objects, colours, initial conditions) is drawn from ``(seed, index)`` alone;
    ``width / height`` sets the world's width, ``frames / fps`` the simulated seconds, and
    ``(height, width)`` only the rendering. Same arguments give bit-identical output.

    Args:
      seed: non-negative dataset seed.
      index: non-negative clip index within the dataset.
      frames: number of frames T >= 1 (1 gives a still image).
      height: frame height H in pixels (>= 1; below ~16 objects shrink to a pixel or two).
      width: frame width W in pixels (>= 1).
      fps: frames per second (> 0).
      caption_sounds: probability in [0, 1] that the caption of a clip of 2 or more frames ends
        with what is heard (``world_audio.sound_phrase``); drawn from a stream of its own, so the
        rest of the caption is the same at any value and the whole caption is unchanged at 0.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed}, {index}")
    if frames < 1 or height < 1 or width < 1 or not fps > 0:
        raise ValueError(f"bad clip format: {frames=}, {height=}, {width=}, {fps=}")
    if not 0.0 <= caption_sounds <= 1.0:
        raise ValueError(f"caption_sounds must be a probability in [0, 1], got {caption_sounds}")
    fps = float(fps)
    scene = _draw_scene(seed, index, width / height, frames, fps)
    n_steps = max(1, math.ceil(frames * STEPS_PER_SECOND / fps))
    trajectory, bounces, walls, contacts = _simulate(scene, n_steps)

    # Frame k sits at step k * 240 / fps; interpolating the fixed grid keeps the trajectory
    # independent of fps (exact whenever fps divides 240).
    steps = np.arange(frames, dtype=np.float64) * STEPS_PER_SECOND / fps
    lo = np.floor(steps).astype(np.int64)
    frac = (steps - lo)[:, None, None]
    world = trajectory[lo] * (1.0 - frac) + trajectory[lo + 1] * frac  # [T, N, 2]
    times = np.arange(frames, dtype=np.float64) / fps
    cam_x = scene["camera"]["x0"] + scene["camera"]["velocity"] * times  # [T]

    positions = np.stack([(world[..., 0] - cam_x[:, None]) * height, (1.0 - world[..., 1]) * height], axis=-1)
    positions = positions.astype(np.float32)
    in_view = (positions[..., 0] >= 0) & (positions[..., 0] < width)
    in_view &= (positions[..., 1] >= 0) & (positions[..., 1] < height)
    in_pillar = np.zeros(in_view.shape, dtype=bool)
    if scene["occluder"] is not None:
        x0, x1 = scene["occluder"]["x_range"]
        in_pillar = (world[..., 0] >= x0) & (world[..., 0] <= x1)
    visible = in_view & ~in_pillar

    caption_rng = np.random.default_rng([seed, index, 1])
    caption = _caption(scene, world, visible, in_pillar, bounces, walls, fps, caption_rng)
    impacts = _impacts(scene, contacts, frames / fps)
    if frames > 1 and np.random.default_rng([seed, index, 2]).random() < caption_sounds:
        caption += world_audio.sound_phrase(impacts, np.random.default_rng([seed, index, 3]))
    video = _render(scene, positions, cam_x, height, width)
    return WorldClip(video, fps, caption, scene, positions, visible, impacts)


def _draw_scene(seed: int, index: int, aspect: float, frames: int, fps: float) -> dict:
    """Draws the scene; rng use is a fixed block of uniforms so the aspect changes geometry only."""
    rng = np.random.default_rng([seed, index, 0])
    g = rng.random(16).tolist()
    colour_order = np.argsort(rng.random(len(COLOURS)), kind="stable").tolist()
    per_object = rng.random((3, 24)).tolist()
    duration = frames / fps

    gravity = 2.0 + 3.0 * g[1]
    floor = 0.08 + 0.08 * g[2]
    kind = BACKGROUNDS[int(g[3] * len(BACKGROUNDS))]
    tone = np.array(_BACKDROP_TONES[int(g[4] * len(_BACKDROP_TONES))], dtype=np.float64)
    view_w = aspect
    pan = g[9] < 0.35
    world_w = 2.0 * view_w if pan else view_w
    pan_dir = 1.0 if g[10] < 0.5 else -1.0
    cam_x0 = view_w if pan and pan_dir < 0 else 0.0
    # Capped so the view never runs off the world's edge, even for long clips.
    cam_v = pan_dir * min((0.12 + 0.18 * g[11]) * view_w, view_w / duration) if pan else 0.0

    pillar, mover_x = None, None
    # The pillar is wide enough to hide the first object, which starts beside it heading for it
    # so the clip shows object permanence; without room for that in the view there is no pillar.
    ext0 = _extent(per_object[0], view_w)
    pc, pw = cam_x0 + view_w * (0.3 + 0.4 * g[7]), 2.0 * ext0 + 0.04 + 0.08 * g[8]
    if g[6] < 0.4:
        dist = pw / 2 + ext0 + 0.06 + 0.2 * per_object[0][10]
        for side in (1.0, -1.0) if g[13] < 0.5 else (-1.0, 1.0):
            if cam_x0 + ext0 <= pc + side * dist <= cam_x0 + view_w - ext0:
                mover_x = pc + side * dist
                name = list(PILLAR_COLOURS)[int(g[12] * len(PILLAR_COLOURS))]
                pillar = {"colour": name, "rgb": list(PILLAR_COLOURS[name])}
                pillar["x_range"] = [pc - pw / 2, pc + pw / 2]
                break

    objects: list[dict] = []
    for i, p in enumerate(per_object[: 1 + int(g[0] * 3)]):
        is_ball = p[0] < 0.6
        size = list(SIZES)[int(p[1] * len(SIZES))]
        ext = _extent(p, view_w)
        mode = "drop" if p[4] < 0.45 else ("toss" if p[4] < 0.7 else "roll")
        speed = (0.3 + 0.4 * p[5]) * (1.0 if p[6] < 0.5 else -1.0)
        vx, vy = {"drop": speed * p[8], "toss": 0.5 * speed * p[8], "roll": speed}[mode], 0.0
        rest_y, top = floor + ext, 0.9 - ext  # drops and tosses stay inside the view
        candidates = [(cam_x0 + ext + p[c] * (view_w - 2 * ext), p[c + 1]) for c in range(12, 24, 2)]
        if i == 0 and pillar is not None:
            mode = "roll" if mode == "toss" else mode
            vx = math.copysign(speed, pc - mover_x)
            candidates = [(mover_x, p[12])]
        if mode == "toss":
            vy = math.sqrt(2.0 * gravity * max(top - rest_y, 0.0) * (0.35 + 0.6 * p[9]))
        placed = None
        for x, uy in candidates:
            y = rest_y if mode != "drop" else max(rest_y, rest_y + 0.2 + uy * (top - rest_y - 0.2))
            gap = [max(abs(x - q[0]), abs(y - q[1])) - ext - q[2] for q in map(_box_of, objects)]
            behind = pillar is not None and i > 0 and abs(x - pc) < pw / 2 + ext + 0.02
            if min(gap, default=1.0) > 0.03 and not behind:
                placed = [x, y]
                break
        if placed is None:
            continue  # only in very narrow views: the scene then has fewer objects
        obj = {"kind": "ball" if is_ball else "box", "colour": list(COLOURS)[colour_order[i]]}
        obj |= {"size": size, ("radius" if is_ball else "half_size"): ext}
        obj |= {"position": placed, "velocity": [vx, vy]}
        obj["restitution"] = 0.55 + 0.3 * p[2] if is_ball else 0.2 + 0.3 * p[2]
        obj["friction"] = 0.02 + 0.04 * p[3] if is_ball else 0.05 + 0.15 * p[3]
        objects.append(obj)

    world = {"aspect": aspect, "width": world_w, "height": 1.0, "floor": floor, "gravity": gravity}
    return {
        "world": world,
        "frames": frames,
        "fps": fps,
        "duration": duration,
        "background": {
            "kind": kind,
            "rgb": tone.tolist(),
            "rgb2": np.minimum(tone * 1.35, 255.0).tolist(),
            "period": 0.12 + 0.14 * g[5],
        },
        "occluder": pillar,
        "camera": {"x0": cam_x0, "velocity": cam_v, "view_width": view_w},
        "objects": objects,
    }


def _extent(p: list[float], view_w: float) -> float:
    """Radius or half-size from an object's uniforms; narrow views clamp it so objects fit."""
    size = list(SIZES)[int(p[1] * len(SIZES))]
    return min(SIZES[size] * (1.0 if p[0] < 0.6 else 0.9), 0.3 * view_w)


def _box_of(obj: dict) -> tuple[float, float, float]:
    """(x, y, radius or half-size) of a scene object."""
    return (*obj["position"], obj["radius"] if obj["kind"] == "ball" else obj["half_size"])


def _simulate(scene: dict, n_steps: int) -> tuple[np.ndarray, list, list, list]:
    """Integrates the scene for ``n_steps`` steps of 1/240 s.

    Returns:
      trajectory: float64 [n_steps + 1, N, 2] world centres at times 0, dt, ..., n_steps * dt.
      bounces: per object, ``(time_s, upward_speed)`` of each floor bounce.
      walls: per object, ``(time_s, "left" | "right")`` of each wall hit.
      contacts: ``(time_s, kind, objects, normal_speed, world_x)`` of every impact faster than
        ``_MIN_IMPACT_SPEED``, in time order (see :class:`Impact`).
    """
    objs = scene["objects"]
    g, floor, world_w = scene["world"]["gravity"], scene["world"]["floor"], scene["world"]["width"]
    n = len(objs)
    x = [o["position"][0] for o in objs]
    y = [o["position"][1] for o in objs]
    vx = [o["velocity"][0] for o in objs]
    vy = [o["velocity"][1] for o in objs]
    ext = [_box_of(o)[2] for o in objs]
    ball = [o["kind"] == "ball" for o in objs]
    rest = [o["restitution"] for o in objs]
    slow = [o["friction"] * g * _DT for o in objs]  # Coulomb friction: speed lost per step
    inv_m = [1.0 / (e * e) for e in ext]  # equal areal density
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    bounces: list[list[tuple[float, float]]] = [[] for _ in objs]
    walls: list[list[tuple[float, str]]] = [[] for _ in objs]
    contacts: list[tuple[float, str, tuple[int, ...], float, float]] = []
    out = [x + y]
    fall, gdt = 0.5 * g * _DT * _DT, g * _DT
    rest_speed = math.sqrt(2.0 * g * _MIN_HOP)
    for step in range(1, n_steps + 1):
        t = step * _DT
        for i in range(n):
            # Exact for constant gravity, so fitted accelerations recover g.
            y[i] += vy[i] * _DT - fall
            vy[i] -= gdt
            x[i] += vx[i] * _DT
        for i, j in pairs:
            closing = _collide(i, j, x, y, vx, vy, ext, ball, rest, inv_m)
            if closing > _MIN_IMPACT_SPEED:
                contacts.append((t, "collision", (i, j), closing, 0.5 * (x[i] + x[j])))
        # Floor and walls act last, so a contact push never leaves a recorded centre inside them.
        for i in range(n):
            if y[i] - ext[i] < floor:
                y[i] = floor + ext[i]
                if vy[i] < 0.0:
                    if -vy[i] > _MIN_IMPACT_SPEED:
                        contacts.append((t, "floor", (i,), -vy[i], x[i]))
                    up = -vy[i] * rest[i]
                    vy[i] = up if up > rest_speed else 0.0
                    if vy[i] > 0.0:
                        bounces[i].append((t, up))
                vx[i] = math.copysign(max(abs(vx[i]) - slow[i], 0.0), vx[i])
            if y[i] + ext[i] > 1.0 and vy[i] > 0.0:  # an invisible ceiling, rarely reached
                vy[i] = -vy[i] * rest[i]
            side = "left" if x[i] < ext[i] else "right" if x[i] > world_w - ext[i] else ""
            if side:
                x[i] = ext[i] if side == "left" else world_w - ext[i]
                if (vx[i] < 0.0) == (side == "left"):
                    if abs(vx[i]) > _MIN_IMPACT_SPEED:
                        contacts.append((t, "wall", (i,), abs(vx[i]), x[i]))
                    if abs(vx[i]) > _MIN_WALL_SPEED:
                        walls[i].append((t, side))
                    vx[i] = -vx[i] * rest[i]
        out.append(x + y)
    traj = np.array(out, dtype=np.float64).reshape(n_steps + 1, 2, n).transpose(0, 2, 1)
    return traj, bounces, walls, contacts


def _impacts(scene: dict, contacts: list, duration: float) -> tuple[Impact, ...]:
    """The contacts of :func:`_simulate` within ``[0, duration)`` s as :class:`Impact` records."""
    objs, camera = scene["objects"], scene["camera"]
    impacts = []
    for t, kind, which, speed, x in contacts:
        if t >= duration:
            break
        view_x = (x - camera["x0"] - camera["velocity"] * t) / camera["view_width"]
        sizes = [_box_of(objs[i])[2] for i in which]
        material = "box" if any(objs[i]["kind"] == "box" for i in which) else "ball"
        pan = min(max(2.0 * view_x - 1.0, -1.0), 1.0)
        impacts.append(Impact(t, kind, which, speed, pan, material, min(sizes)))
    return tuple(impacts)


def _collide(i: int, j: int, x, y, vx, vy, ext, ball, rest, inv_m) -> float:
    """Resolves contact between objects i and j in place: impulse along the contact normal.

    Returns the normal speed at which they met (0 when not touching or already separating).
    """
    dx, dy = x[j] - x[i], y[j] - y[i]
    reach = ext[i] + ext[j]
    if abs(dx) >= reach or abs(dy) >= reach:
        return 0.0
    if ball[i] and ball[j]:
        dist = math.sqrt(dx * dx + dy * dy)
        if dist >= reach:
            return 0.0
        nx, ny = (dx / dist, dy / dist) if dist > 0.0 else (0.0, 1.0)
        depth, e = reach - dist, _BALL_PAIR_RESTITUTION
    else:
        e, dist = min(rest[i], rest[j]), 0.0
        if ball[i] or ball[j]:
            # Circle against square: the normal runs from the square's nearest point to the centre.
            s = -1.0 if ball[i] else 1.0  # direction from box to ball is s * (dx, dy)
            h, r = (ext[j], ext[i]) if ball[i] else (ext[i], ext[j])
            px = s * dx - min(max(s * dx, -h), h)
            py = s * dy - min(max(s * dy, -h), h)
            dist = math.sqrt(px * px + py * py)
            if dist >= r:
                return 0.0
            nx, ny, depth = (s * px / dist, s * py / dist, r - dist) if dist > 0.0 else (0, 0, 0)
        if dist == 0.0:  # two squares, or a circle centred inside a square: least-overlap axis
            if abs(dx) > abs(dy):
                nx, ny, depth = math.copysign(1.0, dx), 0.0, reach - abs(dx)
            else:
                nx, ny, depth = 0.0, math.copysign(1.0, dy), reach - abs(dy)
    total = inv_m[i] + inv_m[j]
    closing = (vx[j] - vx[i]) * nx + (vy[j] - vy[i]) * ny
    if closing < 0.0:
        impulse = -(1.0 + e) * closing / total
        vx[i] -= impulse * inv_m[i] * nx
        vy[i] -= impulse * inv_m[i] * ny
        vx[j] += impulse * inv_m[j] * nx
        vy[j] += impulse * inv_m[j] * ny
    push = depth / total  # separate the pair so contacts do not sink into each other
    x[i] -= push * inv_m[i] * nx
    y[i] -= push * inv_m[i] * ny
    x[j] += push * inv_m[j] * nx
    y[j] += push * inv_m[j] * ny
    return max(-closing, 0.0)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.random() * len(options))]


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'; ', then' before the last if any item has 'and'."""
    if len(items) == 1:
        return items[0]
    last = ", then " if any(" and " in item for item in items) else " and "
    return ", ".join(items[:-1]) + last + items[-1]


def _caption(scene, world, visible, in_pillar, bounces, walls, fps, rng) -> str:
    """Describes the scene and what the T sampled frames show; ``world`` is [T, N, 2] units."""
    objs, floor = scene["objects"], scene["world"]["floor"]
    frames = world.shape[0]
    kind = scene["background"]["kind"]
    adjective = _BACKGROUND_WORDS.get(kind, kind)
    backdrop = _pick(rng, (f"in front of a {adjective} wall", f"on a {adjective} background"))
    pillar = scene["occluder"]
    pillar_name = f"{pillar['colour']} pillar" if pillar else ""
    names = [f"a {o['size']} {o['colour']} {o['kind']}" for o in objs]
    if frames == 1:
        items = []
        for name, o in zip(names, objs, strict=True):
            airborne = o["position"][1] - _box_of(o)[2] - floor > 0.02
            items.append(f"{name} {_pick(rng, _WHERE[airborne])}")
        if pillar:
            items.append(f"a {pillar_name}")
        return f"{_join(items)}, {backdrop}"

    t_last = (frames - 1) / fps
    clauses, pillar_article = [], "a"
    for n, (name, o) in enumerate(zip(names, objs, strict=True)):
        x, y, ext = world[:, n, 0], world[:, n, 1], _box_of(o)[2]
        airborne = y[0] - ext - floor > 0.02
        moved = np.flatnonzero(np.abs(x - x[0]) > 0.02)
        heading = side = ""
        if moved.size and np.abs(np.diff(x)).sum() > 0.05:
            side = "right" if x[moved[0]] > x[0] else "left"
            heading = f"to the {side}"
        if o["velocity"][1] > 0.0 and y.max() - y[0] > 0.03:
            verb = _pick(rng, ("is tossed up", "jumps up", "is thrown upward"))
        elif airborne:
            verb = _pick(rng, ("falls", "drops")) if y[0] - y.min() > 0.03 else "starts to fall"
        elif heading:
            verb = "rolls" if o["kind"] == "ball" else "slides"
            heading = _pick(rng, (side, heading))
        else:
            verb = _pick(rng, ("rests on the floor", "sits on the floor", "stays still"))
        actions = [(0.0, f"{verb} {heading}".strip())]
        # A bounce is a turn of the sampled height from falling to rising, with a floor impact
        # between the neighbouring frames: what the frames show, not sub-frame hops they miss.
        dy = np.diff(y)
        seen = [
            k / fps
            for k in range(1, frames - 1)
            if dy[k - 1] < 0.0 < dy[k] and any((k - 1) / fps < t < (k + 1) / fps for t, _ in bounces[n])
        ]
        if seen:
            count = _COUNT_WORDS[len(seen)] if len(seen) < len(_COUNT_WORDS) else "many times"
            actions.append((seen[0], f"{_pick(rng, ('bounces', 'bounces on the floor'))} {count}"))
        for t, side in walls[n]:
            hit = f"the {side} wall"
            if t <= t_last and not any(hit in a for _, a in actions):
                actions.append((t, f"{_pick(rng, ('hits', 'rebounds off'))} {hit}"))
        hidden, shown = in_pillar[:, n], visible[:, n]
        enter = next((k for k in range(1, frames) if hidden[k] and shown[k - 1]), None)
        if enter is not None:
            p = f"{pillar_article} {pillar_name}"
            pillar_article = "the"
            out = next((k for k in range(enter, frames) if not hidden[k]), None)
            if out is None:
                options = (f"disappears behind {p}", f"goes behind {p} and stays hidden")
            elif shown[out]:
                options = (f"passes behind {p} and comes out", f"goes behind {p} and reappears")
            else:
                options = (f"goes behind {p}",)
            actions.append((enter / fps, _pick(rng, options)))
        actions.sort(key=lambda a: a[0])
        clauses.append(f"{name} {_join([a for _, a in actions])}")
    if pillar and pillar_article == "a":  # present but nothing passed behind it
        clauses.append(f"a {pillar_name} {_pick(rng, ('stands in the foreground', 'stands in the way'))}")
    caption = "; ".join(clauses)
    if rng.random() < 0.5:
        caption += f", {backdrop}"
    cam_v = scene["camera"]["velocity"]
    if cam_v:
        side = "right" if cam_v > 0 else "left"
        caption += "; " + _pick(rng, _PANS).format(side)
    return caption


def _soft_square(x: np.ndarray, period: float, px_per_unit: float) -> np.ndarray:
    """Square wave in [0, 1] of ``period`` world units with ~1 px ramps instead of hard edges.

    A triangle wave scaled so it crosses 0..1 over one pixel box-filters the edges; periods below
    two pixels fade to grey instead of aliasing into moire.
    """
    tri = np.abs(np.mod(x / period, 1.0) * 2.0 - 1.0)
    return np.clip((tri - 0.5) * (0.5 * period * px_per_unit) + 0.5, 0.0, 1.0)


def _render(scene: dict, positions: np.ndarray, cam_x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Draws uint8 [T, H, W, 3] frames; coverage from pixel-centre distance anti-aliases edges."""
    frames = positions.shape[0]
    h = np.float32(height)
    col_px = np.arange(width, dtype=np.float32) + 0.5  # pixel centres
    row_px = np.arange(height, dtype=np.float32) + 0.5
    x_world = cam_x.astype(np.float32)[:, None] + col_px[None, :] / h  # [T, W]
    y_world = 1.0 - row_px / h  # [H]
    bg = scene["background"]
    c1, c2 = np.array(bg["rgb"], np.float32), np.array(bg["rgb2"], np.float32)
    if bg["kind"] == "stripes":
        mix = _soft_square(x_world, bg["period"], height)[:, None, :, None]
    elif bg["kind"] == "checker":
        sx = _soft_square(x_world, bg["period"], height)[:, None, :]
        sy = _soft_square(y_world, bg["period"], height)[None, :, None]
        mix = (sx * sy + (1.0 - sx) * (1.0 - sy))[..., None]
    elif bg["kind"] == "gradient":
        mix = y_world[None, :, None, None]
    else:
        mix = np.zeros((1, 1, 1, 1), np.float32)
    wall = c1 + (c2 - c1) * mix
    # Floor planks move with the world, so a pan reads even on a plain wall.
    planks = 1.0 - 0.15 * _soft_square(x_world, 0.35, height)
    floor_rgb = (0.55 * c1) * planks[:, None, :, None]  # [T, 1, W, 3]
    floor_cover = np.clip((scene["world"]["floor"] - y_world) * h + 0.5, 0.0, 1.0)
    canvas = np.empty((frames, height, width, 3), np.float32)
    canvas[...] = wall
    band = canvas[:, int(np.argmax(floor_cover > 0.0)) :]  # the floor rows, as a view
    band += (floor_rgb - band) * floor_cover[-band.shape[1] :, None, None]

    # Each shape is drawn in a per-frame window around it, not over whole frames: objects are
    # small, so this is most of the rendering speed.
    for n, obj in enumerate(scene["objects"]):
        size = np.float32(_box_of(obj)[2] * height)
        cx, cy = positions[:, n, 0, None, None], positions[:, n, 1, None, None]
        span = int(2 * size) + 3
        index, xc, yc = _window(cx[:, 0, 0] - size - 1, cy[:, 0, 0] - size - 1, span, span, canvas)
        if obj["kind"] == "ball":
            cover = np.clip(size + 0.5 - np.sqrt((xc - cx) ** 2 + (yc - cy) ** 2), 0.0, 1.0)
        else:
            cover = np.clip(size + 0.5 - np.abs(xc - cx), 0.0, 1.0)
            cover = cover * np.clip(size + 0.5 - np.abs(yc - cy), 0.0, 1.0)
        _blend(canvas, index, cover, COLOURS[obj["colour"]])
    if scene["occluder"] is not None:
        x0, x1 = scene["occluder"]["x_range"]
        left = ((x0 - cam_x) * height).astype(np.float32)[:, None, None]  # [T, 1, 1] pixels
        right = ((x1 - cam_x) * height).astype(np.float32)[:, None, None]
        span = int((x1 - x0) * height) + 3
        index, xc, yc = _window(left[:, 0, 0] - 1, np.zeros(frames), span, height, canvas)
        across = np.clip(np.minimum(xc - left, right - xc) + 0.5, 0.0, 1.0)
        up = np.clip((1.0 - scene["world"]["floor"]) * h - yc + 0.5, 0.0, 1.0)
        _blend(canvas, index, across * up, scene["occluder"]["rgb"])
    return (canvas + 0.5).astype(np.uint8)


def _window(x_lo, y_lo, span_x: int, span_y: int, canvas: np.ndarray):
    """Per-frame pixel windows of span_y x span_x starting at ([T] floats) x_lo, y_lo.

    Windows are shifted to lie inside the frame, so a shape partly or wholly outside the view
    still gets a valid window (where its coverage is simply zero). Returns the fancy index into
    ``canvas`` and the window's pixel-centre coordinates, [T, 1, span_x] and [T, span_y, 1].
    """
    frames, height, width = canvas.shape[:3]
    span_x, span_y = min(span_x, width), min(span_y, height)
    cols = np.clip(np.floor(x_lo).astype(np.int64), 0, width - span_x)[:, None] + np.arange(span_x)
    rows = np.clip(np.floor(y_lo).astype(np.int64), 0, height - span_y)[:, None] + np.arange(span_y)
    index = (np.arange(frames)[:, None, None], rows[:, :, None], cols[:, None, :])
    xc = (cols + 0.5).astype(np.float32)[:, None, :]
    yc = (rows + 0.5).astype(np.float32)[:, :, None]
    return index, xc, yc


def _blend(canvas: np.ndarray, index: tuple, cover: np.ndarray, rgb) -> None:
    """Blends ``rgb`` over the windows ``index`` of ``canvas`` by coverage [T, span_y, span_x]."""
    patch = canvas[index]
    patch += (np.asarray(rgb, np.float32) - patch) * cover[..., None]
    canvas[index] = patch


def make_clips(
    seed: int,
    indices: Iterable[int],
    shape: tuple[int, int, int],
    fps: Callable[[int], float],
    caption_sounds: float = 0.0,
) -> Iterator[WorldClip]:
    """Clips ``indices`` of the world with ``seed`` at ``shape = (T, H, W)``, clip ``i`` at frame
    rate ``fps(i)``: the one way commands render a run of world clips (each as :func:`make_clip`)."""
    frames, height, width = shape
    for index in indices:
        yield make_clip(
            seed,
            index,
            frames=frames,
            height=height,
            width=width,
            fps=fps(index),
            caption_sounds=caption_sounds,
        )
