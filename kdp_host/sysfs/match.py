"""How configured values match sysfs attributes (hex IDs, class masks, globs).

The config loader checks patterns with the `*_problem` functions; the driver and
`kdp-host discover` match with `hex_matches`, `class_matches` and `text_matches`. A value
is compared the way operators write it: `10c4`, `0x10C4` and `10C4` are the same USB
vendor; `*`, `?` and `[...]` make a glob, and `exact_pattern` writes a text so that it
matches only itself.
"""

from __future__ import annotations

import fnmatch
import re

from .entry import normalize_hex

_GLOB_CHARS = re.compile(r"[*?\[]")
_HEX_GLOB = re.compile(r"(?:0[xX])?[0-9a-fA-F*?\[\]!-]+")
_HEX = re.compile(r"(?:0[xX])?[0-9a-fA-F]+")
ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
"""An attribute file below a device directory (`name`, `device/vendor`); no `..`."""


def is_glob(pattern: str) -> bool:
    return _GLOB_CHARS.search(pattern) is not None


def exact_pattern(value: str) -> str:
    """A pattern that matches `value` and nothing else: each glob character (`*`, `?`, `[`)
    written as a one-character set (`[*]`, `[?]`, `[[]`). A value without them is its own
    pattern. `kdp-host discover` prints every text it suggests matching through this."""
    return _GLOB_CHARS.sub(lambda found: f"[{found.group()}]", value)


def hex_pattern_problem(pattern: str, digits: int) -> str | None:
    """Why `pattern` is not a hex ID (or a glob of one) of at most `digits` digits."""
    if is_glob(pattern):
        if not _HEX_GLOB.fullmatch(pattern):
            return "must be hex digits (with or without 0x) or a glob of them, e.g. 10c4 or 0x10*"
        return None
    if not _HEX.fullmatch(pattern):
        return (
            f"must be hex digits, with or without 0x (e.g. {'10c4' if digits == 4 else '030000'})"
        )
    if len(normalize_hex(pattern)) > digits:
        return f"must be at most {digits} hex digits"
    return None


def class_pattern_problem(pattern: str) -> str | None:
    """A PCI class: a prefix (`03`, `0x0302`), the full `030200`, `value/mask`, or a glob."""
    value, slash, mask = pattern.partition("/")
    if slash:
        for part in (value, mask):
            if not _HEX.fullmatch(part) or len(normalize_hex(part)) > 6:
                return (
                    "value/mask must be two hex numbers of up to 6 digits, e.g. 0x030000/0xff0000"
                )
        return None
    if is_glob(pattern):
        return hex_pattern_problem(pattern, 6)
    if (
        not _HEX.fullmatch(pattern)
        or len(normalize_hex(pattern)) % 2
        or len(normalize_hex(pattern)) > 6
    ):
        return "must be 2, 4 or 6 hex digits (class, subclass, interface), e.g. 0302, or value/mask"
    return None


def hex_matches(pattern: str, actual: str | None, digits: int = 4) -> bool:
    if actual is None:
        return False
    value = normalize_hex(actual).zfill(digits)
    if is_glob(pattern):
        return fnmatch.fnmatchcase(value, normalize_hex(pattern))
    try:
        return int(normalize_hex(pattern), 16) == int(value, 16)
    except ValueError:
        return False


def class_matches(pattern: str, actual: str | None) -> bool:
    """PCI class `030200` (from `0x030200`) against a prefix, value/mask or glob."""
    if actual is None:
        return False
    value = normalize_hex(actual).zfill(6)
    wanted, slash, mask = pattern.partition("/")
    try:
        if slash:
            bits = int(normalize_hex(mask), 16)
            return int(value, 16) & bits == int(normalize_hex(wanted), 16) & bits
        if is_glob(pattern):
            return fnmatch.fnmatchcase(value, normalize_hex(pattern))
        return value.startswith(normalize_hex(pattern))
    except ValueError:
        return False


def text_matches(pattern: str, actual: str | None) -> bool:
    """Exact, or a glob (case-sensitive, as the kernel reports strings)."""
    if actual is None:
        return False
    if is_glob(pattern):
        return fnmatch.fnmatchcase(actual, pattern)
    return pattern == actual
