"""Reading a stream command's output: complete device lists, at a bounded rate.

A stream command prints a complete list whenever it changes: one JSON document per line
(`json`), or for `lines` a block ended by a blank line (an empty block is an empty list).
`DocumentReader` cuts its stdout into those documents; `rate_limit.RateLimit` bounds how
many are applied per second, so a command printing as fast as it can neither starves the event loop
nor floods the kubelet: while it floods, the driver stops reading between lists (the
command then blocks on a full pipe) and applies only the newest list it has.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Literal

from ..process import RunningCommand
from .base import DriverError

STREAM_RATE = 10.0
"""Lists per second a stream command may have applied, once its burst is used up."""
STREAM_BURST = 20
"""Lists applied back to back before the rate applies (a command's start-up, a hot-plug storm)."""
_READ_CHUNK = 65536

Format = Literal["lines", "json"]


class DocumentReader:
    """Splits a stream command's stdout into complete documents (bytes, oldest first).

    Cancel-safe: a cancelled `next()` loses nothing (the partial line and block stay).
    """

    def __init__(self, stdout: asyncio.StreamReader, fmt: Format, max_size: int) -> None:
        self._stdout = stdout
        self._json = fmt == "json"
        self._max_size = max_size
        self._partial = b""
        self._block: list[bytes] = []
        self._block_size = 0
        self._ready: deque[bytes] = deque()
        self._eof = False

    async def next(self) -> bytes | None:
        """The oldest complete document not yet taken, or None at EOF.

        Raises DriverError('output_too_large') for a line or `lines` block over the limit.
        """
        while not self._ready:
            if self._eof:
                return None
            chunk = await self._stdout.read(_READ_CHUNK)
            if chunk:
                self._feed(chunk)
            else:
                self._end()
        return self._ready.popleft()

    def take_newest(self) -> tuple[bytes | None, int]:
        """The newest complete document already read (without waiting) and how many older
        ones it replaces; (None, 0) if there is none."""
        if not self._ready:
            return None, 0
        newest = self._ready.pop()
        older = len(self._ready)
        self._ready.clear()
        return newest, older

    def _feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self._max_size or any(len(x) > self._max_size for x in lines):
            raise DriverError(
                "output_too_large", f"printed a line longer than {self._max_size} bytes"
            )
        if self._json:
            self._ready.extend(line for line in lines if line.strip())
            return
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.strip():
            self._ready.append(b"".join(self._block))
            self._block.clear()
            self._block_size = 0
            return
        self._block_size += len(line) + 1
        if self._block_size > self._max_size:
            raise DriverError(
                "output_too_large", f"printed a device list longer than {self._max_size} bytes"
            )
        self._block.append(line + b"\n")

    def _end(self) -> None:
        self._eof = True
        last, self._partial = self._partial, b""
        if self._json:
            if last.strip():
                self._ready.append(last)
            return
        if last.strip():
            self._line(last)
        if self._block:
            self._line(b"")


async def first_document(
    reader: DocumentReader, running: RunningCommand, timeout: float
) -> bytes | None:
    """The command's first complete list, which it must print within `timeout` of starting.

    Raises NoFirstList (reason `timeout`) naming the limit; None if it ended its output first.
    """
    try:
        async with asyncio.timeout(timeout):
            return await reader.next()
    except TimeoutError:
        raise NoFirstList(
            "timeout",
            f"stream command printed no complete device list within {timeout:g}s of starting",
            running.stderr_text(),
        ) from None


class NoFirstList(DriverError):
    """The stream command printed no complete list within its timeout of starting."""
