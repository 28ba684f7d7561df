"""The machinery that turns declared config dataclasses into a loader, a schema and docs.

A config section is a frozen dataclass whose fields are declared with `key(...)` (one YAML
key: its kind, default and doc) or `one_of(...)` (exactly one of several keys, each a
section: the driver). Everything else follows from those declarations:

- `read_section` reads a mapping into the dataclass, reporting every problem with its field
  path and line (unknown keys with a did-you-mean hint, missing required keys, wrong types,
  rule violations) and carrying on, so one run lists all errors of a file;
- `section_schema` gives its JSON Schema (config/schema.json and the chart's schema);
- `rows` gives the README reference rows (key, default, meaning);
- `key_paths` lists every key, for the check that config/example.yaml shows each one.

A section may define `check(self) -> Iterator[tuple[FieldPath, str]]` for rules that span
several keys (exclusive keys, unique names); paths are relative to the section.

Defaults are written once, in YAML form (`default="1m"`), and converted by the key's kind
into the dataclass default, so the docs, the schema and the loader cannot disagree.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Final

from ..rules import absolute_path_problem, text_problem
from .source import FieldPath, LinedProblem

DECLARATION: Final = "kdp_host.config"
"""The dataclass field metadata key that holds a Key or OneOf."""

_DURATION_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION: Final = 30 * 24 * 3600.0
"""The longest duration the config takes (30 days): far beyond any sensible interval or
timeout, and well inside what the event loop's timers and epoll accept."""
_TEMPLATE_TOKEN: Final = re.compile(r"\{\{|\}\}|\{([A-Za-z][A-Za-z0-9]*)\}")
"""A template's syntax: `{name}` (a letter, then letters and digits) is a field; `{{` and
`}}` stand for a literal `{` and `}`; every other brace is literal text as it is (`{}`,
`{ x }`, `${1}`, a lone `{`), so `find -exec cmd {} ;` or an awk program need no escaping."""
_ESCAPED: Final = {"{{": "{", "}}": "}"}


class Invalid:
    """What a kind returns for a value it reported a problem about."""


INVALID: Final = Invalid()

RESTART_NOTE: Final = "Needs a restart to change."


# --------------------------------------------------------------------------- helpers


def parse_duration(text: str) -> float:
    """`500ms`, `10s`, `1m30s`, `1h` -> seconds. Raises ValueError."""
    text = text.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"invalid duration {text!r} (use e.g. 500ms, 10s, 1m30s, 1h)")
    if total > MAX_DURATION:
        raise ValueError(f"duration {text!r} is longer than the limit of 720h (30 days)")
    return total


