"""Who holds a lock on a file, as `/proc/locks` tells it (issue 17, hostile26 N6): a state
file's lock kept by a process that is no host (an operator's `flock`, a wedged earlier
instance) is named with its holder, not taken for a state directory that does not answer.

`/proc/locks` lists each lock as `<n>: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode>
<start> <end>` (hex device numbers), a waiter's line with `->` after the number. The pid is
the locker's in the reader's PID namespace: 0 or -1 when it cannot be told there (another
namespace, an open file description lock), then the holder is "another process".
"""

from __future__ import annotations

import os
from typing import Final

PROC_LOCKS: Final = "/proc/locks"
ANOTHER: Final = "another process"


def lock_holder(path: str, locks: str = PROC_LOCKS) -> str:
    """`pid N (its command name)` of a process (not this one) that holds a lock on the file
    at `path`, else `ANOTHER`. Blocking (a read of `locks`)."""
    try:
        found = os.stat(path)
        with open(locks, encoding="ascii", errors="replace") as file:
            listed = file.read()
    except OSError:
        return ANOTHER
    where = f"{os.major(found.st_dev):02x}:{os.minor(found.st_dev):02x}:{found.st_ino}"
    mine = str(os.getpid())
    for line in listed.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[5] != where:
            continue
        pid = fields[4]
        if pid.isdigit() and int(pid) > 0 and pid != mine:
            return f"pid {pid}{_name(pid)}"
    return ANOTHER


def _name(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as file:
            return f" ({file.read().strip()})"
    except OSError:
        return ""
