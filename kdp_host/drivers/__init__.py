"""Device discovery drivers: the registry of driver kinds, by the config key that selects them.

Each kind names its config section, how to make its driver, and its failure threshold; a
driver's module is imported only when a resource uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..config import DriverConfig, GlobDriverConfig, ShellDriverConfig, SysfsDriverConfig
from .base import Driver, DriverDeps, DriverError, DriverFactory, Notifier, Skipped
from .reporting import DeviceReporter, DeviceSink
from .scanning import FAILURE_THRESHOLD as SCAN_FAILURE_THRESHOLD

C = TypeVar("C", bound=DriverConfig)


@dataclass(frozen=True)
class DriverKind(Generic[C]):
    """One kind of driver in the registry."""

    config: type[C]
    """Its config section (`glob`, `shell`, `sysfs`)."""
    make: Callable[[C, DriverDeps], Driver]
    failure_threshold: Callable[[C], int]
    """Failures in a row after which every device of the resource is reported Unhealthy."""


def _glob(config: GlobDriverConfig, deps: DriverDeps) -> Driver:
    from .glob import GlobDriver

    return GlobDriver(config, deps)


def _sysfs(config: SysfsDriverConfig, deps: DriverDeps) -> Driver:
    from .sysfs import SysfsDriver

    return SysfsDriver(config, deps)


def _shell(config: ShellDriverConfig, deps: DriverDeps) -> Driver:
    from .shell import ShellDriver

    return ShellDriver(config, deps)


REGISTRY: Mapping[str, DriverKind[Any]] = {
    "glob": DriverKind(GlobDriverConfig, _glob, lambda config: SCAN_FAILURE_THRESHOLD),
    "sysfs": DriverKind(SysfsDriverConfig, _sysfs, lambda config: SCAN_FAILURE_THRESHOLD),
    "shell": DriverKind(ShellDriverConfig, _shell, lambda config: config.failure_threshold),
}
"""Every driver kind, by its config key (the same keys as `config.DRIVERS`)."""


def _kind(config: DriverConfig) -> DriverKind[Any]:
    kind = REGISTRY[config.kind]
    if not isinstance(config, kind.config):
        raise TypeError(f"driver {config.kind!r} registered for {kind.config.__name__}")
    return kind


def make_driver(config: DriverConfig, deps: DriverDeps) -> Driver:
    """The driver for a resource's driver section."""
    return _kind(config).make(config, deps)


def failure_threshold(config: DriverConfig) -> int:
    """Failures in a row after which every device of the resource is reported Unhealthy."""
    return _kind(config).failure_threshold(config)


__all__ = [
    "REGISTRY",
    "DeviceReporter",
    "DeviceSink",
    "Driver",
    "DriverDeps",
    "DriverError",
    "DriverFactory",
    "DriverKind",
    "Notifier",
    "Skipped",
    "failure_threshold",
    "make_driver",
]
