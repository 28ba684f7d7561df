"""What the config declarations generate: the JSON Schema, the chart's copy, README tables.

`make schema` (scripts/generate-config-docs.py) writes them; tests/test_config_docs.py fails
when a committed copy differs from a fresh generation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from .declare import Key, OneOf, Section, declarations, section_schema
from .kinds import Kind, ListOf, StringMap
from .model import README_TABLES, Config
from .syntax import DURATION_PATTERN

_DEFS: Final = "#/$defs/"
_EMBEDDED_DEFS: Final = "#/properties/config/$defs/"
_TABLE: Final = re.compile(
    r"(<!-- config-table: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /config-table -->)", re.S
)

SCHEMA_DEFS: Final[dict[str, Any]] = {
    "duration": {
        "type": "string",
        "pattern": DURATION_PATTERN,
        "description": "e.g. 500ms, 10s, 1m30s, 1h",
    },
    "argv": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string"},
        "description": "A command as a list of arguments, run without a shell.",
    },
    "stringMap": {
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean"]},
    },
}


def config_schema() -> dict[str, Any]:
    """config/schema.json."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kdp-host.example/config.schema.json",
        "title": "kdp-host config",
        "description": (
            "Kubernetes device plugins declared in one YAML file. Generated from "
            "kdp_host/config/model.py by `make schema`. kdp-host itself validates more "
            "(extended resource names as the kubelet checks them, template fields, exclusive "
            "keys) and reports every error with its line."
        ),
        "$defs": SCHEMA_DEFS,
        **section_schema(Config),
    }


def _rebase_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                _EMBEDDED_DEFS + value[len(_DEFS) :]
                if key == "$ref" and isinstance(value, str) and value.startswith(_DEFS)
                else _rebase_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rebase_refs(item) for item in node]
    return node


def embedded_config_schema() -> dict[str, Any]:
    """config/schema.json as `properties.config` of the chart's values.schema.json."""
    schema = config_schema()
    for key in ("$schema", "$id", "title"):
        schema.pop(key)
    return dict(_rebase_refs(schema))


def readme_table(name: str) -> str:
    cls, prefix = README_TABLES[name]
    own = {section: table for table, (section, _) in README_TABLES.items() if table != name}
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| {k} | {d} | {m} |" for k, d, m in rows(cls, prefix, own)]
    return "\n".join(lines) + "\n"


def with_readme_tables(text: str) -> str:
    """README text with every `<!-- config-table: NAME -->` block regenerated."""
    names = [m.group("name") for m in _TABLE.finditer(text)]
    missing = set(README_TABLES) - set(names)
    if missing:
        raise ValueError(f"README.md lacks config-table markers for {sorted(missing)}")
    return _TABLE.sub(lambda m: m.group(1) + readme_table(m.group("name")) + m.group(4), text)


def declared_key_paths() -> list[str]:
    """Every key of the config file: `kubelet.socketDir`, `resources[].glob.paths`, ..."""
    return list(key_paths(Config))


def data_key_paths(data: Any, prefix: str = "") -> Iterator[str]:
    """The key paths a parsed YAML document uses (list items as `[]`). The keys of a string
    map (`env`, `annotations`, `attributes`) are the user's names, not config keys."""
    maps = {path for path, kind in declared_kinds(Config) if isinstance(kind, StringMap)}
    return _data_key_paths(data, prefix, maps)


def _data_key_paths(data: Any, prefix: str, maps: set[str]) -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            if path not in maps:
                yield from _data_key_paths(value, path, maps)
    elif isinstance(data, list):
        for item in data:
            yield from _data_key_paths(item, prefix + "[]", maps)


def declared_kinds(cls: type[Any], prefix: str = "") -> Iterator[tuple[str, Kind | None]]:
    """Every key path below `cls` (`resources[].glob.paths`, ...) with its kind (None for a
    driver-style key of a `one_of`)."""
    for _, declaration in declarations(cls):
        if isinstance(declaration, OneOf):
            for name, option in declaration.options.items():
                yield prefix + name, None
                yield from declared_kinds(option, f"{prefix}{name}.")
            continue
        path = prefix + declaration.name
        yield path, declaration.kind
        kind = declaration.kind
        while isinstance(kind, ListOf):
            kind, path = kind.item, path + "[]"
        if isinstance(kind, Section):
            yield from declared_kinds(kind.cls, path + ".")


def key_paths(cls: type[Any], prefix: str = "") -> Iterator[str]:
    """Every key path below `cls`: `resources[].glob.paths`, ..."""
    return (path for path, _ in declared_kinds(cls, prefix))


def default_text(declaration: Key) -> str:
    if declaration.default_doc is not None:
        return declaration.default_doc
    if declaration.required:
        return "required"
    if declaration.yaml_default in (None, {}, []):
        return "none"
    value = declaration.yaml_default
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"`{value}`"


def rows(
    cls: type[Any], prefix: str, own_tables: Mapping[type[Any], str]
) -> Iterator[tuple[str, str, str]]:
    """README rows (key, default, meaning) of `cls`; nested sections are flattened unless
    they have a table of their own (then one row points at it)."""
    for _, declaration in declarations(cls):
        if isinstance(declaration, OneOf):
            names = " / ".join(f"`{prefix}{name}`" for name in declaration.options)
            yield names, "one required", declaration.doc
            continue
        path = prefix + declaration.name
        kind = declaration.kind
        nested = kind.item if isinstance(kind, ListOf) else kind
        if isinstance(nested, Section) and nested.cls not in own_tables:
            suffix = "[]." if isinstance(kind, ListOf) else "."
            if declaration.full_doc:
                yield f"`{path}`", default_text(declaration), declaration.full_doc
            yield from rows(nested.cls, path + suffix, own_tables)
            continue
        yield f"`{path}`", default_text(declaration), declaration.full_doc
