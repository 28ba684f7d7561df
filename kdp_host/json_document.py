"""Reading the JSON a command prints: strict UTF-8, no key twice, bounded nesting; a
probe's device list an entry at a time.

`load_json` reads a whole document (an `allocate.command`'s object; the canonical reading,
whose error a caller reports). `list_entries` decodes the entries of a device list (`[...]`
or `{"devices": [...]}`) one by one with the same decoder, so a caller can turn each into a
device while the next is not decoded yet: the decoded entries of a long list never live all
at once (the collector would move them all to its oldest generation, and a full collection
would follow), and the work can pause between two entries. It raises for anything else, or
for a syntax error on the way; the caller then reads the document whole for the error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from .output_checks import QUOTE_LIMIT, Invalid, ProbeOutputError, check_text, quote

__all__ = [
    "NotAList",
    "compact",
    "decode_entry",
    "decode_text",
    "json_flag",
    "json_kind",
    "json_list",
    "json_object",
    "json_string",
    "json_string_map",
    "list_entries",
    "load_json",
    "object_entries",
]


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)
_FIND = json.JSONDecoder()
"""Where an entry ends (decoded without a Python call per object; `_DECODER` decodes it)."""
_SPACE = re.compile(r"[ \t\n\r]*")
"""JSON's whitespace."""
_AFTER = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
"""What may follow a list entry: a comma or the list's end, in whitespace."""


class NotAList(Exception):
    """The document is not a plain device list, or does not decode: read it whole."""


