"""JSON documents written from parts made once: a `Rendered` entry keeps the JSON text it was
made with and the value it reads back as, so a document of n entries written after one of
them changed renders one entry, not n (`encoded`: the very bytes `json.dumps(body,
sort_keys=True)` writes). The state files of the host (`ownership.json`, `handed-out.json`)
are written so, and a file read back as this host last wrote it is that document again
(`state_file.StateFile`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Rendered(dict[str, Any], Generic[T]):
    """One entry of a document, never changed once made: its fields, their JSON text and
    the value (`value`) the entry reads back as."""

    __slots__ = ("text", "value")
    text: str
    value: T

    def __init__(self, fields: Mapping[str, Any], value: T) -> None:
        super().__init__(fields)
        self.value = value
        self.text = json.dumps(fields, sort_keys=True)


class ReadBack(Rendered[T]):
    """An entry read from a file (another writer's): its JSON text and value only. Its
    fields are not kept (a long file's would double what it costs in memory): it is an
    empty mapping; `fields_of` reads them again from the text."""

    __slots__ = ()

    def __init__(self, fields: Mapping[str, Any], value: T) -> None:
        super().__init__({}, value)
        self.text = json.dumps(fields, sort_keys=True)


def fields_of(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """An entry's fields (a `Rendered` one's read from its text: `ReadBack` keeps none)."""
    return json.loads(entry.text) if isinstance(entry, Rendered) else entry


def encoded(body: Mapping[str, Any]) -> bytes:
    """`json.dumps(body, sort_keys=True).encode()`, each `Rendered` entry as its text."""
    return _encoded(body).encode()


def _encoded(value: object) -> str:
    if isinstance(value, Rendered):
        return value.text
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)}: {_encoded(v)}" for k, v in sorted(value.items()))
        return f"{{{inner}}}"
    if isinstance(value, list):
        return f"[{', '.join([v.text if isinstance(v, Rendered) else _encoded(v) for v in value])}]"
    return json.dumps(value, sort_keys=True)
