"""A state file's document as read: each content parsed once, never in one long step.

`StateFile` (`state_file.py`) reads its file at start, whenever a host sharing it wrote it
(`ownership_sync`), and again under its lock before each of its own writes (a shared file is
merged with what it holds). A file another writer made can be large (`ownership.json` of a
host with 100,000 bookings weighs some 20 MB), so it is read as follows (off the loop: the
caller runs on the host's offload):

- no larger than `MAX_STATE_SIZE` bytes (past it, refused as a file that cannot be read: set
  aside, and its contents count as lost);
- the file this host wrote last (its device, inode, size and modification time: every
  writer renames a new file into place) is the document written, not even read; the content
  last read (of a file read by its owner's `decode`, `ownership.json`: a document of entries
  never changed once made) is known by digest with the document it is (`DocumentCache`):
  read again unchanged, it is not parsed again (a write under the lock after another
  writer's change costs the read, not a second parse; one that comes while the same content
  is being parsed waits for that parse);
- a new content is parsed by the owner's `decode` when it has one (`json_document.
  object_entries`: a list of entries decoded and checked one entry at a time, so the
  interpreter switches to the event loop's thread between two; one `json.loads` of 20 MB
  would hold the GIL, and stall the loop, for its whole length), else by `json.loads`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

from .files import FileReadError, read_attribute

MAX_STATE_SIZE: Final = 128 << 20
"""Most bytes of a state file read: 100,000 bookings (the scale the README benches) weigh
21 MiB in `ownership.json` for devices of one node each, 30 MiB for two, 47 MiB for four,
82 MiB for eight (or four with two mounts): past this bound a file is set aside, as one
that does not parse, and its bookings count as lost."""

SHAPE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, RecursionError)
"""What a document that does not have its shape raises when read."""

Decode = Callable[[str], Mapping[str, Any]]
"""A file's text -> its document (raises one of `SHAPE_ERRORS` when it is not of its shape)."""

Known = tuple[bytes, Mapping[str, Any]]
"""A content by its digest (`digest`), and the document it is."""


def digest(raw: bytes) -> bytes:
    """What tells two contents apart (hashlib lets go of the GIL while it hashes)."""
    return hashlib.blake2b(raw, digest_size=32).digest()


Signature = tuple[int, int, int, int]


def signature(at: str | os.stat_result | None) -> Signature | None:
    """What tells a file written from another (every writer renames a new file into place):
    of the file at a path (None: none there), or as `os.stat` saw it."""
    try:
        st = os.stat(at) if isinstance(at, str) else at
    except OSError:
        return None
    if st is None:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def text(value: object) -> str:
    """`value` when it is a string (a parser's check)."""
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


class Unreadable(Exception):
    """The file cannot be read, or its document does not have its shape (why: the message)."""


class DocumentCache:
    """Reads `path`, a `{"version": <version>, ...}` document; thread-safe (a read and a
    write of one file may run at once on two threads of the offload)."""

    def __init__(
        self, path: str, version: int, decode: Decode | None = None, limit: int = MAX_STATE_SIZE
    ) -> None:
        self._path, self._version, self._decode, self._limit = path, version, decode, limit
        self._lock = threading.Lock()
        self._parsing = threading.Lock()
        self._wrote: Known | None = None
        self._seen: Known | None = None
        self._wrote_as: Signature | None = None
        """The file this host wrote last (device, inode, size, modification time)."""
        self.parses = 0
        """Contents parsed so far (each new content once)."""

    def read(self) -> Mapping[str, Any] | None:
        """The file's document (None: there is none); raises Unreadable. Blocking."""
        with self._lock:
            wrote, wrote_as = self._wrote, self._wrote_as
        if wrote is not None and wrote_as is not None and signature(self._path) == wrote_as:
            return wrote[1]  # (the very file this host wrote last: not read again)
        try:
            raw = read_attribute(self._path, self._limit)
        except FileReadError as exc:
            raise Unreadable(f"cannot read ({exc})") from None
        if raw is None:
            return None
        key = digest(raw)
        if (known := self._known(key)) is not None:
            return known
        with self._parsing:  # (one parse at a time: a second reader of it waits, not parses)
            if (known := self._known(key)) is not None:
                return known
            try:
                text = raw.decode("utf-8")
                del raw  # (the bytes go while the entries are decoded: 20 MB less at the peak)
                document = self._parsed(text)
            except SHAPE_ERRORS as exc:
                raise Unreadable(f"does not parse ({str(exc)[:200]})") from None
            if self._decode is not None:  # (a document of its own decoder's entries, never
                with self._lock:  # changed once made: others are parsed anew for each read)
                    self._seen = (key, document)
            return document

    def _known(self, key: bytes) -> Mapping[str, Any] | None:
        with self._lock:
            wrote, seen = self._wrote, self._seen
        for known in (wrote, seen):
            if known is not None and key == known[0]:
                return known[1]
        return None  # (a copy of this host's last write, byte for byte, is parsed: it is rare)

    def _parsed(self, text: str) -> Mapping[str, Any]:
        self.parses += 1
        document = json.loads(text) if self._decode is None else self._decode(text)
        if not isinstance(document, Mapping):
            raise TypeError("not a JSON object")
        if document.get("version") != self._version:
            raise ValueError(f"version {document.get('version')!r}, not {self._version}")
        return document

    def written(
        self, data: bytes, document: Mapping[str, Any], file: os.stat_result | None = None
    ) -> None:
        """The file now holds `data`, which is `document` (this host's write: what was read
        before is gone from it); `file`: the file written (`atomic_files.write_atomic`)."""
        known = digest(data) if file is None else b""  # (the file itself tells it: no hash)
        with self._lock:
            self._wrote, self._seen = (known, document), None
            self._wrote_as = None if file is None else signature(file)

    @property
    def last_written(self) -> Mapping[str, Any] | None:
        with self._lock:
            wrote = self._wrote
        return None if wrote is None else wrote[1]
