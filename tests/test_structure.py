"""The package's shape: no import cycle among gan's modules, and every module small enough to read.

Imports are read from the source with ``ast``: module-level, inside functions (lazy imports) and
under ``TYPE_CHECKING`` alike, as a cycle through any of them couples the modules just the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gan"
LONGEST_MODULE = 450  # lines; a module above it holds more than one room


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(module: str, path: Path) -> set[str]:
    """The gan modules ``module`` imports: ``from gan.x import y`` names gan.x.y when that is a
    module, else gan.x; the parent packages Python imports on the way are not counted."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found |= {
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            }
    return {name for name in found if name in MODULES and name != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_module_of_gan_imports_itself_through_others():
    graph = {name: imported(name, path) for name, path in MODULES.items()}
    assert graph["gan.report.page"] >= {"gan.report.atlas", "gan.report.runs"}  # the reader works
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_is_short_enough_to_hold_in_your_head(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= LONGEST_MODULE, f"{name}: {lines} lines; split it by concern"


def test_every_module_is_on_the_architecture_map():
    # docs/ARCHITECTURE.md names each module's room: a new module joins the map.
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    modules = [p.relative_to(ROOT / "gan") for p in (ROOT / "gan").rglob("*.py")]
    unmapped = [
        str(m)
        for m in modules
        if m.name != "__init__.py" and f"`gan/{m}`" not in text and f"`{m.name}`" not in text
    ]
    assert unmapped == []
