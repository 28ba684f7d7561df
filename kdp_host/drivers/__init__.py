"""Device discovery drivers, by the config key that selects them."""

from __future__ import annotations

from ..config import DriverConfig, GlobDriverConfig, ShellDriverConfig, SysfsDriverConfig
from .base import Driver, DriverDeps, DriverError, DriverFactory, Notifier, Skipped
from .glob import FAILURE_THRESHOLD as SCAN_FAILURE_THRESHOLD
from .glob import GlobDriver
from .reporting import DeviceReporter, DeviceSink


def make_driver(config: DriverConfig, deps: DriverDeps) -> Driver:
    """The driver for a resource's driver section (`glob`, `shell` or `sysfs`)."""
    if isinstance(config, GlobDriverConfig):
        if config.group:
            from .glob_groups import GlobGroupDriver

            return GlobGroupDriver(config, deps)
        return GlobDriver(config, deps)
    if isinstance(config, SysfsDriverConfig):
        from .sysfs import SysfsDriver

        return SysfsDriver(config, deps)
    from .shell import ShellDriver

    return ShellDriver(config, deps)


def failure_threshold(config: DriverConfig) -> int:
    """Failures in a row after which every device of the resource is reported Unhealthy."""
    if isinstance(config, ShellDriverConfig):
        return config.failure_threshold
    return SCAN_FAILURE_THRESHOLD


__all__ = [
    "DeviceReporter",
    "DeviceSink",
    "Driver",
    "DriverDeps",
    "DriverError",
    "DriverFactory",
    "Notifier",
    "Skipped",
    "failure_threshold",
    "make_driver",
]
