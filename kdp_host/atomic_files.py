"""Files written all at once, read whole or not at all, removed if there: the blocking calls
the CDI spec writer (`cdi.py`), the release state (`release_state.py`) and the node
features file (`nfd.py`) run through the host's offload.

And the paths a host owns in its state directory (`state_file`, `state_lock`): something
there that is not what the host makes (a directory where a lock file belongs, a FIFO, a
symlink, a plain file where a directory belongs) is set aside (`set_aside`: renamed to
`<name>.unreadable[.N]`, never deleted) and made again (`open_lock`, `directory_at`), so a
stray entry never turns off what the path is for.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable

from .files import MAX_DOCUMENT_SIZE, FileReadError, read_attribute
from .logs import EventLogger


def write_atomic(path: str, data: bytes) -> os.stat_result:
    """Write `path` all at once: a temporary file next to it, fsync, then rename over it;
    returns what the file written is (`fstat`, before the rename). Blocking: the writer runs
    it through its offload.

    Creates the directory when missing. Readers see the old content or the new one, never
    a partial file; the temporary name (`.<name>.<random>.tmp`) is ignored by CDI.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            written = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return written


Aside = Callable[[str, str, str], None]
"""Told (the path, what was there, the name it is kept under now) when something is set
aside: the caller's error line."""


def set_aside(path: str) -> str:
    """Rename what is at `path` to the first free `<path>.unreadable` (`.1`, `.2`, ... when
    earlier copies are there: none is replaced) and return that name. Raises OSError when
    it cannot be renamed."""
    aside = f"{path}.unreadable"
    copies = 0
    while os.path.lexists(aside):
        copies += 1
        aside = f"{path}.unreadable.{copies}"
    os.rename(path, aside)
    return aside


def kind_at(path: str) -> str | None:
    """What is at `path` (not followed): `file`, `directory`, `symlink`, `fifo`, `socket`,
    `device`; None when nothing is."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    kinds = (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
    )
    return next((name for test, name in kinds if test(mode)), "device")


def _set_aside_unless(path: str, wanted: str, aside: Aside) -> bool:
    """Set aside what is at `path` unless it is `wanted` (or nothing); True if it was."""
    found = kind_at(path)
    if found is None or found == wanted:
        return False
    aside(path, found, set_aside(path))
    return True


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def open_lock(path: str, aside: Aside) -> int:
    """Open the lock file `path` (created when missing, a regular file) and return its
    descriptor, for `fcntl.flock`. Anything else there (a directory, a FIFO, a symlink, a
    socket, a device) is set aside first (`set_aside`, told to `aside`): no host locks it.
    Raises OSError when it cannot be opened, or set aside. Blocking."""
    for _ in range(3):  # set aside, made again: another process may put something back
        try:
            fd = os.open(path, _LOCK_FLAGS, 0o644)
        except OSError:
            if not _set_aside_unless(path, "file", aside):
                raise
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        _set_aside_unless(path, "file", aside)
    raise OSError(f"{path}: no regular file after setting aside what was there")


def directory_at(path: str, aside: Aside) -> None:
    """Make the directory `path` when missing; anything else there (a file, a FIFO, a
    symlink to no directory) is set aside first (`set_aside`, told to `aside`). Raises
    OSError when it cannot be made, or set aside. Blocking."""
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except FileExistsError:
        found = kind_at(path) or "nothing"
        aside(path, found, set_aside(path))
        os.makedirs(path, mode=0o755, exist_ok=True)


def read_or_none(path: str) -> bytes | None:
    """The file's content, None when it cannot be read (missing, unreadable, not a regular
    file: a FIFO put in its place never blocks the read; larger than MAX_DOCUMENT_SIZE)."""
    try:
        return read_attribute(path, MAX_DOCUMENT_SIZE)
    except FileReadError:
        return None


def link_count(path: str) -> int:
    """How many links the entry at `path` has (0: none there)."""
    try:
        return os.stat(path, follow_symlinks=False).st_nlink
    except OSError:
        return 0


def unlink(path: str) -> bool:
    """Remove `path`; False when it was not there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def aside_logged(log: EventLogger) -> Aside:
    """How a path in stateDir that is not what the host makes there is reported when it is
    set aside (`open_lock`, `directory_at`): one error line."""

    def aside(path: str, found: str, kept_as: str) -> None:
        log.error(
            "state_path_set_aside",
            path=path,
            found=found,
            kept_as=os.path.basename(kept_as),
            consequence="made again as kdp-host needs it; what was there is kept",
        )

    return aside
