"""Touching files that may hang: small attribute reads and whole scans, never blocking for ever.

A driver reads small files (a device's NUMA node file) and walks directories; the host reads
its state files (`state_file.py`), the CDI spec it wrote, its config. Any of these can block
in the kernel: a FIFO or a tty opened by mistake, a hung network or FUSE file system. So:

- small files are read one way, `read_attribute`: opened with O_NONBLOCK and O_NOCTTY,
  refused unless they are regular files, capped at `limit` bytes;
- every read runs on a daemon worker thread and is given up after `timeout` (the caller gets
  `FileReadError("read_timeout")`); a worker stuck in the kernel is abandoned, a fresh one
  serves the next reads, and past `max_stuck` abandoned workers reads are refused at once;
- whole scans, and every other blocking call of the host, run on daemon threads too
  (`DaemonThreads`, the one `Offload`: the host makes one and passes it to whatever needs it);
- an owner of such work (the host) sends it through an `OffloadScope`, and its stop waits,
  bounded, for what still runs: nothing it started touches its files after it has stopped,
  and a call stuck past the bound is abandoned, its result and its log lines dropped.

Daemon threads are the point: the interpreter does not wait for them at exit, so SIGTERM
ends the host within its shutdown budget even while a thread is stuck in read(2). (A worker
of asyncio's default executor would be joined at exit, and the process would stay alive.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from .logs import EventLogger, Mute, muted_by

T = TypeVar("T")

MAX_ATTRIBUTE_SIZE = 4096
"""Most bytes read from an attribute file."""
MAX_DOCUMENT_SIZE = 64 << 20
"""Most bytes of a file kdp-host wrote itself and reads back (a CDI spec; a state file:
`state_document.MAX_STATE_SIZE`)."""
READ_TIMEOUT = 1.0
"""Seconds an attribute read may take."""
MAX_STUCK_READS = 4
"""Abandoned reads (threads stuck in the kernel) after which reads are refused at once."""
_WORKER_IDLE = 5.0
_READ_CHUNK = 1 << 16


class FileReadError(Exception):
    """An attribute file that could not be read; `reason` is a metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """read_timeout (no answer in time), read_refused (not a regular file, too large),
        read_error (any other OSError)."""


def read_attribute(path: str, limit: int) -> bytes | None:
    """Read a small regular file (an attribute, a state file) without ever waiting on a FIFO
    or a tty: the one way kdp-host reads such a file. None if it is missing; FileReadError
    (`read_refused`) if it is not a regular file or longer than `limit` bytes, (`read_error`)
    on any other OSError. Blocking (a regular file on a hung file system can still stall a
    read): run it on a daemon thread (`FileReader`, the offload)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileReadError("read_error", f"cannot open {path!r}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileReadError("read_refused", f"{path!r} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            want = min(limit + 1 - size, _READ_CHUNK)
            chunk = os.read(fd, want)
            chunks.append(chunk)
            size += len(chunk)
            if len(chunk) < want:  # a regular file reads short only at its end
                break
    except OSError as exc:
        raise FileReadError("read_error", f"cannot read {path!r}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise FileReadError("read_refused", f"{path!r} is larger than {limit} bytes")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Worker:
    """A daemon thread running reads from its queue; leaves when idle or abandoned."""

    def __init__(self, reader: FileReader) -> None:
        self.jobs: queue.SimpleQueue[
            tuple[Callable[[], bytes | None], concurrent.futures.Future[bytes | None]]
        ] = queue.SimpleQueue()
        self.abandoned = False
        self._reader = reader
        threading.Thread(target=self._loop, name="kdp-file-reader", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                job, future = self.jobs.get(timeout=_WORKER_IDLE)
            except queue.Empty:
                if self._reader._retire(self, idle=True):
                    return
                continue
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:
                    future.set_exception(exc)
            if self.abandoned and self._reader._retire(self, idle=False):
                return


class FileReader:
    """Reads attribute files with a timeout and a size cap (see the module docstring).

    Thread-safe; `read` blocks its caller (a scan thread) for at most `timeout`.
    `read_file` replaces the actual read (tests pass one that hangs).
    """

    def __init__(
        self,
        *,
        timeout: float = READ_TIMEOUT,
        limit: int = MAX_ATTRIBUTE_SIZE,
        max_stuck: int = MAX_STUCK_READS,
        read_file: Callable[[str, int], bytes | None] = read_attribute,
    ) -> None:
        self.timeout = timeout
        self.limit = limit
        self._max_stuck = max_stuck
        self._read_file = read_file
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._stuck = 0

    @property
    def stuck(self) -> int:
        """Abandoned reads whose thread has not come back yet."""
        return self._stuck

    def read(self, path: str) -> bytes | None:
        """The file's bytes, None if it does not exist; raises FileReadError."""
        future: concurrent.futures.Future[bytes | None] = concurrent.futures.Future()
        with self._lock:
            if self._stuck >= self._max_stuck:
                raise FileReadError(
                    "read_timeout", f"not reading {path!r}: {self._stuck} earlier reads hang"
                )
            worker = self._worker
            if worker is None:
                worker = self._worker = _Worker(self)
            worker.jobs.put((lambda: self._read_file(path, self.limit), future))
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            with self._lock:
                if not worker.abandoned:
                    worker.abandoned = True
                    self._stuck += 1
                    if self._worker is worker:
                        self._worker = None
            raise FileReadError(
                "read_timeout", f"reading {path!r} took longer than {self.timeout:g}s"
            ) from None

    def _retire(self, worker: _Worker, *, idle: bool) -> bool:
        """Called by a worker that is idle or came back abandoned; True: it may leave."""
        with self._lock:
            if idle and not worker.jobs.empty():
                return False  # a read was queued just now: serve it
            if worker.abandoned:
                self._stuck -= 1
            if self._worker is worker:
                self._worker = None
            return True


