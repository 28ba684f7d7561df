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

Each host also holds `<stateDir>/hosts/<instance>` exclusively while it runs: hosts that share
the directory write their bookings into one file, each entry with its writer
(`ownership_bookings`), and tell a writer that runs from one that ended by this lock
(`running`): the bookings of one that ended (stopped, SIGKILLed, OOM killed) are taken over by
the hosts that go on.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import AsyncIterator, Iterator

from .endpoint import instance_id_problem
from .files import Offload
from .logs import EventLogger

LOCK_FILE = "kdp-host.lock"
HOSTS_DIR = "hosts"
"""Where each running host holds its own lock file, named by its instance ID."""


class StateDirBusy(RuntimeError):
    """A kdp-host runs on the directory (it holds the lock)."""


def lock_path(directory: str) -> str:
    return os.path.join(directory, LOCK_FILE)


def _open(directory: str) -> int:
    return os.open(lock_path(directory), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def hold_shared(directory: str, wait: bool) -> int | None:
    """Lock the directory shared (created when missing) and return the descriptor that holds
    it: the lock lasts until it is closed (`release`) or the process ends. None when another
    process holds it exclusively and `wait` is False. Raises OSError when the file cannot be
    opened or locked. Blocking with `wait`: run it through the offload."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd = _open(directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def host_lock_path(directory: str, instance: str) -> str:
    return os.path.join(directory, HOSTS_DIR, instance)


def hold_instance(directory: str, instance: str) -> int:
    """Lock `<directory>/hosts/<instance>` exclusively (created) and return the descriptor
    that holds it. Raises OSError when it cannot, or when another process holds it."""
    os.makedirs(os.path.join(directory, HOSTS_DIR), mode=0o755, exist_ok=True)
    fd = os.open(host_lock_path(directory, instance), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def running(directory: str, instance: str | None) -> bool:
    """Whether the host `instance` runs on `directory` (it holds its lock file). A lock file
    no process holds (its host ended, SIGKILL included) is removed. None, or a name that is
    no instance ID (a hand-edited file), runs nowhere. Blocking: call it off the loop."""
    if instance is None or instance in (".", "..") or instance_id_problem(instance) is not None:
        return False
    path = host_lock_path(directory, instance)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return False


@contextlib.asynccontextmanager
async def holding(
    directory: str, offload: Offload, log: EventLogger, instance: str | None = None
) -> AsyncIterator[None]:
    """A host's hold on `directory` while the block runs: waits (logged) while a command
    holds it exclusively; a lock that cannot be taken is logged and the host runs without.
    With `instance`, it also holds its own lock file (`running`) once it holds the first."""
    fd: int | None = None
    mine: int | None = None
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
    if instance is not None and fd is not None:
        try:
            mine = await offload.run(functools.partial(hold_instance, directory, instance))
        except OSError as exc:
            log.warning(
                "state_lock_failed",
                path=host_lock_path(directory, instance),
                reason=str(exc),
                consequence="a host sharing stateDir takes this host's bookings over as if it "
                "had ended; this host writes them back when it sees them gone",
            )
    try:
        yield
    finally:
        for held in (mine, fd):
            if held is not None:
                os.close(held)


@contextlib.contextmanager
def exclusive(directory: str) -> Iterator[None]:
    """Hold the directory alone while the block runs: raises StateDirBusy while a kdp-host
    runs on it, OSError when the lock file cannot be opened. A directory that does not exist
    has no host (a host creates it) and nothing to lock."""
    try:
        fd = _open(directory)
    except FileNotFoundError:
        if os.path.isdir(directory):
            raise
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirBusy(
                f"a kdp-host runs on {directory} (it holds {lock_path(directory)})"
            ) from None
        yield
    finally:
        os.close(fd)