def _render_token(match: re.Match[str], values: Mapping[str, str]) -> str:
    name = match.group(1)
    if name is None:
        return _ESCAPED[match.group(0)]
    return values.get(name, match.group(0))


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Substitute `{field}` for each field in `values` and `{{` / `}}` for one brace, in one
    pass (a value is never read again); a field not in `values` and every other brace stay
    as they are.

    Used for every template of the config (allocate env and annotations, preStart and
    allocate commands, glob containerPath and numaNodeFile, health command arguments):
    nothing else is interpreted, so a stray brace can never raise.
    """
    if "{" not in text and "}" not in text:
        return text
    return _TEMPLATE_TOKEN.sub(lambda m: _render_token(m, values), text)


def template_fields(text: str) -> set[str]:
    """The fields `text` uses (escaped braces are not fields)."""
    return {name for name in _TEMPLATE_TOKEN.findall(text) if name}


def template_problem(text: str, allowed: frozenset[str]) -> str | None:
    for name in _TEMPLATE_TOKEN.findall(text):
        if name and name not in allowed:
            return (
                f"unknown template field {{{name}}}; use {', '.join(sorted(allowed))} "
                f"(write {{{{{name}}}}} for the literal text {{{name}}})"
            )
    return None


def path_text(path: FieldPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "<top>"


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


class Reader:
    """Collects problems, each with the line of the nearest field path that has one."""

    def __init__(self, lines: Mapping[FieldPath, int]) -> None:
        self.lines = lines
        self.found: list[LinedProblem] = []
        """Every problem with its line (0 when the path has none: the whole file)."""

    @property
    def problems(self) -> list[str]:
        """The problems in the order of the file's lines (those without a line first); the
        order they were found within one line."""
        return [text for _, text in sorted(self.found, key=lambda found: found[0])]

    def problem(self, path: FieldPath, message: str) -> None:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        where = f"line {line}: " if line else ""
        self.found.append((line or 0, f"{where}{path_text(path)}: {message}"))

    def wrong_type(self, path: FieldPath, what: str, value: Any) -> Invalid:
        self.problem(path, f"must be {what}, got {_type_name(value)}")
        return INVALID


# --------------------------------------------------------------------------- kinds


class Kind:
    """How one key's value is read, described in JSON Schema, and shown in the README."""

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Kind):
    """A string without NUL or control characters (tab and newline allowed); optionally a
    template with the given fields, and a rule from kdp_host.rules."""

    rule: Callable[[str], str | None] | None = None
    templates: frozenset[str] | None = None
    extra_schema: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prefix: str = ""
    """Put before the rule's problem (`'x' is not a valid ...: `)."""
    convert: Callable[[str], str] | None = None
    """Applied to a valid value (`/dev/ttyUSB*` -> `ttyUSB*`)."""

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        if not isinstance(value, str):
            return r.wrong_type(path, "a string", value)
        if not value:
            r.problem(path, "must not be empty")
            return INVALID
        if why := text_problem(value):
            r.problem(path, why)
            return INVALID
        problems = []
        if self.templates is not None and (why := template_problem(value, self.templates)):
            problems.append(why)
        if self.rule is not None and (why := self.rule(value)):
            problems.append(self.prefix.format(value=value) + why)
        for why in problems:
            r.problem(path, why)
        if problems:
            return INVALID
        return self.convert(value) if self.convert is not None else value

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, **self.extra_schema}


def AbsolutePath(rule: Callable[[str], str | None] | None = None) -> Text:
    """A Text that must be an absolute path (after `rule`, if any)."""

    def check(value: str) -> str | None:
        return absolute_path_problem(value) or (rule(value) if rule else None)

    return Text(rule=check, extra_schema={"pattern": "^/"})


@dataclass(frozen=True)
class Duration(Kind):
    minimum: float = 0.0
    maximum: float | None = None
    """A bound below the config-wide 720h, with `why` it is there."""
    why: str = ""

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        if not isinstance(value, str):
            return r.wrong_type(path, "a duration like 10s", value)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            r.problem(path, str(exc))
            return INVALID
        if seconds < self.minimum:
            r.problem(path, f"must be at least {self.minimum:g}s")
            return INVALID
        if self.maximum is not None and seconds > self.maximum:
            r.problem(path, f"must be at most {self.maximum:g}s: {self.why}")
            return INVALID
        return seconds

    def schema(self) -> dict[str, Any]:
        return {"$ref": "#/$defs/duration"}


@dataclass(frozen=True)
class Integer(Kind):
    minimum: int
    maximum: int

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            return r.wrong_type(path, "an integer", value)
        if not self.minimum <= value <= self.maximum:
            r.problem(path, f"must be between {self.minimum} and {self.maximum}")
            return INVALID
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}


@dataclass(frozen=True)
class Boolean(Kind):
    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        if not isinstance(value, bool):
            return r.wrong_type(path, "true or false", value)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Choice(Kind):
    options: tuple[str, ...]

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        if not isinstance(value, str):
            return r.wrong_type(path, "a string", value)
        if value not in self.options:
            r.problem(path, f"must be one of {', '.join(self.options)}; got {value!r}")
            return INVALID
        return value

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.options)}


