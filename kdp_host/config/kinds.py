"""The kinds of config values: how one key's value is read from YAML (`Reader` collects
every problem with its line), described in JSON Schema and shown in the README. The one
kind bound to declarations, `Section`, lives with them in declare.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..rules import absolute_path_problem, exec_string_problem, text_problem
from .source import FieldPath, LinedProblem, path_text
from .syntax import parse_duration, template_problem


class Invalid:
    """What a kind returns for a value it reported a problem about."""


INVALID: Final = Invalid()


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
    """A string without NUL or control characters (tab and newline allowed), short enough
    for an exec (`rules.exec_string_problem`); optionally a template with the given fields,
    and a rule from kdp_host.rules."""

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
        if why := text_problem(value) or exec_string_problem(value):
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
    """A duration like `10s` or `1m30s`, between `minimum` and `maximum` seconds."""

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
    """An integer between `minimum` and `maximum`, both included."""

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
    """`true` or `false`."""

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        if not isinstance(value, bool):
            return r.wrong_type(path, "true or false", value)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Choice(Kind):
    """One of `options`, spelled exactly."""

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
    value_rule: Callable[[str], str | None] | None = None
    """A rule every value must pass (kdp_host.rules)."""

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
            if (
                (why := text_problem(item) or exec_string_problem(item, key))
                or (self.templates is not None and (why := template_problem(item, self.templates)))
                or (self.value_rule is not None and (why := self.value_rule(item)))
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
    may_share: tuple[str, str] | None = None
    """(attribute, why) of items that may share the unique value when each has that attribute
    set (resources with a nodeSelector: at most one of them selects a node)."""

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
                    earlier = items[first[unique]]
                    if self.may_share is not None and all(
                        getattr(each, self.may_share[0]) is not None for each in (earlier, item)
                    ):
                        continue
                    also = path_text((*path, first[unique]))
                    why = f" ({self.may_share[1]})" if self.may_share is not None else ""
                    r.problem(
                        (*path, index, yaml_key),
                        f"duplicate {yaml_key} {unique!r} (also {also}){why}",
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
