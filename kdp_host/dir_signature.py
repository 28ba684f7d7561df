"""A directory's signature: what stat polling compares (the polling watcher, the scan loop's
safety net, the shared bookings' check)."""

from __future__ import annotations

import os
from collections.abc import Mapping

DirSignature = tuple[int, int, int]


def dir_signature(directory: str) -> DirSignature | None:
    """Inode, modification and change time of a directory: any entry added, removed or
    renamed in it changes the signature."""
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return signature_of(st)


def signature_of(st: os.stat_result) -> DirSignature:
    """The signature of a directory stat'ed already."""
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def dir_signatures(directories: list[str]) -> list[DirSignature | None]:
    return [dir_signature(d) for d in directories]


def inode_in(signatures: Mapping[str, DirSignature | None], directory: str) -> int | None:
    """The inode of `directory` as `signatures` have it (None: not there, or no signature)."""
    signature = signatures.get(directory)
    return None if signature is None else signature[0]
