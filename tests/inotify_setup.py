"""A real inotify watcher running on the test's loop, and a wait until it told all it heard
(`InotifyWatcher.untold`): for tests of what it vouches for (`places_followed`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger

DEADLINE = 10.0


@contextlib.asynccontextmanager
async def running_watcher() -> AsyncIterator[InotifyWatcher]:
    watcher = InotifyWatcher(get_logger(), retry_interval=0.05)
    running = asyncio.create_task(watcher.run())
    await asyncio.sleep(0)  # (its reader added)
    try:
        yield watcher
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def told(watcher: InotifyWatcher) -> None:
    """Until the loop read every event the kernel holds and told every change of the mount
    table."""
    deadline = time.monotonic() + DEADLINE
    while watcher.untold():
        assert time.monotonic() < deadline, "the watcher's events were not read"
        await asyncio.sleep(0.001)
