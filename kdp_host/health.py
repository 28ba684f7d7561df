"""Per-device health commands, for any resource (glob or shell).

Every interval each device's command runs with `{id}` and `{path}` substituted inside its
argv elements (never through a shell). Exit 0 is Healthy; anything else, a timeout, too much
output or a command that cannot start is Unhealthy. Commands run under the same containment
as probes (process group, timeout, SIGTERM then SIGKILL), a bounded number at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .config import HealthCheckConfig, render_template
from .device_table import DeviceTable
from .devices import Device
from .logs import EventLogger
from .metrics import Metrics
from .process import CommandError, CommandRunner, ProcessRunner, raise_if_cancelling

DEFAULT_CONCURRENCY = 8
_HEALTH_OUTPUT_LIMIT = 64 * 1024


def health_argv(command: Sequence[str], device: Device) -> list[str]:
    """`command` with `{id}` and `{path}` replaced in each element, in one pass (a device ID
    that itself contains `{path}` is not expanded again); nothing else is interpreted."""
    values = {"id": device.id, "path": device.primary_path}
    return [render_template(arg, values) for arg in command]


class HealthChecker:
    """Runs the health command of every device of one resource, every interval, forever."""

    def __init__(
        self,
        config: HealthCheckConfig,
        table: DeviceTable,
        *,
        resource: str,
        log: EventLogger,
        metrics: Metrics,
        commands: CommandRunner | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._config = config
        self._table = table
        self._resource = resource
        self._log = log
        self._metrics = metrics
        self._commands = commands or ProcessRunner()
        self._concurrency = concurrency
        self._failing: dict[str, str] = {}
        """Device ID -> why its last check failed, for logging only changes of state."""

    async def run(self) -> None:
        """Check every device each interval, measured from the start of one round to the
        next; a round slower than the interval is followed by the next one at once."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.check_all()
            raise_if_cancelling()
            await asyncio.sleep(max(0.0, started + self._config.interval - loop.time()))

    async def check_all(self) -> None:
        """One round over the devices listed now; results land in the table as they come."""
        devices = self._table.snapshot.devices
        present = {device.id for device in devices}
        for gone in self._failing.keys() - present:
            del self._failing[gone]
        slots = asyncio.Semaphore(self._concurrency)
        async with asyncio.TaskGroup() as group:
            for device in devices:
                group.create_task(self._check_one(device, slots))

    async def check(self, device: Device) -> str | None:
        """Run the command for `device` once: None if healthy, else why not."""
        try:
            result = await self._commands.run(
                health_argv(self._config.command, device),
                timeout=self._config.timeout,
                max_output=_HEALTH_OUTPUT_LIMIT,
            )
        except CommandError as exc:
            return f"{exc.reason}: {exc}" + (f" (stderr: {exc.stderr})" if exc.stderr else "")
        if result.ok:
            return None
        return result.describe_exit() + (f" (stderr: {result.stderr})" if result.stderr else "")

    async def _check_one(self, device: Device, slots: asyncio.Semaphore) -> None:
        async with slots:
            problem = await self.check(device)
        self._table.set_check_result(device.id, problem is None)
        log = self._log
        if problem is None:
            if self._failing.pop(device.id, None) is not None:
                log.info("device_healthy_again", device=device.id)
            return
        self._metrics.health_check_failures.labels(self._resource).inc()
        if device.id not in self._failing:
            log.warning("device_check_failed", device=device.id, error=problem)
        self._failing[device.id] = problem
