"""Files written all at once, read whole or not at all, removed if there: the blocking calls
the CDI spec writer (`cdi.py`), the release state (`release_state.py`) and the node
features file (`nfd.py`) run through the host's offload.
"""

from __future__ import annotations

import contextlib
import os
import secrets

from .files import MAX_DOCUMENT_SIZE, FileReadError, read_attribute


def write_atomic(path: str, data: bytes) -> None:
    """Write `path` all at once: a temporary file next to it, fsync, then rename over it.
    Blocking: the writer runs it through its offload.

    Creates the directory when missing. Readers see the old content or the new one, never
    a partial file; the temporary name (`.<name>.<random>.tmp`) is ignored by CDI.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def read_or_none(path: str) -> bytes | None:
    """The file's content, None when it cannot be read (missing, unreadable, not a regular
    file: a FIFO put in its place never blocks the read; larger than MAX_DOCUMENT_SIZE)."""
    try:
        return read_attribute(path, MAX_DOCUMENT_SIZE)
    except FileReadError:
        return None


def unlink(path: str) -> bool:
    """Remove `path`; False when it was not there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True
