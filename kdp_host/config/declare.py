"""The machinery that turns declared config dataclasses into a loader, a schema and docs.

A config section is a frozen dataclass whose fields are declared with `key(...)` (one YAML
key: its kind, default and doc) or `one_of(...)` (exactly one of several keys, each a
section: the driver). Everything else follows from those declarations:

- `read_section` reads a mapping into the dataclass, reporting every problem with its field
  path and line (unknown keys with a did-you-mean hint, missing required keys, wrong types,
  rule violations) and carrying on, so one run lists all errors of a file;
- `section_schema` gives its JSON Schema (config/schema.json and the chart's schema);
- `restart_keys` lists the keys only a restart applies (`restart=True`), for reload.py;
- docs.py gives the README reference rows (`rows`) and every key (`key_paths`).

The kinds of values (how one key reads YAML) are in kinds.py, the duration and template
syntax in syntax.py.

A section may define `check(self) -> Iterator[tuple[FieldPath, str]]` for rules that span
several keys (exclusive keys, unique names); paths are relative to the section.

Defaults are written once, in YAML form (`default="1m"`), and converted by the key's kind
into the dataclass default, so the docs, the schema and the loader cannot disagree.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Final, cast

from .kinds import INVALID, Kind, Reader
from .source import FieldPath

DECLARATION: Final = "kdp_host.config"
"""The dataclass field metadata key that holds a Key or OneOf."""
RESTART_NOTE: Final = "Needs a restart to change."
"""What the docs of a `restart=True` key end with."""


@dataclass(frozen=True)
class Section(Kind):
    """A nested mapping declared by a dataclass."""

    cls: type[Any]

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        section = read_section(r, self.cls, value, path)
        return INVALID if section is None else section

    def schema(self) -> dict[str, Any]:
        return section_schema(self.cls)


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Key:
    """One YAML key of a section."""

    name: str
    kind: Kind
    doc: str
    yaml_default: Any
    """The default as written in YAML (None: optional with no value; MISSING: required)."""
    default_doc: str | None
    """README's default column when the default is not a literal (`the matched path`)."""
    restart: bool = False
    """A running host applies a change of this key only after a restart: a live reload that
    changes it is refused (`restart_keys`, reload.py)."""

    @property
    def required(self) -> bool:
        return self.yaml_default is MISSING

    @property
    def full_doc(self) -> str:
        """The doc as the schema and README show it: with the restart note of a restart key."""
        return f"{self.doc} {RESTART_NOTE}" if self.restart else self.doc


@dataclass(frozen=True)
class OneOf:
    """Exactly one of several keys, each a section: `glob:` or `shell:`."""

    what: str
    options: Mapping[str, type[Any]]
    doc: str


def key(
    name: str,
    kind: Kind,
    doc: str,
    *,
    default: Any = MISSING,
    factory: Callable[[], Any] | None = None,
    default_doc: str | None = None,
    restart: bool = False,
) -> Any:
    """Declare a dataclass field as the YAML key `name`.

    `default` is written in YAML form and converted by `kind` (so `default="1m"` gives
    60.0); None means optional without a value. `factory` builds the default of a section
    (`allocate:` absent is an empty AllocateConfig). With neither, the key is required.
    `restart`: only a restart applies a change (a live reload is refused).
    """
    declaration = Key(name, kind, doc, MISSING if factory is None else {}, default_doc, restart)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={DECLARATION: declaration})
    if default is MISSING:
        return dataclasses.field(metadata={DECLARATION: declaration})
    declaration = dataclasses.replace(declaration, yaml_default=default)
    if default is None or default == []:
        value: Any = None if default is None else ()
    elif default == {}:
        value = {}
    else:
        value = _convert_default(kind, default, name)
    if isinstance(value, dict):
        frozen = dict(value)
        return dataclasses.field(
            default_factory=lambda: dict(frozen), metadata={DECLARATION: declaration}
        )
    return dataclasses.field(default=value, metadata={DECLARATION: declaration})


def one_of(what: str, options: Mapping[str, type[Any]], doc: str) -> Any:
    return dataclasses.field(metadata={DECLARATION: OneOf(what, options, doc)})


def _convert_default(kind: Kind, default: Any, name: str) -> Any:
    r = Reader({})
    value = kind.read(r, default, (name,))
    if value is INVALID:
        raise ValueError(f"default of {name!r} does not validate: {r.problems}")
    return value


def declarations(cls: type[Any]) -> tuple[tuple[dataclasses.Field[Any], Key | OneOf], ...]:
    """The declared fields of a section class, in order. Found once per class: a config of
    a hundred resources reads each of their sections a hundred times (issue 19)."""
    return _declarations(cast(type, cls))  # (mypy: type[Any] is not Hashable)


