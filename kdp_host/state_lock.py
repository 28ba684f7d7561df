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
inode the path no longer names, so the file alone would let `unbook` in. The file lock stays
too: hosts and commands of the previous version (a rolling upgrade) lock only the file. And
a host follows the directory (`Hold.follow`, through its watcher): when what the paths name
is no longer what it holds (the lock file deleted, the directory moved away and made again,
restored from a backup), it takes the new ones.

Each host also holds `<stateDir>/hosts/<instance>` exclusively while it runs: hosts that share
the directory write their bookings into one file, each entry with its writer
(`ownership_bookings`), and tell a writer that runs from one that ended by this lock
(`running`): the bookings of one that ended (stopped, SIGKILLed, OOM killed) are taken over by
the hosts that go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping
from typing import TypeVar

from .atomic_files import aside_logged, directory_at, open_lock
from .endpoint import instance_id_problem
from .files import Offload
from .logs import EventLogger
from .watch import Subscription, Watcher

V = TypeVar("V")

LOCK_FILE = "kdp-host.lock"
HOSTS_DIR = "hosts"
"""Where each running host holds its own lock file, named by its instance ID."""


class StateDirBusy(RuntimeError):
    """A kdp-host runs on the directory (it holds the lock)."""


def lock_path(directory: str) -> str:
    return os.path.join(directory, LOCK_FILE)


def _locked(fd: int, how: int) -> int:
    """`fd`, locked with `how` (flock flags); closed when it cannot be (raises)."""
    try:
        fcntl.flock(fd, how)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_directory(directory: str, how: int) -> int:
    """The directory's descriptor, locked with `how`; raises."""
    return _locked(os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), how)


def _lock_file(directory: str, how: int, log: EventLogger) -> int:
    """The lock file's descriptor (created; anything else there is set aside,
    `atomic_files.open_lock`), locked with `how`; raises."""
    return _locked(open_lock(lock_path(directory), aside_logged(log)), how)


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
    return _hold_shared(directory, wait, log)


def _hold_shared(directory: str, wait: bool, log: EventLogger) -> tuple[int, ...] | None:
    """`hold_shared` of a directory that is there (never made: a directory moved away
    while the host runs may be about to be moved back)."""
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
    return _locked(
        open_lock(host_lock_path(directory, instance), aside), fcntl.LOCK_EX | fcntl.LOCK_NB
    )


def other_writers(
    written: Mapping[str, V], writer: str, taken: Collection[str], directory: str
) -> dict[str, V]:
    """The entries of a shared state file (writer -> its entries) that a merge by `writer`
    keeps: every other host's, but not those of a host that had ended when `writer` read
    the file (`taken`: it took them up) unless it runs again. Blocking (`running`)."""
    return {
        w: entries
        for w, entries in written.items()
        if w != writer and (w not in taken or running(directory, w))
    }


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


RENEW_RETRY = 1.0
"""Seconds before a hold that a command kept the host from taking again is tried again."""


def _names(path: str, fd: int) -> bool:
    """Whether `path` (followed) is the file `fd` is open on; blocking."""
    try:
        found = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


