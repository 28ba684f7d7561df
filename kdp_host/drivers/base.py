"""The seam between device discovery and serving.

A driver finds devices and reports to one Notifier: whole device lists (never deltas),
failures, and how long a scan took. What follows from a report -- the failure policy (keep
the last good list, degrade after `failureThreshold` failures in a row, recover), the log
lines about changes, the metrics -- lives behind the Notifier, once, for every driver
(`DeviceReporter` in `reporting.py`). A driver gets everything it touches in the outside
world (watcher, clock, file reader, the offload, command runner) through `DriverDeps`, so
tests can hand it fakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..commands import Commands
from ..devices import Device
from ..files import DaemonThreads, FileReader, Offload
from ..identity import PathReach
from ..logs import EventLogger
from ..safety_net import SafetyNet

if TYPE_CHECKING:
    from ..config import DriverConfig
    from ..process import CommandRunner
    from ..watch import Watcher


class DriverError(Exception):
    """A scan or probe that failed; the message says why, for the log and `check`."""

    def __init__(self, reason: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        """A short label for metrics: one of `metric_labels.DRIVER_ERROR_REASONS` (whose
        series exist at zero), or `abandoned` (`ScanGuard`: never reaches a Notifier)."""
        self.detail = detail
        """More for the log (a command's stderr tail), or empty."""


@dataclass(frozen=True)
class Skipped:
    """Something a driver left out of a list without failing the scan."""

    reason: str
    """A short label for metrics: bad_name, dangling_link, link_loop, id_collision, ..."""
    subject: str
    """What was skipped (a path, printable), for the log."""
    message: str


class Notifier(Protocol):
    """Where a driver reports."""

    def update(
        self,
        devices: Iterable[Device] | Mapping[str, Device],
        skipped: Sequence[Skipped] = (),
        reached: Mapping[str, PathReach] | None = None,
    ) -> None:
        """A complete, successful list (a mapping is kept as is: do not change it later),
        with what the scan left out; both replace the previous report. `reached`: what the
        scan learnt some of the devices' host paths reach (`ScanResult.reached`)."""
        ...

    def failure(self, error: DriverError) -> None:
        """A scan or probe that failed: the last good list stays."""
        ...

    def scanned(self, seconds: float) -> None:
        """How long one scan or probe run took."""
        ...

    def rate_limited(self, dropped: int) -> None:
        """`dropped` complete lists were skipped because they came too fast (newest won)."""
        ...

    async def taken(self) -> None:
        """Return once the host has taken the last list given to `update` (admitted by the
        ownership index, or replaced there by a newer one): a polling driver waits for it
        before its next run, so it never makes lists faster than the host takes them."""
        ...


@dataclass(frozen=True)
class DriverDeps:
    """What a driver may use of the outside world."""

    log: EventLogger
    """Bound to the resource."""
    watcher: Watcher
    clock: Callable[[], float] = time.monotonic
    files: FileReader = field(default_factory=FileReader)
    offload: Offload = field(default_factory=DaemonThreads)
    """The one way off the event loop: whole scans, large parses (shared by the resources
    of a host)."""
    commands: CommandRunner = field(default_factory=Commands)
    safety_net: SafetyNet | None = None
    """The host's one periodic-check timer, shared by the resources of a host (None: the
    driver makes its own, on `offload`)."""
    local: Callable[[Collection[str]], bool] | None = None
    """Whether a lookup in each of these real directories waits on nothing but this
    machine, as the mount table followed now says (`OwnershipIndex.local`): a scan of named
    paths there may run on the loop (`scanner.LoopScanner`). None: every scan off it."""


class Driver(Protocol):
    async def run(self, notifier: Notifier) -> None:
        """Report device lists to `notifier` until cancelled. Never returns on its own."""
        ...

    async def scan(self) -> list[Device]:
        """One discovery pass, for `kdp-host check`. Raises DriverError."""
        ...


DriverFactory = Callable[["DriverConfig", DriverDeps], Driver]
