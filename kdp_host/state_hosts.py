"""The other hosts running on a state directory (issue 17, hostile22 F7): a rolling update
with `maxSurge` runs the new host beside the old one on the same `stateDir`. Each running
host holds `<stateDir>/hosts/<instance>` locked (`state_lock.hold_instance`)."""

from __future__ import annotations

import os
import time

from .state_lock import HOSTS_DIR, running

STARTING = 10.0
"""Seconds a host's lock file counts as a running host's without being asked."""


def others_run(directory: str, instance: str) -> bool:
    """Whether a host other than `instance` runs on `directory` (blocking). A `hosts/` that
    cannot be listed counts as one that may hold another, and so does a lock file made less
    than `STARTING` seconds ago: it is not asked (`state_lock.running` takes the lock a
    moment, and removes a file no host holds: a host that just made its file and has not
    locked it yet would lose it)."""
    hosts = os.path.join(directory, HOSTS_DIR)
    try:
        names = os.listdir(hosts)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    now = time.time()
    for name in names:
        if name == instance:
            continue
        try:
            made = os.lstat(os.path.join(hosts, name)).st_ctime
        except OSError:
            continue
        if now - made < STARTING or running(directory, name):
            return True
    return False
