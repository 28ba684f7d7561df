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
from collections.abc import AsyncIterator, Iterable, Iterator

from .atomic_files import directory_at, open_lock
from .endpoint import instance_id_problem
from .files import Offload
from .logs import EventLogger
from .state_file import aside_logged

LOCK_FILE = "kdp-host.lock"
HOSTS_DIR = "hosts"
"""Where each running host holds its own lock file, named by its instance ID."""


class StateDirBusy(RuntimeError):
    """A kdp-host runs on the directory (it holds the lock)."""


def lock_path(directory: str) -> str:
    return os.path.join(directory, LOCK_FILE)


def _open_directory(directory: str, how: int) -> int:
    """The directory's descriptor, locked with `how` (flock flags); raises."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, how)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_file(directory: str, how: int, log: EventLogger) -> int:
    """The lock file's descriptor (created; anything else there is set aside,
    `atomic_files.open_lock`), locked with `how`; raises."""
    fd = open_lock(lock_path(directory), aside_logged(log))
    try:
        fcntl.flock(fd, how)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(held: Iterable[int]) -> None:
    """Close the descriptors that hold the locks (the locks go with them)."""
    for fd in held:
        os.close(fd)


def hold_shared(directory: str, wait: bool, log: EventLogger) -> tuple[int, ...] | None:
    """Lock the directory, then its lock file, shared (created when missing) and return the
    descriptors that hold them: the locks last until they are closed (`release`) or the
    process ends. None when another process holds either exclusively and `wait` is False.
    Raises OSError when the directory cannot be opened or locked; a lock file that cannot
    (a read-only file, a full inode table) is logged and the directory's lock held alone:
    a command of this version still sees the host. Blocking with `wait`: run it through the
    offload."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    how = fcntl.LOCK_SH | (0 if wait else fcntl.LOCK_NB)
    try:
        held = _open_directory(directory, how)
    except BlockingIOError:
        return None
    try:
        return held, _lock_file(directory, how, log)
    except BlockingIOError:
        os.close(held)
        return None
    except OSError as exc:
        log.warning(
            "state_lock_failed",
            path=lock_path(directory),
            reason=str(exc),
            consequence="a kdp-host unbook of the previous version cannot tell that this "
            "host runs (this version's sees the directory's lock)",
        )
        return (held,)
    except BaseException:
        os.close(held)
        raise


def host_lock_path(directory: str, instance: str) -> str:
    return os.path.join(directory, HOSTS_DIR, instance)


def hold_instance(directory: str, instance: str, log: EventLogger) -> int:
    """Lock `<directory>/hosts/<instance>` exclusively (created, as is `hosts/`: anything
    else there is set aside) and return the descriptor that holds it. Raises OSError when it
    cannot, or when another process holds it."""
    aside = aside_logged(log)
    directory_at(os.path.join(directory, HOSTS_DIR), aside)
    fd = open_lock(host_lock_path(directory, instance), aside)
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
    fd: tuple[int, ...] | None = None
    mine: int | None = None
    try:
        fd = await offload.run(functools.partial(hold_shared, directory, False, log))
        if fd is None:
            log.warning(
                "state_dir_busy",
                path=lock_path(directory),
                detail="waiting for the command that holds it (kdp-host unbook) to finish",
            )
            fd = await offload.run(functools.partial(hold_shared, directory, True, log))
    except OSError as exc:
        log.warning(
            "state_lock_failed",
            path=lock_path(directory),
            reason=str(exc),
            consequence="kdp-host unbook cannot tell that this host runs",
        )
    if instance is not None and fd is not None:
        try:
            mine = await offload.run(functools.partial(hold_instance, directory, instance, log))
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
        release(fd or ())
        if mine is not None:
            os.close(mine)


@contextlib.contextmanager
def exclusive(directory: str, log: EventLogger) -> Iterator[None]:
    """Hold the directory alone while the block runs: raises StateDirBusy while a kdp-host
    runs on it, OSError when the lock file cannot be opened. A directory that does not exist
    has no host (a host creates it) and nothing to lock."""
    how = fcntl.LOCK_EX | fcntl.LOCK_NB
    held: list[int] = []
    try:
        held.append(_open_directory(directory, how))
        held.append(_lock_file(directory, how, log))
    except FileNotFoundError:
        release(held)
        if os.path.isdir(directory):
            raise
        yield
        return
    except BlockingIOError:
        release(held)
        raise StateDirBusy(
            f"a kdp-host runs on {directory} (it holds {lock_path(directory)} or the directory)"
        ) from None
    except BaseException:
        release(held)
        raise
    try:
        yield
    finally:
        release(held)
