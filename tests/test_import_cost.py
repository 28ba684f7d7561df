"""What kdp-host's modules cost as they load (issue 19: start-up CPU of every process).

A class `@dataclass` processes without a docstring gets one made from its signature
(`inspect.signature`, on Python 3.11 and 3.12): ~0.1 ms of CPU per class, at every start,
for a docstring nobody reads. Every dataclass of the package has its own docstring (the
generated api/ is not ours to edit)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kdp_host"


def _is_dataclass_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Attribute):
        return target.attr == "dataclass"
    return isinstance(target, ast.Name) and target.id == "dataclass"


def dataclasses_without_docstring(package: Path) -> list[str]:
    """`module:Class` of each class decorated with `dataclass` that has no docstring."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] == "api":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            if any(map(_is_dataclass_decorator, node.decorator_list)) and not ast.get_docstring(
                node
            ):
                found.append(f"{relative}:{node.name}")
    return found


def test_every_dataclass_has_its_own_docstring() -> None:
    assert dataclasses_without_docstring(PACKAGE) == []


def test_the_check_finds_a_dataclass_without_one(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "from dataclasses import dataclass\nimport dataclasses\n\n"
        "@dataclass(frozen=True)\nclass Bare:\n    x: int\n\n"
        "@dataclasses.dataclass\nclass Dotted:\n    x: int\n\n"
        '@dataclass\nclass Told:\n    """Told."""\n\n    x: int\n\n'
        "class Plain:\n    x: int\n"
    )
    assert dataclasses_without_docstring(tmp_path) == ["m.py:Bare", "m.py:Dotted"]
