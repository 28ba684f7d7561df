"""Who owns a file several host instances write (a resource's CDI spec file, the node's
feature file): an owner file next to it names the instance (`.kdp-host_vendor.example_fpga.owner`,
a dot file CDI and NFD ignore), refreshed while it lives. The newest instance takes the file
over; during a rolling upgrade the old one then neither writes nor removes it. An owner file
not refreshed for `LEASE` seconds belongs to an instance that is gone, and the next writer
takes the file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .atomic_files import unlink, write_atomic
from .files import FileReadError, Offload, read_attribute
from .logs import EventLogger

VERIFY = 10.0
"""Seconds between checks that the spec file on disk is still the one written (a safety net:
the spec dir is watched, so a change shows within milliseconds); a live owner refreshes its
lease as often."""
MAX_OWNER_FILE_SIZE = 256
"""Most bytes of an owner file (an instance ID); a larger one names no owner."""
LEASE = 3 * VERIFY
"""An owner file not refreshed for this long belongs to an instance that is gone."""


def read_owner(path: str, lease: float, now: Callable[[], float] = time.time) -> str | None:
    """The instance named in an owner file, or None when it is missing, empty or its lease
    (the file's age) ran out."""
    try:
        data = read_attribute(path, MAX_OWNER_FILE_SIZE)
        age = now() - os.stat(path).st_mtime
    except (FileReadError, OSError):
        return None
    owner = (data or b"").decode("utf-8", "replace").strip()
    return owner if owner and age <= lease else None


def touch(path: str) -> None:
    """Refresh a lease: the owner file's modification time."""
    with contextlib.suppress(OSError):
        os.utime(path)


@dataclass
class OwnerLease:
    """One instance's claim on one file (`spec`), through its owner file (`path`)."""

    path: str
    spec: str
    instance: str
    lease: float
    offload: Offload
    log: EventLogger
    what: str = "cdi_spec"
    """The file's name in log events (`<what>_taken_over`, `<what>_handed_over`, ...)."""
    _handed_over: bool = field(default=False, init=False, repr=False)

    async def owner(self) -> str | None:
        """The instance that owns the spec file now (None: nobody, or its lease ran out)."""
        return await self.offload.run(lambda: read_owner(self.path, self.lease))

    async def other_owner(self) -> str | None:
        """The other live instance that owns the spec file now (None: nobody else)."""
        owner = await self.owner()
        return None if owner in (None, self.instance) else owner

    async def take_over(self) -> None:
        """The newest instance owns the file: during a rolling upgrade the new one takes it
        from the old one, which then neither writes nor removes it."""
        owner = f"{self.instance}\n".encode()
        try:
            await self.offload.run(lambda: write_atomic(self.path, owner))
        except OSError as exc:
            self.log.warning(f"{self.what}_owner_write_failed", path=self.path, reason=str(exc))

    async def may_write(self) -> bool:
        """Whether this instance owns the file (taking it over when nobody does)."""
        owner = await self.owner()
        if owner is None:
            self.log.info(f"{self.what}_taken_over", path=self.spec, reason="no live owner")
            await self.take_over()
            return True
        if owner != self.instance and not self._handed_over:
            self.log.info(f"{self.what}_handed_over", path=self.spec, owner=owner)
        self._handed_over = owner != self.instance
        return not self._handed_over

    async def refresh(self) -> None:
        """As the owner, refresh the lease (a no-op when another instance owns the file)."""
        if await self.owner() == self.instance:
            await self.offload.run(lambda: touch(self.path))

    async def give_up(self) -> None:
        """Remove the owner file (the file is gone with this instance)."""
        await self.offload.run(lambda: unlink(self.path))