def decode_text(data: bytes | str) -> str:
    """`data` as text: strict UTF-8 (the error names the line)."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise ProbeOutputError(
            "not valid UTF-8", lineno, _line_of(data.decode("utf-8", "replace"), lineno)
        ) from None


def load_json(data: bytes | str) -> Any:
    """The JSON document of `data`: strict UTF-8, no key twice, bounded nesting."""
    text = decode_text(data)
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ProbeOutputError(
            f"invalid JSON: {exc.msg}", exc.lineno, _line_of(text, exc.lineno)
        ) from None
    except _DuplicateKey as exc:
        raise ProbeOutputError(f"invalid JSON: key {str(exc)!r} given twice") from None
    except RecursionError:
        raise ProbeOutputError("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ProbeOutputError(f"invalid JSON: {exc}") from None
    return document


def _line_of(text: str, lineno: int) -> str:
    lines = text.split("\n")
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


def list_entries(text: str) -> Iterator[str]:
    """The text of each entry of the device list `text` holds (`[...]` or
    `{"devices": [...]}`, and nothing else), found one at a time; `decode_entry` decodes
    one. Raises NotAList for any other document and for one that does not decode
    (`load_json` then names the error)."""
    try:
        yield from _entries(text)
    except (ValueError, RecursionError, _DuplicateKey):  # (JSONDecodeError is a ValueError)
        raise NotAList from None


def decode_entry(entry: str) -> Any:
    """An entry `list_entries` found, decoded strictly (no key twice). Raises NotAList."""
    try:
        return _DECODER.raw_decode(entry)[0]  # (it is one value, from end to end)
    except (ValueError, RecursionError, _DuplicateKey):
        raise NotAList from None


def _entries(text: str) -> Iterator[str]:
    def skip(pos: int) -> int:
        found = _SPACE.match(text, pos)
        assert found is not None  # (it matches the empty string)
        return found.end()

    find, after = _FIND.raw_decode, _AFTER.match

    pos = skip(0)
    wrapped = text.startswith("{", pos)
    if wrapped:
        key, pos = _DECODER.raw_decode(text, skip(pos + 1))
        pos = skip(pos)
        if key != "devices" or not text.startswith(":", pos):
            raise NotAList
        pos = skip(pos + 1)
    if not text.startswith("[", pos):
        raise NotAList
    pos = skip(pos + 1)
    if text.startswith("]", pos):
        pos = skip(pos + 1)
    else:
        while True:
            _, end = find(text, pos)
            yield text[pos:end]
            found = after(text, end)  # (a comma, or the end of the list)
            if found is None:
                raise NotAList
            pos = found.end()
            if found.group(1) == "]":
                break
    if wrapped:
        if not text.startswith("}", pos):
            raise NotAList
        pos = skip(pos + 1)
    if pos != len(text):
        raise NotAList


def object_entries(text: str, key: str, each: Callable[[Any], Any]) -> dict[str, Any]:
    """The JSON object `text` is (as `json.loads` reads it), its `key`, when a list, decoded
    an entry at a time, each entry replaced by `each(entry)` at once: the interpreter may
    switch threads between two entries (one `json.loads` of a long document holds the GIL
    for its whole length). Raises ValueError (or what `each` raises) for anything else."""
    decode, pos = _FIND.raw_decode, _skip(text, 0)
    if not text.startswith("{", pos):
        raise ValueError("not a JSON object")
    found: dict[str, Any] = {}
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):
        pos = _skip(text, pos + 1)
    else:
        while True:
            name, pos = decode(text, pos)
            pos = _skip(text, pos)
            if not isinstance(name, str) or not text.startswith(":", pos):
                raise ValueError(f"not a JSON object (at {pos})")
            pos = _skip(text, pos + 1)
            if name == key and text.startswith("[", pos):
                found[name], pos = _each_entry(text, pos, each)
            else:
                found[name], pos = decode(text, pos)
            pos = _skip(text, pos)
            if text.startswith(",", pos):
                pos = _skip(text, pos + 1)
                continue
            if not text.startswith("}", pos):
                raise ValueError(f"not a JSON object (at {pos})")
            pos = _skip(text, pos + 1)
            break
    if pos != len(text):
        raise ValueError(f"extra data (at {pos})")
    return found


def _each_entry(text: str, pos: int, each: Callable[[Any], Any]) -> tuple[list[Any], int]:
    """The list at `pos` (its `[`), each entry turned by `each`; and where it ends."""
    decode, after = _FIND.raw_decode, _AFTER.match
    entries: list[Any] = []
    pos = _skip(text, pos + 1)
    if text.startswith("]", pos):
        return entries, pos + 1
    while True:
        entry, end = decode(text, pos)
        entries.append(each(entry))
        found = after(text, end)  # (a comma, or the end of the list)
        if found is None:
            raise ValueError(f"not a JSON list (at {end})")
        pos = found.end()
        if found.group(1) == "]":
            return entries, pos


def _skip(text: str, pos: int) -> int:
    found = _SPACE.match(text, pos)
    assert found is not None  # (it matches the empty string)
    return found.end()


# Values of a decoded document, checked (Invalid names what is wrong).


def compact(item: Any) -> str:
    try:
        return json.dumps(item, ensure_ascii=False)[: QUOTE_LIMIT + 1]
    except (ValueError, RecursionError):
        return "<unprintable>"


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else "a number"


def json_object(value: Any, what: str, known: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{what} must be an object, got {json_kind(value)}")
    if known.issuperset(value):
        return value
    unknown = sorted(set(value) - known)
    if unknown:
        raise Invalid(f"{what}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return value


def json_string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{what} must be a string, got {json_kind(value)}")
    return check_text(value, what)


def json_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise Invalid(f"{what} must be a list, got {json_kind(value)}")
    return value


def json_string_map(
    value: Any, what: str, key_check: Callable[[str], str | None]
) -> dict[str, str]:
    if not isinstance(value, dict):
        raise Invalid(f"{what} must be an object of strings, got {json_kind(value)}")
    out: dict[str, str] = {}
    for key, item in value.items():
        check_text(key, f"{what} key")
        if why := key_check(key):
            raise Invalid(f"{what}: {quote(key)} {why}")
        out[key] = json_string(item, f"{what}.{key}")
    return out


def json_flag(obj: dict[str, Any], key: str, what: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise Invalid(f"{what}.{key} must be true or false, got {json_kind(value)}")
    return value
