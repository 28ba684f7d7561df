"""A running host's hold on its `stateDir`: `<stateDir>/kdp-host.lock`, locked shared with
`fcntl.flock` by every kdp-host that runs on the directory, for as long as it runs.

The kernel drops a flock when the last descriptor of its open file closes, so also when its
holder dies (SIGKILL, OOM kill): a lock held is a host running, whatever its config says
(another metrics port, another config file, no HTTP at all). A command that rewrites the
state files behind the hosts' backs (`kdp-host unbook`) locks it exclusively, which fails
while any host holds it. Shared, because two hosts may run on one directory for a while (a
rolling update with `maxSurge` starts the new pod before the old one stops); a host that
starts while such a command holds the lock waits for it, so it never reads a file being
rewritten. The descriptor is close-on-exec: a command the host runs never inherits the lock.

The directory itself is locked the same way (shared by hosts, exclusively by a command): a
cleaner that unlinks `kdp-host.lock` (a "stale lock") leaves a running host's flock on an
inode the path no longer names, so the file alone would let `unbook` in; a directory that
holds files cannot be replaced under a host. The file lock stays too: hosts and commands of
the previous version (a rolling upgrade) lock only the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import AsyncIterator, Iterable, Iterator

from .files import Offload
from .logs import EventLogger

LOCK_FILE = "kdp-host.lock"


class StateDirBusy(RuntimeError):
    """A kdp-host runs on the directory (it holds the lock)."""


def lock_path(directory: str) -> str:
    return os.path.join(directory, LOCK_FILE)


def _lock(directory: str, how: int) -> tuple[int, ...]:
    """Lock the directory and its lock file (created) with `how` (flock flags) and return
    the descriptors that hold them; none is left open when one cannot be taken (raises)."""
    held: list[int] = []
    try:
        held.append(os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        held.append(os.open(lock_path(directory), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
        for fd in held:
            fcntl.flock(fd, how)
    except BaseException:
        release(held)
        raise
    return tuple(held)


def release(held: Iterable[int]) -> None:
    """Close the descriptors that hold the locks (the locks go with them)."""
    for fd in held:
        os.close(fd)


def hold_shared(directory: str, wait: bool) -> tuple[int, ...] | None:
    """Lock the directory shared (created when missing) and return the descriptors that hold
    it: the lock lasts until they are closed (`release`) or the process ends. None when another
    process holds it exclusively and `wait` is False. Raises OSError when it cannot be
    opened or locked. Blocking with `wait`: run it through the offload."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        return _lock(directory, fcntl.LOCK_SH | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return None


@contextlib.asynccontextmanager
async def holding(directory: str, offload: Offload, log: EventLogger) -> AsyncIterator[None]:
    """A host's hold on `directory` while the block runs: waits (logged) while a command
    holds it exclusively; a lock that cannot be taken is logged and the host runs without."""
    fd: tuple[int, ...] | None = None
    try:
        fd = await offload.run(functools.partial(hold_shared, directory, False))
        if fd is None:
            log.warning(
                "state_dir_busy",
                path=lock_path(directory),
                detail="waiting for the command that holds it (kdp-host unbook) to finish",
            )
            fd = await offload.run(functools.partial(hold_shared, directory, True))
    except OSError as exc:
        log.warning(
            "state_lock_failed",
            path=lock_path(directory),
            reason=str(exc),
            consequence="kdp-host unbook cannot tell that this host runs",
        )
    try:
        yield
    finally:
        if fd is not None:
            release(fd)


@contextlib.contextmanager
def exclusive(directory: str) -> Iterator[None]:
    """Hold the directory alone while the block runs: raises StateDirBusy while a kdp-host
    runs on it, OSError when the lock file cannot be opened. A directory that does not exist
    has no host (a host creates it) and nothing to lock."""
    try:
        held = _lock(directory, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        if os.path.isdir(directory):
            raise
        yield
        return
    except BlockingIOError:
        raise StateDirBusy(
            f"a kdp-host runs on {directory} (it holds {lock_path(directory)} or the directory)"
        ) from None
    try:
        yield
    finally:
        release(held)
