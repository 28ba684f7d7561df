"""One JSON document in `stateDir` that kdp-host keeps across restarts (`release-state.json`,
`ownership.json`, `handed-out.json`): the one way such a file is read and written.

Read at start and checked (`load`, with the owner's parser; the bytes read, bounded, and
each content parsed once: `state_document`); written atomically
(`atomic_files.write_atomic`: temporary file, fsync, rename) through the host's offload,
changes coalesced: `changed` starts a write of the owner's document, `flush` (`written`, for
an answer) waits until the file holds them. A file that cannot be read (as every small file,
`files.read_attribute`: a FIFO or a directory is refused, never waited on) or is not of its
shape (or nested too deep) is set aside as `<name>.unreadable` (`.1`, `.2`, ... when earlier
copies are there: none is replaced), with one error line saying what that costs
(`consequence`). A write that fails (a full disk, a read-only file system) is tried again,
with backoff (`RETRY_FIRST` doubling to `RETRY_MAX` s, and at once on every change) until
one succeeds: one error line when it starts failing (`<what>_write_failed`), one when the
file is written again (`<what>_write_recovered`), and `unwritten` says why meanwhile (also
while a write has not completed within `write_limit`: a lock held, a hung file system).

A file several hosts share (two instances on one stateDir in a rolling update) is written
with a `merge`: under an exclusive `fcntl.flock` of `<name>.lock` (`state_file_lock`: a
write that waits for it names its holder), the file is read again and `merge(mine,
on_disk)` decides what is written, so no host's write drops what another wrote since (a
file that does not parse then is set aside as at start). The hosts re-read the bookings when
they change (`load` again). While a file is not written the host is not ready
(`state_files.StateFiles`).

A file that must fail closed (`mark_unsaved`: the release state) gets a marker while its
writes fail: `<name>.unsaved` (`.unsaved.<writer>` for a shared file), an empty file (no data
block: made on a full disk too), created when a write fails and removed by the next write
that succeeds. A host that starts and finds a marker (its writer stopped: killed before a
write succeeded) reads the file as one that cannot be read (`unknown`): what it holds may
lack the latest changes. It takes the marker over and keeps it (`unsettled`, also for a file
that could not be read) until its owner has learnt again what was lost; its first write after
that removes it, so a second kill before then still fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from .atomic_files import aside_logged, set_aside, write_atomic
from .files import Offload
from .logs import EventLogger
from .state_document import SHAPE_ERRORS, Decode, DocumentCache, Unreadable, signature
from .state_file_lock import FileLock
from .state_markers import UNSAVED, take_over

T = TypeVar("T")

WRITE_LIMIT: Final = 5.0
"""Seconds an answer to the kubelet (Allocate, PreStartContainer) waits for its state file
to be written. A state directory whose file system hangs must not hang the answer (nor the
kubelet's admission of every pod after it): past the limit the answer goes out, with an
error line, as when a write fails; the write goes on and lands when the file system does."""

RETRY_FIRST: Final = 1.0
"""Seconds before a failed write is tried again; doubled at each failure, to RETRY_MAX."""
RETRY_MAX: Final = 60.0

Parser = Callable[[Mapping[str, Any]], T]
"""Reads a document (its version checked already); raises ValueError, KeyError, TypeError or
AttributeError when it does not have its shape."""
Merge = Callable[[Mapping[str, Any], Mapping[str, Any] | None], Mapping[str, Any]]
"""What a shared file is written with: (this host's document, the file's now or None when
it has none) -> the document to write; raises as a `Parser` does when the file's document
does not have its shape (it is set aside, and `merge(mine, None)` is written). Runs off the
loop, while the file is locked."""


class StateFile:
    """`<directory>/<name>`: `{"version": <version>, ...}`, read and written as one. Its log
    lines are `<what>_unreadable` and `<what>_write_failed`."""

    def __init__(
        self,
        directory: str,
        name: str,
        what: str,
        version: int,
        log: EventLogger,
        offload: Offload,
        *,
        consequence: str,
        if_unwritten: str,
        merge: Merge | None = None,
        mark_unsaved: bool = False,
        writer: str | None = None,
        running: Callable[[str, str], bool] | None = None,
        encode: Callable[[Mapping[str, Any]], bytes] | None = None,
        decode: Decode | None = None,
    ) -> None:
        """`mark_unsaved`: keep a marker while writes fail (see the module docstring);
        `writer`: this host's instance ID in a shared file's marker name; `running(directory,
        writer)`: whether that host runs (its marker is not taken over; blocking); `encode`:
        how a document is written (default: `json.dumps`, keys sorted); given, the file read
        back as the bytes last written is that document (`last_written`), not parsed again
        (for documents of parts never changed once made: `rendered_json.encoded`); `decode`:
        how a new content is parsed (`state_document`)."""
        self._running, self._encode, self._writer_id = running, encode, writer
        self.path = Path(directory) / name
        self._documents = DocumentCache(str(self.path), version, decode)
        self._mark_unsaved = mark_unsaved
        self._marker = Path(directory) / f"{name}{UNSAVED}{'' if writer is None else '.' + writer}"
        self._marked = False  # this host's marker exists (a failed write made it, or taken over)
        self.lock_path = Path(directory) / f"{name}.lock"
        self._merge = merge
        self._version_tag = version
        self._offload = offload
        self._what = what
        self._log = log.bind(component=what.replace("_", "-"), path=str(self.path))
        self._consequence = consequence
        self._aside = aside_logged(log)
        self.lock = FileLock(str(self.lock_path), self._aside)
        self._if_unwritten = if_unwritten
        self.unknown = False
        """The file could not be read."""
        self.found = False
        """The file was there when it was read (`load`)."""
        self.taken: frozenset[str] = frozenset()
        """A shared file's writers that had ended when it was read: taken up (`load`)."""
        self.unsettled = False
        """What the file holds is not yet all its writer knows (`mark_unsaved`: it was
        `unknown` at start and its writer has not learnt since what it lost): the marker
        stays, and is made if missing, across writes until this turns False."""
        self.set_aside = 0
        """Times a file that could not be read was set aside (or found so)."""
        self.write_failures = 0
        self._content: Callable[[], Mapping[str, Any]] = dict
        self._version = self._written = 0
        self._lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self.write_limit, self.retry_first, self.retry_max = WRITE_LIMIT, RETRY_FIRST, RETRY_MAX
        self._wake = asyncio.Event()
        self.unwritten: str | None = None
        """Why the file does not hold the latest change, while its writes fail or stall past
        `write_limit` (short: the file's name and why); None once one succeeds."""
        self._failing_since = 0.0
        self.on_unwritten: Callable[[], None] | None = None
        """Called when `unwritten` changes (`StateFiles`)."""
        self.stalls = 0
        """Answers that went out before the file held their change (`written`)."""
        self.held_lock: int | None = None
        """A descriptor of `<name>.lock` this host holds locked across an answer
        (`ownership_fence`; set and unset while holding `writing`): a write takes no lock of
        its own meanwhile."""
        self.held: tuple[tuple[int, ...] | None, object] | None = None
        """The file as this host last wrote (or read) it, and its part (`state_presence`)."""

    def load(self, parse: Parser[T]) -> T | None:
        """The file's document read by `parse`; None when it is missing or unreadable
        (blocking: through the offload; read like every small file: `read_attribute`).
        Sets `unsettled` (while `unknown`) and, for a shared file's `writers`, `taken`."""
        if self._mark_unsaved:
            self._take_over_markers()
        held_as = signature(str(self.path))  # (before the read: a change after it shows)
        document = self.document_now()
        self.found = document is not None or self.unknown
        self.held = None if document is None else (held_as, self.own(document))
        try:
            found = None if document is None else parse(document)
        except SHAPE_ERRORS as exc:
            self._unreadable(f"does not parse ({str(exc)[:200]})")
            found = None
        self.unsettled = self._mark_unsaved and self.unknown
        if found is not None and document and self._writer_id and self._running is not None:
            directory, writers = str(self.path.parent), document.get("writers", {})
            self.taken = frozenset(w for w in writers if not self._running(directory, w))
        return found

    def _take_over_markers(self) -> None:
        """(`state_markers.take_over`)"""
        unknown, marked = take_over(
            self.path, self._marker, self._running, self._log, self._what, self._consequence
        )
        self.unknown |= unknown
        self._marked |= marked

    def own(self, document: Mapping[str, Any]) -> object:
        """This host's part of `document`: `writers.<instance ID>` if shared, else all."""
        mine = document.get("writers", {}) if self._merge and self._writer_id else None
        return document if mine is None else mine.get(self._writer_id)

    def document_now(self) -> Mapping[str, Any] | None:
        """The file's document, its version checked (`state_document`: a content known
        already is not parsed again); None when there is none (missing, or unreadable: set
        aside). Blocking."""
        try:
            return self._documents.read()
        except Unreadable as exc:
            self._unreadable(str(exc))
            return None

    def _unreadable(self, why: str) -> None:
        """Set the file aside under the first free `<name>.unreadable[.N]` (an earlier copy
        is never replaced) and say so."""
        self.unknown = True
        self.set_aside += 1
        try:
            aside = set_aside(str(self.path))
        except OSError as exc:
            why += f"; not set aside ({exc}): the next write replaces it"
        else:
            why += f"; kept as {os.path.basename(aside)}"
        self._log.error(f"{self._what}_unreadable", reason=why, consequence=self._consequence)

    def changed(self, document: Callable[[], Mapping[str, Any]]) -> None:
        """What the file holds changed: write `document()` (asked for when the write
        starts, on the event loop) soon."""
        self._content = document
        self._version += 1
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._keep_writing(), name=self.path.name)

    def write_again(self, document: Callable[[], Mapping[str, Any]] | None, why: str) -> None:
        """The file lost what the host wrote (deleted, replaced): write `document()` (None:
        the last one) again; `unwritten` says so (not ready) until a write succeeds."""
        self._behind(f"{why}: written again")
        self._log.error(f"{self._what}_lost", reason=why, consequence=self._if_unwritten)
        self.changed(document or self._content)

    @property
    def kept(self) -> bool:
        """The file was there at start or has been written since: one missing now was lost."""
        return self.found or self._written > 0

    async def _keep_writing(self) -> None:
        """`flush` until the file holds every change: after a failure, again after a backoff
        (or at once when something changes)."""
        delay = self.retry_first
        while True:
            self._wake.clear()
            await self.flush()
            if self._written == self._version:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            delay = min(delay * 2, self.retry_max)

    async def written(self) -> bool:
        """`flush`, for an answer to the kubelet, at most `write_limit` seconds (past that an
        error line says what that costs; the write goes on): whether the file holds every
        change made before the call (not: its write failed, `unwritten`, or stalled)."""
        waited, version = time.monotonic(), self._version
        if self._written == version:
            return True  # (nothing to wait for: no turn of the loop)
        limit = self.lock.limit(self.write_limit)  # (shorter while its lock is kept)
        try:
            await asyncio.wait_for(asyncio.shield(self.flush()), limit)
        except TimeoutError:
            self.stalls += 1
            self._log.error(
                f"{self._what}_write_stalled",
                reason=self.lock.stalled(limit),
                waited=round(time.monotonic() - waited, 3),
                consequence=self._if_unwritten,
                action="answering now; the write goes on",
            )
            return False
        return self._written >= version

    async def flush(self) -> None:
        """Write the file until it holds every change made so far."""
        async with self._lock:
            while self._written != self._version:
                version = self._version
                mine = self._content()
                stall = asyncio.get_running_loop().call_later(self.write_limit, self._stalled)
                try:
                    await self._offload.run(functools.partial(self._write_marked, mine))
                except OSError as exc:
                    self._failed(exc)
                    return
                finally:
                    stall.cancel()
                self._written = version
                if self.unwritten is not None:
                    self.unwritten = None
                    self._tell()
                    self._log.info(
                        f"{self._what}_write_recovered",
                        failures=self.write_failures,
                        unwritten_for=round(time.monotonic() - self._failing_since, 3),
                    )

    def _failed(self, exc: OSError) -> None:
        """Count a failed write; the first of a run of failures is logged."""
        self.write_failures += 1
        if self.unwritten is not None:
            return
        code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        self._behind(f"not written ({code}): retrying")
        self._log.error(
            f"{self._what}_write_failed",
            reason=str(exc),
            consequence=self._if_unwritten,
            action=f"tried again after {self.retry_first:g} s doubling to "
            f"{self.retry_max:g} s, and at every change, until a write succeeds",
        )

    def _stalled(self) -> None:
        self._behind(self.lock.late(self.write_limit))  # (its lock's holder, if it waits)

    def _behind(self, why: str) -> None:
        """`unwritten`: a write failed, stalled past `write_limit`, or the file was lost."""
        if self.unwritten is None:
            self.unwritten, self._failing_since = f"{self.path.name} {why}", time.monotonic()
            self._tell()

    def _tell(self) -> None:
        if self.on_unwritten is not None:
            self.on_unwritten()

    def _write_marked(self, mine: Mapping[str, Any]) -> None:
        """`_write`, keeping the unsaved marker (blocking): made at a failure, and before
        any write while `unsettled`; gone at a success once settled."""
        if self.unsettled and not self._marked:
            self._mark()
        try:
            self._write(mine)
        except OSError:
            if self._mark_unsaved and not self._marked:
                self._mark()
            raise
        if self._marked and not self.unsettled:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._marker)
            self._marked = False

    def _mark(self) -> None:
        try:
            os.close(os.open(self._marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            self._log.error(
                f"{self._what}_unsaved_not_marked", reason=str(exc), consequence=self._if_unwritten
            )
        else:
            self._marked = True

    def _write(self, mine: Mapping[str, Any]) -> None:
        """Write `mine` (blocking); a shared file merged with what it holds now, locked."""
        if self._merge is None:
            self._write_document(mine)
            return
        with self.lock.taken(self.held_lock):  # (held by this host: `ownership_fence`)
            current = self.document_now()
            try:
                merged = self._merge(mine, current)
            except SHAPE_ERRORS as exc:
                self._unreadable(f"does not parse ({str(exc)[:200]})")
                merged = self._merge(mine, None)
            self._write_document(merged)

    @property
    def writing(self) -> asyncio.Lock:
        """Held while a write of the file runs (`flush`)."""
        return self._lock

    @property
    def holds_changes(self) -> bool:
        """Whether the file holds every change made so far."""
        return self._written == self._version

    @property
    def last_written(self) -> Mapping[str, Any] | None:
        """The document last written (kept with `encode` only)."""
        return self._documents.last_written

    @property
    def parses(self) -> int:
        """Contents of the file parsed so far (`state_document.DocumentCache`)."""
        return self._documents.parses

    def _write_document(self, document: Mapping[str, Any]) -> None:
        body = {**document, "version": self._version_tag}
        encode = self._encode
        data = json.dumps(body, sort_keys=True).encode() if encode is None else encode(body)
        file = write_atomic(str(self.path), data)
        self.held = (signature(file), self.own(body))
        if encode is not None:
            self._documents.written(data, body, file)
