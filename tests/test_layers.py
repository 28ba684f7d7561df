"""The house of kdp_host/: every module on a floor, imports only sideways or down, no cycles,
no module above the size limit.

The floors are declared once, in the "Floors" table of docs/architecture.md (top floor
first): this test reads that table, so the document and the code cannot drift apart. A module
may import modules on its own floor or below; an import that runs back up a floor fails, and
so does any import cycle (on one floor or across floors), counting every import in a module:
at the top, inside functions and under TYPE_CHECKING. `pkg/*` in the table stands for every
module of that package.

A module above MAX_LINES lines fails too, except the config declarations
(config/model.py, every key of the file in one place) and the generated kdp_host/api/.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kdp_host"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_LINES = 400
SIZE_EXEMPT = frozenset({"config.model"})
"""Modules allowed above MAX_LINES (besides the generated api/*): the config declarations."""
GENERATED = "api"
NOT_YET_SPLIT: frozenset[str] = frozenset()
"""Modules still above MAX_LINES (issue 20, item 13: to split by idea). The list only shrinks:
a module on it that fits fails too, so a split module leaves the list with its split."""


def module_name(path: Path) -> str:
    """`config.model` for kdp_host/config/model.py, `config` for its __init__.py,
    `kdp_host` for the package's own __init__.py."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "kdp_host"


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = ["kdp_host", *([] if module == "kdp_host" else module.split("."))]
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _local(name: str, known: dict[str, Path]) -> str | None:
    """The module of kdp_host/ an absolute dotted name lands in (None: not ours)."""
    if name != "kdp_host" and not name.startswith("kdp_host."):
        return None
    short = name.removeprefix("kdp_host").removeprefix(".") or "kdp_host"
    while short not in known and "." in short:
        short = short.rsplit(".", 1)[0]
    return short if short in known else "kdp_host"


def imports(known: dict[str, Path]) -> Iterator[Import]:
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, path, node)
                # `from . import rules` imports the module kdp_host.rules
                targets = [f"{base}.{a.name}" for a in node.names] or [base]
            for name in targets:
                target = _local(name, known)
                if target is not None and target != module:
                    yield Import(module, target, node.lineno)


def declared_floors() -> list[list[str]]:
    """The Floors table of docs/architecture.md, top floor first: module patterns per floor."""
    text = ARCHITECTURE.read_text()
    section = text.split("\n## Floors\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    return [re.findall(r"`([^`]+)`", row.split("|")[2]) for row in rows]


def floor_of(known: dict[str, Path]) -> dict[str, int]:
    floors = declared_floors()
    assigned: dict[str, int] = {}
    for number, patterns in zip(range(len(floors), 0, -1), floors, strict=True):
        for pattern in patterns:
            if pattern.endswith("/*"):
                package = pattern[:-2]
                matched = [m for m in known if m == package or m.startswith(package + ".")]
            else:
                matched = [pattern] if pattern in known else []
            assert matched, f"docs/architecture.md floor {number}: no module {pattern!r}"
            for m in matched:
                assert m not in assigned, f"{m} is on floors {assigned[m]} and {number}"
                assigned[m] = number
    return assigned


def test_the_floors_table_places_every_module_once() -> None:
    known = modules()
    missing = sorted(set(known) - set(floor_of(known)))
    assert not missing, f"modules on no floor of docs/architecture.md: {missing}"


def test_no_import_runs_back_up_a_floor() -> None:
    known = modules()
    floor = floor_of(known)
    upward = [
        f"{i.source} (floor {floor[i.source]}) line {i.line} imports {i.target} "
        f"(floor {floor[i.target]})"
        for i in imports(known)
        if i.source in floor and i.target in floor and floor[i.target] > floor[i.source]
    ]
    assert not upward, "imports that run back up a floor:\n" + "\n".join(upward)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_there_are_no_import_cycles() -> None:
    edges: dict[str, set[str]] = {}
    for i in imports(modules()):
        edges.setdefault(i.source, set()).add(i.target)
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def size_checked() -> list[str]:
    return [
        m
        for m in sorted(modules())
        if m not in SIZE_EXEMPT and m != GENERATED and not m.startswith(GENERATED + ".")
    ]


@pytest.mark.parametrize("module", size_checked())
def test_no_module_is_above_the_size_limit(module: str) -> None:
    lines = len(modules()[module].read_text().splitlines())
    if module in NOT_YET_SPLIT:
        assert lines > MAX_LINES, f"kdp_host/{module} fits now: take it off NOT_YET_SPLIT"
    else:
        assert lines <= MAX_LINES, f"kdp_host/{module}: {lines} lines, split it by idea"
