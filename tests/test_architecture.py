"""The package's shape: no import cycles, and no command that knows a kind of run by name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sora_jax"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by their __init__)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (inside functions and
    ``TYPE_CHECKING`` blocks too), with the parent packages every import runs first."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    found = set()
    for target in targets:
        parts = target.split(".")
        for end in range(2, len(parts) + 1):  # sora_jax.a, sora_jax.a.b, ... (the top package is empty)
            candidate = ".".join(parts[:end])
            if candidate in modules and candidate != name:
                found.add(candidate)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_branch_finder_finds_branches():
    for branch in ('if config.task == "autoencoder":', "x = 'dit' != task", "if c.task in ('dit', 'vae'):"):
        assert KIND_BRANCH.search(branch), branch
    assert KIND_BRANCH.search("from sora_jax.kinds.autoencoder import AutoencoderKind")
    for generic in ("kind = run_kind(config)", "if run.config.task != task:"):
        assert not KIND_BRANCH.search(generic), generic


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_the_package_modules():
    modules = module_files()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert "sora_jax.train.state" in graph["sora_jax.train.trainer"]  # The walk sees imports.
    found = cycles(graph)
    assert not found, "\n".join(
        " <-> ".join(c) + ": " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found
    )


# How code would tell kinds of run apart: the config key naming them compared with a name, a kind's
# name compared with something, or a kind's class imported to be checked against.
KIND_BRANCH = re.compile(
    r"""\.task\s*(==|!=|in\b|not in\b)\s*["'(\[{]"""
    r"""|["'](autoencoder|dit)["']\s*(==|!=|in\b)|(==|!=)\s*["'](autoencoder|dit)["']"""
    r"""|sora_jax\.kinds\.(video_dit|autoencoder)\b"""
)


@pytest.mark.parametrize("place", ["train", "eval", "cli.py"])
def test_commands_do_not_branch_on_the_kind_of_run(place):
    paths = [PACKAGE / place] if place.endswith(".py") else sorted((PACKAGE / place).rglob("*.py"))
    hits = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in paths
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if KIND_BRANCH.search(line.split("#")[0])
    ]
    assert not hits, "\n".join(hits)
