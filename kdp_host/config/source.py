"""A config file from bytes on disk to plain data with a line number for every field path.

One function, `read_config_source`, reads, decodes and parses a config file; start-up and
live reload both call it, so they accept exactly the same files. Its work is bounded, because
a bad file must never stop or stall a running host:

- at most MAX_CONFIG_BYTES are read, and only from a regular file (a FIFO would block);
- the bytes must be UTF-8 (no replacement characters: what start-up refuses, reload refuses);
- the YAML is built from the parser's event stream without recursion, nesting deeper than
  MAX_DEPTH is refused, and aliases are not expanded: an alias shares the anchored value,
  and the nodes aliases bring in are counted against MAX_ALIAS_NODES, so a few hundred bytes
  of nested aliases (an "alias bomb") are refused instead of costing seconds or gigabytes;
- an alias to an anchor that is still open (a recursive structure) is refused;
- a key given twice in one mapping is an error naming both lines (YAML would keep the last).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, cast

import yaml

from ..files import FileReadError, read_attribute

MAX_CONFIG_BYTES: Final = 2 * 1024 * 1024
"""Largest config file read (a ConfigMap holds at most 1 MiB)."""
MAX_DEPTH: Final = 64
"""Deepest nesting of mappings and sequences (the config's own shape needs fewer than 10)."""
MAX_ALIAS_NODES: Final = 10_000
"""Most nodes all aliases of a file may bring in together."""

FieldPath = tuple[str | int, ...]
_MAP_TAG: Final = "tag:yaml.org,2002:map"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SourceError(Exception):
    """A file that cannot be read or parsed at all; `problems` are complete error lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


LinedProblem = tuple[int, str]
"""A problem and the line it is on (0: the whole file), so problems can be listed in the
order of the file."""


@dataclass
class ConfigSource:
    """A parsed config file: its data, the line of each field path, and parse-level problems
    (duplicate keys) that do not stop the rest of the file from being checked."""

    data: Any
    lines: dict[FieldPath, int]
    sha256: str
    problems: list[LinedProblem] = field(default_factory=list)


def read_config_bytes(path: Path) -> bytes:
    """The file's bytes: a regular file of at most MAX_CONFIG_BYTES, read like every small
    file (`files.read_attribute`). Raises SourceError."""
    try:
        data = read_attribute(str(path), MAX_CONFIG_BYTES)
    except FileReadError as exc:
        raise SourceError([f"cannot read: {exc}"]) from None
    if data is None:
        raise SourceError([f"cannot read: {os.strerror(errno.ENOENT)}"])
    return data


def decode_config(data: bytes) -> str:
    """Strict UTF-8; the error names the line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SourceError([f"line {line}: not UTF-8 text (byte {exc.start})"]) from None


def read_config_source(path: Path) -> ConfigSource:
    """Read, decode and parse a config file. Raises SourceError."""
    import hashlib

    data = read_config_bytes(path)
    source = parse_config_text(decode_config(data))
    source.sha256 = hashlib.sha256(data).hexdigest()
    return source


@dataclass
class _Open:
    """A mapping or sequence being built."""

    value: dict[Any, Any] | list[Any]
    path: FieldPath
    anchor: str | None
    line: int
    nodes: int = 1
    key: Any = None
    key_line: int = 0
    has_key: bool = False
    key_lines: dict[Any, int] = field(default_factory=dict)
    merges: list[tuple[Any, int]] = field(default_factory=list)


@dataclass
class _Anchored:
    """A YAML node's value and how many nodes it was built from (aliases count once each)."""

    value: Any
    nodes: int


def parse_config_text(text: str) -> ConfigSource:
    """Parse one YAML document into plain data and a line map. Raises SourceError."""
    builder = _Builder()
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            builder.feed(event)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SourceError([f"{where}invalid YAML: {problem}"]) from None
    return ConfigSource(builder.root, builder.lines, "", builder.problems)


class _Builder:
    """Builds data from parser events with an explicit stack (no recursion)."""

    def __init__(self) -> None:
        self.root: Any = None
        self.documents = 0
        self.lines: dict[FieldPath, int] = {}
        self.problems: list[LinedProblem] = []
        self.stack: list[_Open] = []
        self.anchors: dict[str, _Anchored] = {}
        self.open_anchors: set[str] = set()
        self.alias_nodes = 0
        self.resolver = yaml.resolver.Resolver()
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, line: int, message: str) -> NoReturn:
        raise SourceError([f"line {line}: {message}"])

    def feed(self, event: yaml.Event) -> None:
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                self.fail(line, "more than one YAML document (remove the second '---')")
        elif isinstance(event, yaml.ScalarEvent):
            self.add(self.scalar(event, line), 1, line, event.anchor)
        elif isinstance(event, yaml.AliasEvent):
            self.alias(event, line)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            self.start(event, line)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            self.end()

    def scalar(self, event: yaml.ScalarEvent, line: int) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            resolve = cast(Any, self.resolver).resolve
            tag = resolve(yaml.ScalarNode, event.value, event.implicit)
        if self.expecting_key() and tag == _MERGE_TAG:
            return _MERGE
        construct = yaml.constructor.SafeConstructor.yaml_constructors.get(tag)
        if construct is None or tag is None:
            self.fail(line, f"unsupported YAML tag {event.tag}")
        node = yaml.ScalarNode(tag, event.value, style=event.style)
        try:
            return construct(self.constructor, node)
        except (yaml.YAMLError, ValueError) as exc:
            self.fail(line, f"invalid {tag.rpartition(':')[2]} value {event.value!r}: {exc}")

    def expecting_key(self) -> bool:
        top = self.stack[-1] if self.stack else None
        return top is not None and isinstance(top.value, dict) and not top.has_key

    def alias(self, event: yaml.AliasEvent, line: int) -> None:
        name = event.anchor or ""
        if name in self.open_anchors:
            self.fail(line, f"recursive alias *{name} (a structure that contains itself)")
        anchored = self.anchors.get(name)
        if anchored is None:
            self.fail(line, f"alias *{name} names no anchor")
        if self.expecting_key():
            self.fail(line, f"an alias (*{name}) cannot be a mapping key")
        self.alias_nodes += anchored.nodes
        if self.alias_nodes > MAX_ALIAS_NODES:
            self.fail(
                line,
                f"aliases expand to more than {MAX_ALIAS_NODES} nodes; kdp-host refuses "
                "alias bombs (write the repeated part out, or use fewer aliases)",
            )
        self.add(anchored.value, anchored.nodes, line, None)

    def start(self, event: yaml.MappingStartEvent | yaml.SequenceStartEvent, line: int) -> None:
        is_map = isinstance(event, yaml.MappingStartEvent)
        if event.tag not in (None, "!", _MAP_TAG if is_map else _SEQ_TAG):
            self.fail(line, f"unsupported YAML tag {event.tag}")
        if self.expecting_key():
            self.fail(line, "a mapping key must be a plain value, not a mapping or list")
        if len(self.stack) >= MAX_DEPTH:
            self.fail(line, f"nested deeper than {MAX_DEPTH} levels")
        path = self.child_path(line)
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        value: dict[Any, Any] | list[Any] = {} if is_map else []
        self.stack.append(_Open(value, path, event.anchor, line))

    def end(self) -> None:
        done = self.stack.pop()
        if done.anchor is not None:
            self.open_anchors.discard(done.anchor)
        if isinstance(done.value, dict):
            self.apply_merges(done)
        self.complete(done.value, done.nodes, done.anchor, done.line)

    def apply_merges(self, done: _Open) -> None:
        """`<<: *base` (or a list of them): keys of the merged mappings the mapping lacks."""
        assert isinstance(done.value, dict)
        for merged, line in done.merges:
            sources = merged if isinstance(merged, list) else [merged]
            for source in sources:
                if not isinstance(source, dict):
                    self.fail(line, "'<<' merges mappings only")
                for key, item in source.items():
                    if key not in done.value:
                        done.value[key] = item
                        self.lines.setdefault((*done.path, str(key)), line)

    def child_path(self, line: int) -> FieldPath:
        """The path of the value that starts now, recording its line."""
        if not self.stack:
            self.lines[()] = line
            return ()
        top = self.stack[-1]
        if isinstance(top.value, list):
            path = (*top.path, len(top.value))
            self.lines[path] = line
            return path
        if top.key is _MERGE:
            return top.path
        return (*top.path, str(top.key))

    def add(self, value: Any, nodes: int, line: int, anchor: str | None) -> None:
        if self.stack and not self.expecting_key():
            self.child_path(line)
        self.complete(value, nodes, anchor, line)

    def complete(self, value: Any, nodes: int, anchor: str | None, line: int) -> None:
        if anchor is not None:
            self.anchors[anchor] = _Anchored(value, nodes)
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        top.nodes += nodes
        if isinstance(top.value, list):
            top.value.append(value)
        elif not top.has_key:
            self.set_key(top, value, line)
        else:
            top.has_key = False
            if top.key is _MERGE:
                top.merges.append((value, top.key_line))
            else:
                top.value[top.key] = value

    def set_key(self, top: _Open, key: Any, line: int) -> None:
        top.key, top.key_line, top.has_key = key, line, True
        if key is _MERGE:
            return
        try:
            first = top.key_lines.get(key)
        except TypeError:
            self.fail(line, "a mapping key must be a plain value")
        path = (*top.path, str(key))
        if first is not None:
            self.problems.append(
                (
                    line,
                    f"line {line}: {path_text(path)}: duplicate key (first on line {first}); "
                    "YAML would silently keep only the last",
                )
            )
            return
        top.key_lines[key] = line
        self.lines[path] = line


class _MergeKey:
    def __repr__(self) -> str:
        return "<<"


_MERGE: Final = _MergeKey()


def path_text(path: FieldPath) -> str:
    """`resources[0].glob.paths`: a field path as errors show it."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "<top>"
