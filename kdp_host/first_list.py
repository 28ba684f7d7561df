"""When a resource's first list is ready for the kubelet: the one rule (README, "Start-up").

The kubelet learns of a resource (Register, or its socket in `pluginsRegistry`) only once its
first list is complete: every part in `FirstList.ready` is set (the table's first publish,
after the driver's first scan or probe and the claims of its devices; the first CDI spec
write; the first look at what its answers need, `answer_checks.NeedsWatch.checked`). So
the first list the kubelet sees is the full one, however long a first scan that makes
progress takes; after a restart the kubelet's allocatable goes from 0 (the stopped
plugin's, docs/kubelet-contract.md §4) straight to the full count, never through an empty
list. Only a first attempt that fails ends the wait sooner (`FirstList.failed`): every
driver bounds its attempt by its own timeout (a scan's, a probe's, a stream's first list),
so a hung probe or scan registers the resource with no devices then. `FIRST_LIST_LIMIT`
bounds what has no timeout of its own (a first CDI write on a hung file system).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .logs import EventLogger

FIRST_LIST_LIMIT = 60.0
"""Seconds a resource waits for its first complete list at most (the module docstring: the
driver's own timeouts end the wait sooner for a hung probe or scan)."""


@dataclass
class FirstList:
    """One resource's first list: the parts it waits for, and whether the driver's first
    attempt failed before any list."""

    ready: list[asyncio.Event]
    """Set when each part of the first list is complete (the resource adds its parts)."""
    failure: str | None = None
    """Why the driver's first attempt failed before it gave any list."""
    _failed: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def failed(self, reason: str) -> None:
        """The driver's first attempt failed (it timed out or erred) before any list."""
        if self.failure is None:
            self.failure = reason
            self._failed.set()

    async def wait(self, log: EventLogger) -> None:
        """Return once the kubelet may learn of the resource (the module's rule)."""
        pending = [event for event in self.ready if not event.is_set()]
        if not pending or self._failed.is_set():
            return
        # One task, not a gather: a gather cancelled here ends with an exception nobody
        # retrieves ("_GatheringFuture exception was never retrieved").
        ready = asyncio.ensure_future(_all_set(pending))
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait(
                (ready, failed), timeout=FIRST_LIST_LIMIT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
            failed.cancel()
        if ready.done() and not ready.cancelled():
            return
        if self.failure is not None:
            log.info(
                "registering_before_first_list",
                reason=self.failure,
                action="registering with no devices; they are listed once a scan succeeds",
            )
        else:
            log.warning(
                "registering_before_first_list",
                reason="first_list_limit",
                waited=FIRST_LIST_LIMIT,
                action="registering with the devices listed so far",
            )


async def _all_set(events: list[asyncio.Event]) -> None:
    for event in events:
        await event.wait()
