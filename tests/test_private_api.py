"""kdp_host/ uses betterproto2 and grpclib through their public API only.

One exception, isolated and tested (tests/test_server.py): PluginServer in
kdp_host/protocol/server.py overrides grpclib's private `Server._protocol_factory` to close
the connections a server accepted, which grpclib offers no public way to do. This test reads
every module of kdp_host/ (the generated kdp_host/api/ aside) and fails on any other use of
the libraries' private parts:

- imports of private modules or names (`grpclib._typing`, `from betterproto2 import _x`);
- `x._name` on anything but the module's own `self`/`cls` (this includes `super()._name`,
  calling or extending a library's private method) in a module that uses the libraries;
- `self._name` or `def _name` in a subclass of a library class when the library class has a
  private attribute or method of that name (an override, or a collision with its state);
- the libraries' own internal dunders (`__connect__`, `__dispatch__`, ...), anywhere;
- `getattr`/`setattr`/`hasattr` with a private attribute name.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import betterproto2
import grpclib
import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "kdp_host"
LIBRARIES = ("grpclib", "betterproto2")
USERS_OF_THE_LIBRARIES = (*LIBRARIES, "kdp_host.api")
"""A module importing one of these handles the libraries' objects (the generated code's
classes are betterproto2 messages and services)."""
PUBLIC_HOOKS = {"__mapping__", "__content_subtype__"}
"""grpclib's documented servable protocol and codec attribute."""
STANDARD_DUNDERS = {
    "__all__",
    "__args__",
    "__copy__",
    "__deepcopy__",
    "__del__",
    "__func__",
    "__future__",
    "__main__",
    "__post_init__",
    "__version__",
    "__pydantic_core_schema__",
}
ALLOWED = {("kdp_host/protocol/server.py", "_protocol_factory")}
"""The one workaround: see PluginServer. Nothing else may appear here."""


@dataclass(frozen=True)
class Use:
    path: str
    line: int
    name: str
    how: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.how} {self.name}"


def library_dunders() -> set[str]:
    """Dunder names grpclib and betterproto2 define that are not Python's own."""
    names: set[str] = set()
    for library in (grpclib, betterproto2):
        assert library.__file__ is not None
        for source in Path(library.__file__).parent.rglob("*.py"):
            names |= set(re.findall(r"\b(__[a-z][a-z0-9_]*__)\b", source.read_text()))
    standard = set(STANDARD_DUNDERS)
    for kind in (object, type, int, str, bytes, list, dict, BaseException, type(len)):
        standard |= set(dir(kind))
    import collections.abc
    import contextlib

    for kind in (
        collections.abc.AsyncGenerator,
        collections.abc.Generator,
        contextlib.AbstractAsyncContextManager,
        contextlib.AbstractContextManager,
    ):
        standard |= set(dir(kind))
    return names - standard - PUBLIC_HOOKS


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def library_private_names(cls: type) -> set[str]:
    """Private attributes and methods the library classes in `cls`'s MRO define or set."""
    names: set[str] = set()
    for base in cls.__mro__:
        if base.__module__.split(".")[0] not in LIBRARIES:
            continue
        names |= {n for n in vars(base) if is_private(n)}
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):
            continue
        names |= set(re.findall(r"self\.(_[A-Za-z0-9]\w*)", source))
    return {n for n in names if is_private(n)}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.Module, package: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            modules.add(base)
            modules |= {f"{base}.{alias.name}" for alias in node.names}
    return modules


def uses_in(path: Path, dunders: set[str], root: Path = REPO) -> Iterator[Use]:
    rel = str(path.relative_to(root))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    imports = imported_modules(tree, package)
    handles_libraries = any(
        m == lib or m.startswith(lib + ".") for m in imports for lib in USERS_OF_THE_LIBRARIES
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names]
            dotted = [*(module.split(".") if module else [])]
            if isinstance(node, ast.Import):
                dotted = [part for n in names for part in n.split(".")]
            if dotted and dotted[0] in LIBRARIES:
                for part in [*dotted[1:], *(names if module else [])]:
                    if part.startswith("_"):
                        yield Use(rel, node.lineno, part, "imports private")
        elif isinstance(node, ast.Attribute):
            if node.attr in dunders:
                yield Use(rel, node.lineno, node.attr, "uses a library-internal dunder")
            elif handles_libraries and is_private(node.attr):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    yield Use(rel, node.lineno, node.attr, "reaches into")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(key := node.args[1].value, str)
            and (is_private(key) or key in dunders)
        ):
            yield Use(rel, node.lineno, key, f"{node.func.id} of")
    yield from overrides_in(rel, name, tree)


def overrides_in(rel: str, name: str, tree: ast.Module) -> Iterator[Use]:
    """`def _x` / `self._x` in a subclass of a library class that has a private `_x`."""
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    if not classes:
        return
    module = importlib.import_module(name)
    for node in classes:
        cls = getattr(module, node.name, None)
        if not isinstance(cls, type):
            continue
        private = library_private_names(cls)
        if not private:
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef) and inner.name in private:
                yield Use(rel, inner.lineno, inner.name, "overrides the library's private")
            elif (
                isinstance(inner, ast.Attribute)
                and isinstance(inner.value, ast.Name)
                and inner.value.id == "self"
                and inner.attr in private
            ):
                yield Use(rel, inner.lineno, inner.attr, "uses the library's private")


def all_uses() -> list[Use]:
    dunders = library_dunders()
    uses: list[Use] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "api") in path.parents:
            continue
        uses += uses_in(path, dunders)
    return uses


def test_the_libraries_are_used_through_their_public_api_only() -> None:
    uses = all_uses()
    unexpected = [use for use in uses if (use.path, use.name) not in ALLOWED]
    assert not unexpected, "private parts of grpclib/betterproto2 used:\n" + "\n".join(
        map(str, unexpected)
    )
    assert {(use.path, use.name) for use in uses} == ALLOWED, (
        "the one grpclib workaround moved or went away: update ALLOWED (and the docs)"
    )


def test_the_check_catches_what_it_is_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rule on a sample: the old plugin.py's override, a private import, a dunder."""
    dunders = library_dunders()
    assert {"__connect__", "__dispatch__", "__for_server__"} <= dunders
    assert not PUBLIC_HOOKS & dunders
    from kdp_host.api.v1beta1 import DevicePluginBase

    assert "_call_rpc_handler_server_stream" in library_private_names(DevicePluginBase)
    sample = tmp_path / "kdp_private_api_sample.py"
    monkeypatch.syspath_prepend(tmp_path)
    sample.write_text(
        "from grpclib._typing import IServable\n"
        "import grpclib.server\n"
        "from kdp_host.api.v1beta1 import DevicePluginBase\n"
        "class Service(DevicePluginBase):\n"
        "    async def _call_rpc_handler_server_stream(self, handler, stream, request):\n"
        "        await super()._call_rpc_handler_server_stream(handler, stream, request)\n"
        "def f(server: grpclib.server.Server, channel: object) -> object:\n"
        "    getattr(server, '_handlers')\n"
        "    channel.__connect__()\n"
        "    return server._mapping\n"
    )
    found = {(use.line, use.name) for use in uses_in(sample, dunders, tmp_path)}
    assert found == {
        (1, "_typing"),
        (5, "_call_rpc_handler_server_stream"),
        (6, "_call_rpc_handler_server_stream"),
        (8, "_handlers"),
        (9, "__connect__"),
        (10, "_mapping"),
    }
