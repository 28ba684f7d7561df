"""The one budget of a PreStartContainer call (`StartBudget`): the kubelet's deadline.

The kubelet gives a container start's PreStartContainer 30 s, and the deadline travels with
the call (docs/kubelet-contract.md §8); past it the kubelet fails the start with
`DeadlineExceeded`, whatever kdp-host still does for it. Every wait of the call (the owed
releases of the container's devices, a preStart slot) ends `PRE_START_ANSWER_MARGIN` before
that deadline, less what must still run after it (a preStart's timeout and the TERM-to-KILL
grace), and the call then answers with kdp-host's own error: which devices' releases still
run, or that preStart would no longer fit. A preStart is started only while its timeout fits.
The kubelet tries the start again with back-off; a release goes on meanwhile (its device stays
held until it succeeds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from grpclib.const import Status

from .allocation import HookFailed
from .rules import KILL_GRACE, KUBELET_PRE_START_DEADLINE, PRE_START_ANSWER_MARGIN


@dataclass(frozen=True)
class StartBudget:
    """Until when a PreStartContainer call may wait (`clock`'s time) before it answers."""

    deadline: float
    """The kubelet's deadline on `clock`."""
    given: float
    """Seconds the call had when it came (for the messages)."""
    clock: Callable[[], float] = time.monotonic
    after: float = 0.0
    """Seconds kept for what runs after the waits (`then`)."""

    @classmethod
    def of_call(
        cls, remaining: float | None, clock: Callable[[], float] = time.monotonic
    ) -> StartBudget:
        """The budget of a call that came with `remaining` seconds to its deadline (None:
        it sent none; the kubelet's documented 30 s)."""
        given = KUBELET_PRE_START_DEADLINE if remaining is None else remaining
        return cls(clock() + given, given, clock)

    def then(self, timeout: float | None) -> StartBudget:
        """The budget of the waits before a command of `timeout` seconds (None: none) runs:
        they end in time for it, killed at its timeout, to answer before the deadline."""
        if timeout is None:
            return self
        return StartBudget(self.deadline, self.given, self.clock, timeout + KILL_GRACE)

    def left(self) -> float:
        """Seconds the call may still wait (0: none)."""
        return max(0.0, self.deadline - PRE_START_ANSWER_MARGIN - self.after - self.clock())

    async def releases(self, resource: str, tasks: Mapping[str, asyncio.Future[None]]) -> None:
        """Wait for the releases of these devices (never cancelled here: they go on, the
        device held until one succeeds) within the budget; raises `releases_running`."""
        if pending := [task for task in tasks.values() if not task.done()]:
            await asyncio.wait(pending, timeout=self.left())
        if running := [device for device, task in tasks.items() if not task.done()]:
            raise self.releases_running(resource, running)

    def _why(self) -> str:
        kept = f", keeping {self.after:g} s for preStart and its kill" if self.after else ""
        return (
            f"answered before the kubelet's PreStartContainer deadline ({self.given:.3g} s"
            f"{kept}); the kubelet tries the start again"
        )

    def releases_running(self, resource: str, devices: Collection[str]) -> HookFailed:
        """The error of a call whose devices' releases still run."""
        names = ",".join(sorted(devices))
        return HookFailed(
            Status.UNAVAILABLE,
            "deadline",
            f"{resource}: release of {names} (used by an earlier container) not done yet: "
            f"no container starts with it until it succeeds ({self._why()})",
        )

    def lock_busy(self, resource: str, device: str) -> HookFailed:
        """The error of a call that waited in vain for another host's release of a device."""
        return HookFailed(
            Status.UNAVAILABLE,
            "deadline",
            f"{resource}: device {device}: another host's release of it still runs ({self._why()})",
        )

    def too_late(self, what: str, timeout: float) -> HookFailed:
        """The error of a call with no time left to run a command of `timeout` seconds."""
        left = max(0.0, self.deadline - self.clock())
        return HookFailed(
            Status.UNAVAILABLE,
            "deadline",
            f"{what} not run: its timeout ({timeout:g} s) does not fit in the {left:.3g} s "
            f"left of the kubelet's PreStartContainer deadline ({self.given:.3g} s); the "
            "kubelet tries the start again",
        )
