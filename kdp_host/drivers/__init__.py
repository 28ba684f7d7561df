"""Device discovery drivers, by the config key that selects them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import DriverConfig
from .base import DeviceSink, Driver, DriverContext, DriverError
from .glob import GlobDriver

DriverFactory = Callable[[Any, DriverContext], Driver]


def _registry() -> dict[str, DriverFactory]:
    from .shell import ShellDriver

    return {"glob": GlobDriver, "shell": ShellDriver}


def make_driver(config: DriverConfig, ctx: DriverContext) -> Driver:
    return _registry()[config.kind](config, ctx)


__all__ = ["DeviceSink", "Driver", "DriverContext", "DriverError", "make_driver"]