@dataclass(frozen=True)
class Argv(Kind):
    """A command as a list of strings (never one string: there is no shell)."""

    templates: frozenset[str] | None = None

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        if isinstance(value, str):
            r.problem(path, 'must be a list of arguments, e.g. ["sh", "-c", "..."]')
            return INVALID
        if not isinstance(value, list):
            return r.wrong_type(path, "a list of strings", value)
        if not value:
            r.problem(path, "must not be empty")
            return INVALID
        item = Text(templates=self.templates)
        args = [item.read(r, arg, (*path, i)) for i, arg in enumerate(value)]
        return INVALID if any(a is INVALID for a in args) else tuple(args)

    def schema(self) -> dict[str, Any]:
        return {"$ref": "#/$defs/argv"}


@dataclass(frozen=True)
class StringMap(Kind):
    """Names to strings (numbers and booleans are taken as their text)."""

    key_rule: Callable[[str], str | None]
    templates: frozenset[str] | None = None
    key_pattern: str | None = None
    """The key rule as far as JSON Schema can express it."""

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        if not isinstance(value, dict):
            return r.wrong_type(path, "a mapping", value)
        out: dict[str, str] = {}
        ok = True
        for key, item in value.items():
            item_path = (*path, str(key))
            if not isinstance(key, str) or not key:
                r.problem(item_path, "keys must be non-empty strings")
                ok = False
                continue
            if why := text_problem(key) or self.key_rule(key):
                r.problem(item_path, why)
                ok = False
            if isinstance(item, bool):
                item = "true" if item else "false"
            elif isinstance(item, int | float):
                item = str(item)
            if not isinstance(item, str):
                r.wrong_type(item_path, "a string", item)
                ok = False
                continue
            if (why := text_problem(item)) or (
                self.templates is not None and (why := template_problem(item, self.templates))
            ):
                r.problem(item_path, why)
                ok = False
            out[key] = item
        return out if ok else INVALID

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"$ref": "#/$defs/stringMap"}
        if self.key_pattern is not None:
            schema["propertyNames"] = {"pattern": self.key_pattern}
        return schema


@dataclass(frozen=True)
class ListOf(Kind):
    """A non-empty list. Items that do not validate are reported and left out, so checks
    across the valid ones (unique names) still run; the file is refused either way."""

    item: Kind
    hint: str = "a list"
    empty: str | None = "must not be empty"
    """The problem of an empty list (None: an empty list is fine)."""
    single: bool = False
    """Also take one item written on its own (a mapping instead of a list of one)."""
    unique: tuple[str, str] | None = None
    """(attribute, YAML key) whose value must differ between items (a section's name)."""

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        if self.single and isinstance(value, dict):
            item = self.item.read(r, value, path)
            return () if item is INVALID else (item,)
        if isinstance(value, str) or not isinstance(value, list):
            return r.wrong_type(path, self.hint, value)
        if not value and self.empty is not None:
            r.problem(path, self.empty)
            return INVALID
        items = [self.item.read(r, item, (*path, i)) for i, item in enumerate(value)]
        if self.unique is not None:
            attribute, yaml_key = self.unique
            first: dict[Any, int] = {}
            for index, item in enumerate(items):
                if item is INVALID:
                    continue
                unique = getattr(item, attribute)
                if unique in first:
                    also = path_text((*path, first[unique]))
                    r.problem(
                        (*path, index, yaml_key), f"duplicate {yaml_key} {unique!r} (also {also})"
                    )
                first.setdefault(unique, index)
        return tuple(item for item in items if item is not INVALID)

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": self.item.schema()}
        if self.empty is not None:
            schema["minItems"] = 1
        if self.single:
            return {"anyOf": [schema, self.item.schema()]}
        return schema


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


def declarations(cls: type[Any]) -> Iterator[tuple[dataclasses.Field[Any], Key | OneOf]]:
    for f in dataclasses.fields(cls):
        declaration = f.metadata.get(DECLARATION)
        if declaration is not None:
            yield f, declaration


def yaml_keys(cls: type[Any]) -> list[str]:
    names: list[str] = []
    for _, d in declarations(cls):
        names.extend(d.options if isinstance(d, OneOf) else [d.name])
    return names


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


# --------------------------------------------------------------------------- schema and docs


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
