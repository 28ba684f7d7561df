"""The seam between device discovery and serving: a driver reports whole device lists."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..devices import Device
from ..logs import EventLogger

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..watch import Watcher


class DeviceSink(Protocol):
    """Where a driver reports (the resource's DeviceTable)."""

    def publish(self, devices: Iterable[Device] | Mapping[str, Device]) -> bool: ...

    def set_degraded(self, reason: str | None) -> bool: ...


class DriverError(Exception):
    """A scan or probe that failed; the message says why, for the log and `check`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """A short label for metrics: timeout, exit, parse, output_too_large, io."""


@dataclass(frozen=True)
class DriverContext:
    resource: str
    log: EventLogger
    watcher: Watcher
    metrics: Metrics | None = None


class Driver(Protocol):
    async def run(self, sink: DeviceSink) -> None:
        """Report device lists into `sink` until cancelled. Never returns on its own."""
        ...

    async def scan(self) -> list[Device]:
        """One discovery pass, for `kdp-host check`. Raises DriverError."""
        ...
