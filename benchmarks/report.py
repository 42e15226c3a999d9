"""docs/BENCHMARKS.md is assembled from sections, each owned and rewritten by one benchmark script."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import jax

REPORT = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every figure below is written by a script under `benchmarks/`; rerun the command under a\n"
    "section to refresh it. Figures from one section were measured side by side in one run.\n"
)


def replace_section(name: str, title: str, body: str) -> None:
    """Write ``body`` under ``## title`` as section ``name``, replacing that section if present."""
    text = REPORT.read_text() if REPORT.exists() else HEADER
    block = f"<!-- {name}:start -->\n## {title}\n\n{body.strip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(text + ("" if text.endswith("\n") else "\n"))


def machine_description() -> str:
    """Processor, cores, JAX version and devices: the line each section starts with."""
    devices = jax.devices()
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"{len(devices)} {devices[0].platform} device(s)"
    )
