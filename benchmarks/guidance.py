"""Caption guidance settings of the benchmarks' sweeps: a scale, and the times it acts at.

A setting is written ``4`` (guidance 4 at every step) or ``4@0.3-1`` (guidance 4 while
0.3 <= t <= 1, t = 1 being noise; ``diffusion.guidance_interval``), on the command line and in the
commands the reports print.
"""

from __future__ import annotations

import ml_collections

# The caption guidance scale and the interval of times it acts in ((0, 1): every step).
Setting = tuple[float, tuple[float, float]]
EVERY_STEP = (0.0, 1.0)


def parse_setting(text: str) -> Setting:
    """``"4"`` (guidance 4 at every step) or ``"4@0.3-1"`` (guidance 4 while 0.3 <= t <= 1)."""
    scale, _, interval = text.strip().partition("@")
    if not interval:
        return float(scale), EVERY_STEP
    lo, _, hi = interval.partition("-")
    return float(scale), (float(lo), float(hi))


def setting_label(setting: Setting, separator: str = "@") -> str:
    """``"4"`` or ``"4@0.3-1"``: the form :func:`parse_setting` reads (and strip file names use)."""
    scale, (lo, hi) = setting
    return f"{scale:g}" if (lo, hi) == EVERY_STEP else f"{scale:g}{separator}{lo:g}-{hi:g}"


def setting_words(setting: Setting) -> str:
    """``"guidance 4"`` or ``"guidance 4 at times t from 0.3 to 1"``: a setting in the report's prose."""
    scale, (lo, hi) = setting
    return f"guidance {scale:g}" + ("" if (lo, hi) == EVERY_STEP else f" at times t from {lo:g} to {hi:g}")


def times_cell(setting: Setting) -> str:
    """``"every step"`` or ``"0.3 to 1"``: a setting's interval in a table cell."""
    lo, hi = setting[1]
    return "every step" if (lo, hi) == EVERY_STEP else f"{lo:g} to {hi:g}"


def table_order(setting: Setting) -> tuple[float, float, float]:
    """Sort key of a table's rows: by scale, and for one scale every step first, then by interval."""
    scale, (lo, hi) = setting
    return scale, lo, -hi


def own_setting(config: ml_collections.ConfigDict) -> Setting:
    """The setting ``config`` samples at."""
    f = config.diffusion
    return float(f.guidance), tuple(float(x) for x in f.guidance_interval)
