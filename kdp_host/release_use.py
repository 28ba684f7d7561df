"""What a release tracker (`release.py`) knows of one physical device: who uses it, whether
a release is owed, the release running or failed, and the state `/devices` shows."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .backoff import Backoff

if TYPE_CHECKING:
    from .holdings import Holder

RETRY_MAXIMUM = 300.0
"""Longest wait between two background attempts of a failed release."""
ReleaseState = Literal["clean", "in_use", "pending", "running", "failed"]


@dataclass
class DeviceUse:
    """What the tracker knows about one physical device."""

    used: set[str] = field(default_factory=set)
    """Advertised IDs handed to containers whose end has not been seen."""
    owed: bool = False
    """The users are gone and no release has succeeded since."""
    allocated_at: float = float("-inf")
    """Monotonic time of its last Allocate."""
    allocated_wall: float | None = None
    """Unix time of its last Allocate (kept in the state file: a tracker started later,
    by a reload or after a restart, still ignores answers asked before it)."""
    holders: tuple[Holder, ...] = ()
    """Who held it, as PodResources last said (kept after they left, for the templates)."""
    running: asyncio.Task[None] | None = None
    failure: str | None = None
    marked_unhealthy: bool = False
    released_at: float | None = None
    """Unix time of the last successful release."""
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=RETRY_MAXIMUM))

    @property
    def state(self) -> ReleaseState:
        if self.running is not None:
            return "running"
        if self.owed:
            return "failed" if self.failure is not None else "pending"
        return "in_use" if self.used else "clean"
