"""`ownership.json.lock` not taken in time, whoever keeps it: a cause every answer of the
host shares, shown as the answer need `lock` of every resource (issue 17, hostile23 F3,
hostile26 N6).

While another host runs on the state directory, every Allocate is answered under
`<stateDir>/ownership.json.lock` (`ownership_fence`). Something that keeps that lock (a host
stopped or frozen while it holds it, a file system that does not answer) has every Allocate
of every resource refused after `FENCE_LIMIT`: not one answer's trouble but the host's, and
nothing else showed it (the refusing host stayed ready, its devices Healthy, and the kubelet
went on sending pods that failed admission). So the first such refusal makes it an unmet
need of every resource (`answer_needs`, need `lock`: devices advertised Unhealthy, /readyz
names it, `kdp_answer_need_unmet{need="lock"}` 1, a line per resource).

Alone on the state directory an answer takes no lock, but its booking's write does
(`state_file_lock`): a process that is no host keeping the lock (an operator's `flock`, a
wedged earlier instance no longer in `hosts/`) had every Allocate wait `WRITE_LIMIT` for the
write and go out with its booking not on disk, with a line blaming the state directory. So a
booking's write that waits past its limit for the lock, held by another process (named from
`/proc/locks`, `lock_holders`), makes it the same unmet need (`StuckLock` is the file's
`LockWatch`), and the need stays while the lock is kept, alone or not. It is met again when
an answer takes the lock, or a try in the background does: while the need is unmet the lock
is tried without waiting (taken and let go at once, off the loop), after `TRY_FIRST`
doubling to `TRY_MAX` seconds, one try at a time (a try that does not return, a hung file
system, is waited for, never joined by another).

An Allocate that comes meanwhile (the kubelet had not heard of the Unhealthy devices yet)
waits for the lock, or for its booking's write, at most `STUCK_LIMIT` (`limit`), not the whole
`FENCE_LIMIT` or `WRITE_LIMIT` again: the kubelet admits one pod at a time, so each 5 s wait
held every other admission of the node; a fenced one that comes while the background try has
not returned is refused at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .atomic_files import Aside, open_lock
from .files import Offload
from .logs import EventLogger

if TYPE_CHECKING:
    from .answer_needs import AnswerNeeds

STUCK_LIMIT = 0.5
"""Seconds an Allocate waits for the lock while the need `lock` is unmet."""
TRY_FIRST, TRY_MAX = 0.1, 1.0
"""Seconds before the first try of the lock in the background, doubling up to the most."""


def lock_free(path: str, aside: Aside) -> bool:
    """Whether the lock at `path` is free: taken without waiting, and let go (blocking)."""
    fd = open_lock(path, aside)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # (lets go of the lock too)
    return True


class StuckLock:
    """Whether host answers are refused for want of the lock at `path`, told to every
    resource's needs (`follow`), and the tries that end it."""

    def __init__(self, path: str, offload: Offload, log: EventLogger, aside: Aside) -> None:
        self._path, self._offload, self._aside = path, offload, aside
        self._log = log
        self.why: str | None = None
        """Why answers are refused now (short, no path: /readyz); None: they are not."""
        self._needs: list[AnswerNeeds] = []
        self._tries: asyncio.Task[None] | None = None
        self._try: asyncio.Future[bool] | None = None

    @property
    def trying(self) -> bool:
        """A try of the lock in the background runs now (it may hang: no answer joins it)."""
        return self.why is not None and self._try is not None and not self._try.done()

    def follow(self, needs: AnswerNeeds) -> Callable[[], None]:
        """Tell `needs` (a resource's) of every change from now on, and of the state now
        (its need `lock` declared); returns what stops it."""
        needs.declare("lock")
        self._needs.append(needs)
        if self.why is not None:
            self._tell(needs)
        return functools.partial(self._needs.remove, needs)

    def limit(self, full: float) -> float:
        """Seconds an answer waits for the lock, or for a write that takes it, now: `full`,
        `STUCK_LIMIT` while the need is unmet (`state_file_lock.LockWatch`)."""
        return full if self.why is None else STUCK_LIMIT

    def held(self, holder: str, waited: float) -> None:
        """A booking's write waited `waited` s for the lock, held by `holder`: its answer went
        out (alone on the state directory) with the booking not on disk."""
        self.refused(
            f"{os.path.basename(self._path)} not taken within {waited:g} s (held by {holder}): "
            "bookings not written to stateDir"
        )

    def refused(self, why: str) -> None:
        """An answer was refused, or went out unwritten: the lock was not taken in time
        (`why`)."""
        if self.why is not None:
            return
        self.why = why
        for needs in self._needs:
            self._tell(needs)
        self._tries = asyncio.get_running_loop().create_task(self._try_until_free())

    def taken(self) -> None:
        """The lock was taken (or is needed no more: no other host runs)."""
        if self.why is None:
            return
        self.why = None
        self.close()
        for needs in self._needs:
            self._tell(needs)

    def close(self) -> None:
        if self._tries is not None:
            self._tries.cancel()
            self._tries = None

    def _tell(self, needs: AnswerNeeds) -> None:
        why = self.why
        detail = "" if why is None else f"{self._path}: {why}; tried every {TRY_MAX:g} s at most"
        needs.set("lock", why, detail=detail)

    async def _try_until_free(self) -> None:
        delay, said = TRY_FIRST, False
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, TRY_MAX)
            self._try = asyncio.ensure_future(
                self._offload.run(functools.partial(lock_free, self._path, self._aside))
            )
            try:
                free = await self._try
            except Exception as exc:  # (not free: tried again; said once while unmet)
                if not said:
                    self._log.warning("state_lock_try_failed", reason=repr(exc))
                said = True
                continue
            if free:
                self._tries = None  # (this task ends: not cancelled by `taken`)
                self.taken()
                return
