"""Device discovery drivers, by the config key that selects them."""

from __future__ import annotations

from ..config import DriverConfig, GlobDriverConfig, SysfsDriverConfig
from .base import DeviceSink, Driver, DriverContext, DriverError
from .glob import GlobDriver


def make_driver(config: DriverConfig, ctx: DriverContext) -> Driver:
    """The driver for a resource's driver section (`glob`, `shell` or `sysfs`)."""
    if isinstance(config, GlobDriverConfig):
        return GlobDriver(config, ctx)
    if isinstance(config, SysfsDriverConfig):
        from .sysfs import SysfsDriver

        return SysfsDriver(config, ctx)
    from .shell import ShellDriver

    return ShellDriver(config, ctx)


__all__ = ["DeviceSink", "Driver", "DriverContext", "DriverError", "make_driver"]
