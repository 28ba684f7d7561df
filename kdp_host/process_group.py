"""A command's process group, from its start to its end: how it is started so that it dies
with the host (the exec wrapper arming the death signal, the environment), and how the whole
group is ended (SIGTERM, then SIGKILL after a grace; the leader reaped, the wait bounded).
process.py runs commands through these (its docstring says why it is done this way).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Mapping

from .rules import KILL_GRACE

DEFAULT_KILL_GRACE = KILL_GRACE
"""Seconds between SIGTERM and SIGKILL to the process group."""
_GROUP_POLL = 0.01
PARENT_CHECK = 'test "$PPID" = "$1" || exit 1; shift; exec "$@"'
"""The shell line of the exec wrapper (after setpriv armed the death signal): run on only if
the parent is still the host whose PID is `$1`, then replace itself with the command."""
WRAPPER_NAME = "kdp-host"
"""The wrapper shell's `$0`: the name its own error lines start with."""
EXEC_FAILED = frozenset({126, 127})
"""The statuses a POSIX shell exits with when its `exec` fails (not executable, not found)."""


def child_env(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    """The host's environment plus `extra` (None: inherit unchanged)."""
    if not extra:
        return None
    return {**os.environ, **extra}


def death_signal_wrapper() -> tuple[str, ...]:
    """The argv that starts a command so that it dies with this process (Linux), to be
    followed by the host's PID and the command; () where there is no way to do that."""
    if not sys.platform.startswith("linux"):
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None or not os.access("/bin/sh", os.X_OK):
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", PARENT_CHECK, WRAPPER_NAME)


def exec_failure(returncode: int, stderr: str, program: str) -> str | None:
    """The wrapper shell's line when its `exec` of `program` (absolute, as resolved) failed,
    else None. The host checks the program before the spawn, but the kernel's exec also needs
    the `#!` interpreter (gone with an upgraded package) and can fail on what changed since
    the check; without the wrapper that is an OSError of the spawn, through it an exit status
    (dash: `kdp-host: 1: exec: PATH: not found`; bash: `kdp-host: line 1: PATH: cannot
    execute: ...`). Taken as the spawn failure it is (hostile24 F4), so nothing reads it as
    the command's own status."""
    if returncode not in EXEC_FAILED:
        return None
    line = stderr.strip()
    if "\n" in line or not line.startswith(f"{WRAPPER_NAME}: ") or f" {program}: " not in line:
        return None
    return line.removeprefix(f"{WRAPPER_NAME}: ")


def kill_if_spawned(spawn: asyncio.Future[asyncio.subprocess.Process]) -> None:
    if not spawn.cancelled() and spawn.exception() is None:
        signal_group(spawn.result().pid, signal.SIGKILL)


async def kill_process_group(process: asyncio.subprocess.Process, grace: float) -> None:
    """Stop every process of the group led by `process`, and reap the leader.

    With `grace` > 0: SIGTERM, wait until the group is empty or `grace` has passed, SIGKILL.
    With 0: SIGKILL at once. A no-op when the leader was reaped and the group is empty.
    The wait for the leader after SIGKILL is bounded: a process stuck in the kernel (a hung
    device driver) cannot be killed, and must not hang us; the child watcher reaps it when
    it finally dies.
    """
    pgid = process.pid
    loop = asyncio.get_running_loop()
    if grace > 0 and signal_group(pgid, signal.SIGTERM):
        deadline = loop.time() + grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await process.wait()
        # Nothing signals "the last process of a group died" (its members may not be our
        # children), so poll for the rest of the grace.
        while signal_group(pgid, 0) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_GROUP_POLL)
    signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(grace, DEFAULT_KILL_GRACE)):
            await process.wait()


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group (0: only check); False if no process of the group is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
