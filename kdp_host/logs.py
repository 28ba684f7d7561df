"""Structured logs: one event per line, `key=value` text or JSON.

Code logs events with fields (`log.info("registered", endpoint=...)`); a logger bound to a
resource adds `resource=<name>` to every line it writes; a line of a kind that may come in
thousands is shown once per interval, the others counted (`LineRate`). Work that may
outlive its owner (a call on a thread its owner stopped waiting for, `files.OffloadScope`)
runs `muted_by` a `Mute`: once the owner turns it on, what that work logs is dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TextIO

_FIELDS_ATTR = "kdp_fields"


class Mute:
    """Turned `on` by the owner of some work (from any thread): the lines that work logs
    from then on (`muted_by`) are dropped."""

    def __init__(self) -> None:
        self.on = False


@dataclass
class LineRate:
    """One line of a kind per interval, the others kept back and counted: the next line
    shown says how many (`like_lines_not_shown`)."""

    last: float = -math.inf
    """When the last line was shown (the caller's clock)."""
    kept: int = 0
    """Lines kept back since."""

    def shown(self, now: float, every: float) -> int | None:
        """None: keep the line of `now` back (counted), one was shown less than `every`
        seconds before; else show it, and how many were kept back since the last one."""
        if now - self.last < every:
            self.kept += 1
            return None
        kept, self.last, self.kept = self.kept, now, 0
        return kept


_MUTE: ContextVar[Mute | None] = ContextVar("kdp_mute", default=None)


@contextlib.contextmanager
def muted_by(mute: Mute) -> Iterator[None]:
    """What is logged in the block (in this thread or task) is dropped once `mute` is on."""
    token = _MUTE.set(mute)
    try:
        yield
    finally:
        _MUTE.reset(token)


class EventLogger:
    """A logger with bound fields, writing one event per call."""

    def __init__(self, logger: logging.Logger, **bound: Any) -> None:
        self._logger = logger
        self._bound = bound

    def bind(self, **fields: Any) -> EventLogger:
        return EventLogger(self._logger, **{**self._bound, **fields})

    def _log(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        if self._logger.isEnabledFor(level) and not ((mute := _MUTE.get()) and mute.on):
            self._logger.log(
                level,
                event,
                extra={_FIELDS_ATTR: {**self._bound, **fields}},
                exc_info=exc,
                stacklevel=3,
            )

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc=True)


_PLAIN_EXCLUDED = frozenset(' "=\\')
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def quote_text(value: object) -> str:
    r"""`value` as one token that no character can break.

    Plain printable text stays as it is; anything else is double-quoted with backslash
    escapes: `\\`, `\"`, `\n`, `\r`, `\t`, and `\xNN` / `\uNNNN` / `\UNNNNNNNN` for every
    other non-printable character (control characters, line and paragraph separators,
    bidirectional overrides). Used for log fields and for what `kdp-host check` prints, so
    a device ID or file name with a newline or an escape sequence in it cannot forge a line
    or move the cursor.
    """
    text = str(value)
    if text and text.isprintable() and _PLAIN_EXCLUDED.isdisjoint(text):
        return text  # (every character printable, none excluded: two scans at C speed)
    out = ['"']
    for c in text:
        if c in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[c])
        elif c.isprintable():
            out.append(c)
        elif ord(c) <= 0xFF:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    out.append('"')
    return "".join(out)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"{stamp}.{int(record.msecs):03d}Z",
            record.levelname.lower(),
            f"event={quote_text(record.getMessage())}",
        ]
        fields: dict[str, Any] = getattr(record, _FIELDS_ATTR, {})
        parts.extend(f"{key}={quote_text(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += " error=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        for key, value in getattr(record, _FIELDS_ATTR, {}).items():
            out[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("kdp_host")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get_logger(name: str = "kdp_host", **bound: Any) -> EventLogger:
    return EventLogger(logging.getLogger(name), **bound)