class Hold:
    """A running host's hold on its state directory: the directory and its lock file shared,
    its own `hosts/<instance>` exclusively. Taken again when what the paths name is no
    longer what it holds (`follow`): the lock file deleted as "stale", `hosts/` emptied, the
    directory moved away and made again or restored from a backup. `kdp-host unbook` (or one
    of the previous version, which checks the lock file only) would otherwise find the new
    ones free while the host runs, say it dropped bookings, and the host would write them
    back."""

    def __init__(self, directory: str, instance: str | None, log: EventLogger) -> None:
        self.directory = directory
        self.instance = instance
        self._log = log
        self.shared: tuple[int, ...] = ()
        """The directory's and the lock file's descriptors (the lock file's may be missing:
        it could not be made)."""
        self.mine: int | None = None
        self._again = False
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._closed = False

    def stale(self) -> list[str]:
        """What the paths no longer name: `directory`, `lock file`, `instance` (blocking)."""
        found = []
        if not self.shared or not _names(self.directory, self.shared[0]):
            found.append("directory")
        elif len(self.shared) < 2 or not _names(lock_path(self.directory), self.shared[1]):
            found.append("lock file")
        path = None if self.instance is None else host_lock_path(self.directory, self.instance)
        if path is not None and (self.mine is None or not _names(path, self.mine)):
            found.append("instance")
        return found

    def take(self, wait: bool) -> bool:
        """Take what is stale (blocking: the offload). False when a command holds the
        directory exclusively and `wait` is False. Raises OSError when the directory cannot
        be opened or locked; an instance lock that cannot be taken is logged."""
        stale = self.stale()
        if "directory" in stale or "lock file" in stale:
            held = _hold_shared(self.directory, wait, self._log)
            if held is None:
                return False
            if self._closed:  # the host stopped meanwhile: nothing may stay held
                release(held)
                return False
            release(self.shared)
            self.shared = held
        if "instance" in stale and self.instance is not None:
            try:
                mine = hold_instance(self.directory, self.instance, self._log)
            except OSError as exc:
                self._log.warning(
                    "state_lock_failed",
                    path=host_lock_path(self.directory, self.instance),
                    reason=str(exc),
                    consequence="a host sharing stateDir takes this host's bookings over as "
                    "if it had ended; this host writes them back when it sees them gone",
                )
            else:
                if self.mine is not None:
                    os.close(self.mine)
                self.mine = mine
        return True

    def follow(self, watcher: Watcher, offload: Offload) -> None:
        """From now on, take again what a change in the directory (its lock file, `hosts/`)
        or of the directory itself (moved, deleted, made again) leaves stale."""
        self._subscription = watcher.subscribe(
            self.directory, functools.partial(self._changed, offload), (LOCK_FILE, HOSTS_DIR)
        )

    def _changed(self, offload: Offload, _name: str | None) -> None:
        self._again = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._renew(offload), name="state-lock"
            )

    async def _renew(self, offload: Offload) -> None:
        while self._again:
            self._again = False
            try:
                stale = await offload.run(self.stale)
                if not stale:
                    continue
                if await offload.run(functools.partial(self.take, False)):
                    self._log.warning(
                        "state_lock_taken_again",
                        path=self.directory,
                        stale=",".join(stale),
                        detail="what the state directory's paths name changed under the host",
                    )
                    continue
                self._log.warning(
                    "state_dir_busy",
                    path=lock_path(self.directory),
                    detail="a command holds the state directory that replaced this host's: "
                    "taken once it is done",
                )
                await asyncio.sleep(RENEW_RETRY)
                self._again = True
            except FileNotFoundError:
                continue  # moved away, not back yet: the watcher says when it comes back
            except OSError as exc:
                self._log.warning(
                    "state_lock_failed",
                    path=lock_path(self.directory),
                    reason=str(exc),
                    consequence="kdp-host unbook cannot tell that this host runs",
                )

    def close(self) -> None:
        self._closed = True
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._task is not None:
            self._task.cancel()
        release(self.shared)
        self.shared = ()
        if self.mine is not None:
            os.close(self.mine)
            self.mine = None


@contextlib.asynccontextmanager
async def holding(
    directory: str, offload: Offload, log: EventLogger, instance: str | None = None
) -> AsyncIterator[Hold]:
    """A host's hold on `directory` while the block runs: waits (logged) while a command
    holds it exclusively; a lock that cannot be taken is logged and the host runs without.
    With `instance`, it also holds its own lock file (`running`) once it holds the first.
    The host has it `follow` the directory once its watcher runs."""
    hold = Hold(directory, instance, log)
    try:
        await offload.run(functools.partial(os.makedirs, directory, 0o755, True))
        if not await offload.run(functools.partial(hold.take, False)):
            log.warning(
                "state_dir_busy",
                path=lock_path(directory),
                detail="waiting for the command that holds it (kdp-host unbook) to finish",
            )
            await offload.run(functools.partial(hold.take, True))
    except OSError as exc:
        log.warning(
            "state_lock_failed",
            path=lock_path(directory),
            reason=str(exc),
            consequence="kdp-host unbook cannot tell that this host runs",
        )
    try:
        yield hold
    finally:
        hold.close()


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