class Offload(Protocol):
    """The one way off the event loop: run a blocking call on a worker thread, await its
    result (or its exception). Cancelling the await abandons the call, it is not stopped:
    a caller that must not start a second call while one hangs keeps its future
    (`asyncio.ensure_future(offload.run(...))`) and waits on it again."""

    async def run(self, function: Callable[[], T]) -> T: ...


STOP_WAIT = 0.5
"""Seconds an owner's stop waits for its calls still running off the loop (`OffloadScope`);
with the resources' own wait (`supervisor.STOP_WAIT`) within the 2 s a SIGTERM is given."""


def _stopped() -> asyncio.CancelledError:
    """What a call of a stopped owner raises, as if its caller were cancelled."""
    return asyncio.CancelledError("off-loop work of a stopped owner")


class _Dropped(Exception):
    """A call its scope closed before it started: never run."""


class OffloadScope:
    """The calls one owner (a host) sends off the loop, through the `Offload` it was given.

    `close`, at the owner's stop, waits at most `timeout` seconds for those running on a
    thread; one still running then is abandoned: its result is dropped (a caller still
    waiting is cancelled) and so are the lines it logs (`logs.Mute`). A call that had not
    started never starts, and one asked for after `close` is refused (CancelledError, as if
    its caller were cancelled): a stopped host leaves no thread touching its `stateDir`
    (the next instance may be writing it).
    """

    def __init__(self, offload: Offload) -> None:
        self._offload = offload
        self._lock = threading.Lock()
        self._running: set[Mute] = set()
        """The calls running on a thread now, each by its `Mute`."""
        self._closed = False
        self._idle: Callable[[], None] | None = None
        """Called (on a thread) when the last running call ends, while `close` waits."""

    async def run(self, function: Callable[[], T]) -> T:
        if self._closed:
            raise _stopped()
        mute = Mute()

        def call() -> T:
            with self._lock:
                if self._closed:
                    raise _Dropped
                self._running.add(mute)
            try:
                with muted_by(mute):
                    return function()
            finally:
                with self._lock:
                    self._running.discard(mute)
                    if not self._running and self._idle is not None:
                        self._idle()

        try:
            result = await self._offload.run(call)
        except _Dropped:
            raise _stopped() from None
        except Exception:
            if mute.on:
                raise _stopped() from None
            raise
        if mute.on:
            raise _stopped()
        return result

    async def close(self, timeout: float, log: EventLogger) -> int:
        """Refuse new calls and wait up to `timeout` seconds for the running ones to end;
        returns how many were abandoned (still running: muted, results dropped), a warning
        on `log` (`offload_abandoned`) when any was."""
        loop = asyncio.get_running_loop()
        idle = asyncio.Event()
        with self._lock:
            self._closed = True
            if self._running:
                self._idle = lambda: _call_soon(loop, idle.set)
            else:
                idle.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), timeout)
        finally:
            with self._lock:
                self._idle = None
                for mute in self._running:
                    mute.on = True
                abandoned = len(self._running)
        if abandoned:
            log.warning(
                "offload_abandoned",
                calls=abandoned,
                consequence=f"still running {timeout:g} s after the stop: results, lines dropped",
            )
        return abandoned