def yaml_keys(cls: type[Any]) -> frozenset[str]:
    """The YAML keys a section class declares (each option of a `one_of` too)."""
    return _yaml_keys(cast(type, cls))


@functools.cache
def _declarations(cls: type) -> tuple[tuple[dataclasses.Field[Any], Key | OneOf], ...]:
    return tuple(
        (f, declaration)
        for f in dataclasses.fields(cls)
        if (declaration := f.metadata.get(DECLARATION)) is not None
    )


@functools.cache
def _yaml_keys(cls: type) -> frozenset[str]:
    names: list[str] = []
    for _, d in declarations(cls):
        names.extend(d.options if isinstance(d, OneOf) else [d.name])
    return frozenset(names)


# --------------------------------------------------------------------------- reading


def read_section(r: Reader, cls: type[Any], value: Any, path: FieldPath) -> Any | None:
    """Read a mapping into `cls`; None when a required part is missing or invalid."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        r.wrong_type(path, "a mapping", value)
        return None
    known = yaml_keys(cls)
    for name in value:
        if name not in known:
            import difflib  # only for a config with a mistake (not loaded by a good one)

            hint = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
            r.problem(
                (*path, str(name)),
                "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""),
            )
    problems_before = len(r.found)
    values: dict[str, Any] = {}
    complete = True
    for f, declaration in declarations(cls):
        if isinstance(declaration, OneOf):
            chosen = _read_one_of(r, declaration, value, path)
            complete &= chosen is not None
            values[f.name] = chosen
            continue
        if value.get(declaration.name) is None:
            if declaration.required:
                r.problem(path, f"missing required key {declaration.name!r}")
                complete = False
            continue
        item = declaration.kind.read(r, value[declaration.name], (*path, declaration.name))
        if item is INVALID:
            complete &= not declaration.required
            continue
        values[f.name] = item
    if not complete:
        return None
    section = cls(**values)
    check = getattr(section, "check", None)
    # The rules across keys judge what the file says: after a problem in this section a key
    # stands at its default instead, and a rule about it would be a second, spurious error
    # (a relative `paths` entry is not also "needs exactly one of paths or group").
    if check is not None and len(r.found) == problems_before:
        for relative, message in check():
            r.problem((*path, *relative), message)
    return section


def _read_one_of(r: Reader, declaration: OneOf, value: dict[Any, Any], path: FieldPath) -> Any:
    present = [name for name in declaration.options if name in value]
    if len(present) != 1:
        *others, last = declaration.options
        names = f"{', '.join(others)} or {last}" if others else last
        r.problem(
            path,
            f"needs exactly one {declaration.what} ({names}), got "
            + (", ".join(present) if present else "none"),
        )
    chosen = None
    for name in present:
        section = read_section(r, declaration.options[name], value[name], (*path, name))
        if chosen is None:
            chosen = section
    return chosen


# ------------------------------------------------------------------- schema and restart keys


def _yaml_default(declaration: Key) -> Any:
    if declaration.required or declaration.yaml_default is None:
        return MISSING
    if isinstance(declaration.kind, Section) or declaration.yaml_default in ({}, []):
        return MISSING
    return declaration.yaml_default


def section_schema(cls: type[Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    one_of_groups: list[list[str]] = []
    for _, declaration in declarations(cls):
        if isinstance(declaration, OneOf):
            for name, option in declaration.options.items():
                properties[name] = section_schema(option)
            one_of_groups.append(list(declaration.options))
            continue
        prop = declaration.kind.schema()
        if declaration.full_doc:
            prop["description"] = declaration.full_doc
        if (default := _yaml_default(declaration)) is not MISSING:
            prop["default"] = default
        properties[declaration.name] = prop
        if declaration.required:
            required.append(declaration.name)
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if required:
        schema["required"] = required
    for group in one_of_groups:
        schema["oneOf"] = [{"required": [name]} for name in group]
    schema["properties"] = properties
    return schema


def restart_keys(cls: type[Any], prefix: str = "") -> Iterator[tuple[str, tuple[str, ...]]]:
    """Every key of `cls` and its nested sections declared `restart=True`: its path
    (`kubelet.socketDir`) and the attribute names that reach its value from a `cls`."""
    for field, declaration in declarations(cls):
        if not isinstance(declaration, Key):
            continue
        path = prefix + declaration.name
        if declaration.restart:
            yield path, (field.name,)
        if isinstance(declaration.kind, Section):
            for inner, attributes in restart_keys(declaration.kind.cls, path + "."):
                yield inner, (field.name, *attributes)
