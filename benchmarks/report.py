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


def processor_name() -> str:
    """The CPU's model and its widest vector unit (Linux's /proc/cpuinfo), e.g. "AMD EPYC, AVX2":
    CPU figures depend on it (an AVX-512 core does about twice the f32 matmul work of an AVX2 one),
    so a section names the processor it was measured on. Elsewhere the architecture alone."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    name = fields.get("model name", platform.machine())
    return f"{name}, {vector}" if vector else name


def machine_description() -> str:
    """Processor, cores, JAX version and devices: the line each section starts with."""
    devices = jax.devices()
    return (
        f"{platform.machine()} ({processor_name()}), {os.cpu_count()} cores, jax {jax.__version__}, "
        f"{len(devices)} {devices[0].platform} device(s)"
    )