SCAN_THREADS = 4
"""Daemon threads that run scans at once, not counting threads stuck in the kernel."""
STUCK_AFTER = 1.0
"""A scan thread busy this long counts as stuck: another thread may start beside it."""
MAX_SCAN_THREADS = 64


class DaemonThreads:
    """The host's `Offload`: runs blocking calls (whole scans, file writes, config loads) on
    daemon threads, for every resource of a host.

    Like asyncio's default executor, a few workers are reused, so a hundred resources
    scanning at once do not start a hundred threads (each would keep a malloc arena). Unlike
    it, the workers are daemon threads, so one stuck in the kernel never keeps the process
    from exiting, and a worker busy for longer than `stuck_after` does not count against the
    limit, so a hung scan never blocks the scans of other resources. Idle workers leave.
    """

    def __init__(
        self,
        *,
        workers: int = SCAN_THREADS,
        stuck_after: float = STUCK_AFTER,
        idle: float = _WORKER_IDLE,
    ) -> None:
        self._workers = workers
        self._stuck_after = stuck_after
        self._idle_timeout = idle
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._waiting = 0
        """Workers waiting for a job."""
        self._queued = 0
        """Jobs not taken by a worker yet."""
        self._busy_since: dict[int, float] = {}
        """Worker id -> monotonic time its current job started (absent: waiting)."""
        self._live = 0

    async def run(self, function: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def deliver(outcome: Callable[[], None]) -> None:
            if not future.done():
                outcome()

        def job() -> None:
            try:
                result = function()
            except BaseException as exc:
                error = exc
                _call_soon(loop, lambda: deliver(lambda: future.set_exception(error)))
            else:
                _call_soon(loop, lambda: deliver(lambda: future.set_result(result)))

        with self._lock:
            self._jobs.put(job)
            self._queued += 1
            queued = self._queued > self._waiting and not self._grow()
        while queued and not future.done():
            # Every worker is busy: if one of them hangs, start another beside it.
            await asyncio.wait({future}, timeout=self._stuck_after)
            with self._lock:
                queued = self._queued > self._waiting and not self._grow()
        return await future

    def _grow(self) -> bool:
        """Start a worker if the limit allows (called with the lock held)."""
        if self._live >= min(MAX_SCAN_THREADS, self._workers + self._stuck()):
            return False
        self._live += 1
        threading.Thread(target=self._work, name="kdp-scan", daemon=True).start()
        return True

    def _stuck(self) -> int:
        now = time.monotonic()
        return sum(1 for since in self._busy_since.values() if now - since > self._stuck_after)

    def _work(self) -> None:
        me = threading.get_ident()
        with self._lock:
            self._waiting += 1
        while True:
            try:
                job = self._jobs.get(timeout=self._idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._queued == 0:
                        self._waiting -= 1
                        self._live -= 1
                        return
                continue
            with self._lock:
                self._waiting -= 1
                self._queued -= 1
                self._busy_since[me] = time.monotonic()
            try:
                job()
            finally:
                with self._lock:
                    del self._busy_since[me]
                    self._waiting += 1


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for the result
        loop.call_soon_threadsafe(callback)
