"""The two syntaxes inside config values: durations (`500ms`, `1m30s`) and templates
(`{field}`, `{{` and `}}` for a literal brace, every other brace literal as it is)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

_DURATION_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
DURATION_PATTERN: Final = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
"""The duration syntax as JSON Schema says it (the schema's `$defs/duration`): what
`parse_duration` reads, less its limit and the spaces it strips (tests/test_rules.py)."""
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION: Final = 30 * 24 * 3600.0
"""The longest duration the config takes (30 days): far beyond any sensible interval or
timeout, and well inside what the event loop's timers and epoll accept."""
_TEMPLATE_TOKEN: Final = re.compile(r"\{\{|\}\}|\{([A-Za-z][A-Za-z0-9]*)\}")
"""A template's syntax: `{name}` (a letter, then letters and digits) is a field; `{{` and
`}}` stand for a literal `{` and `}`; every other brace is literal text as it is (`{}`,
`{ x }`, `${1}`, a lone `{`), so `find -exec cmd {} ;` or an awk program need no escaping."""
_ESCAPED: Final = {"{{": "{", "}}": "}"}


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
