"""Behind the driver seam: the one place that turns a driver's reports into table updates,
failure policy, log lines and metrics."""

from __future__ import annotations

import asyncio
import functools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from ..container_paths import NO_CONFIG_MOUNTS, PATH_COLLISION, OwnCollisions
from ..device_changes import carry_count, changed_between, healthy_count
from ..devices import Device
from ..host_env import DEVICE_ENV_PREFIX
from ..identity import PathReach
from ..logs import EventLogger
from ..metrics import Metrics
from ..rules import LIST_SEPARATOR, SKIPPED_SHOWN, device_path_problem, exec_string_problem
from .base import DriverError, Skipped
from .glob_paths import printable_path

_HEALTHY = operator.attrgetter("healthy")


class DeviceSink(Protocol):
    """What the reporter writes to (the resource's DeviceTable)."""

    def publish(
        self,
        devices: Iterable[Device] | Mapping[str, Device],
        reached: Mapping[str, PathReach] | None = None,
    ) -> bool: ...

    def set_degraded(self, reason: str | None) -> bool: ...

    async def taken(self) -> None:
        """Return once the last list published is taken (`Notifier.taken`)."""
        ...


class DeviceReporter:
    """The Notifier every driver reports to.

    Failure policy: a failure keeps the last good list; after `failure_threshold` failures
    in a row every device is reported Unhealthy (the list is kept) until a list arrives.
    The log says so once per change of state (first failure, a new reason, degradation,
    recovery); metrics count every failure. A changed list is logged; a skipped path is
    logged and counted once while it stays skipped (more than `rules.SKIPPED_SHOWN` newly
    skipped for one reason: one summary line for them, with the count and an example).
    """

    def __init__(
        self,
        sink: DeviceSink,
        *,
        resource: str,
        log: EventLogger,
        metrics: Metrics,
        failure_threshold: int,
        first_attempt_failed: Callable[[str], None] | None = None,
        own_collisions: OwnCollisions = NO_CONFIG_MOUNTS,
    ) -> None:
        self._sink = sink
        self._own_collisions = own_collisions  # (devices no container can be given)
        self._first_attempt_failed = first_attempt_failed
        """Called with the reason of a failure that comes before any list (the resource then
        registers without waiting for a first list: first_list.py)."""
        self._resource = resource
        self._log = log
        self._metrics = metrics
        self._threshold = failure_threshold
        self.consecutive_failures = 0
        self.degraded = False
        self._last_reason: str | None = None
        self._skipped: frozenset[Skipped] = frozenset()
        self._throttled = 0
        """Lists dropped by the rate limit since the flood began (0: no flood)."""
        self._dropped_before_this_list = False
        self._checked: tuple[
            Mapping[str, Device] | list[Device] | None, list[tuple[Device, Skipped]]
        ] = (None, [])
        """The last list given (a mapping is never changed later) and its unlistable devices."""

    def update(
        self,
        devices: Iterable[Device] | Mapping[str, Device],
        skipped: Sequence[Skipped] = (),
        reached: Mapping[str, PathReach] | None = None,
    ) -> None:
        if not isinstance(devices, Mapping):
            devices = list(devices)
        else:
            carry_count(devices)  # (from the last list, while it is held: O(changed))
        self._first_attempt_failed = None
        unlistable = self._unlistable(devices)
        if unlistable:
            left_out = {device.id for device, _ in unlistable}
            devices = [d for d in _values(devices) if d.id not in left_out]
            skipped = [*skipped, *(item for _, item in unlistable)]
        if self._sink.publish(devices, reached):
            if isinstance(devices, Mapping):
                healthy = healthy_count(devices)
            else:
                healthy = sum(map(_HEALTHY, devices))
            unhealthy = len(devices) - healthy
            _after_this_turn(
                self._log.info, "devices_changed", healthy=healthy, unhealthy=unhealthy
            )
        self._note_skipped(frozenset(skipped))
        self._note_flood_end()
        self._recovered()

    def _unlistable(
        self, devices: Mapping[str, Device] | list[Device]
    ) -> list[tuple[Device, Skipped]]:
        """`_unlistable(devices)`, checking only the devices that are not the very objects
        of the last mapping (drivers reuse unchanged devices: a hot-plug checks one)."""
        before, found = self._checked
        if devices is before:
            return found  # the same list again (the safety net)
        if isinstance(devices, Mapping) and isinstance(before, Mapping):
            was, ids = before.get, changed_between(before, devices)
            if ids is None:
                changed = [d for i, d in devices.items() if was(i) is not d]
            else:  # (the list says what changed: no walk)
                changed = [d for i in ids if (d := devices.get(i)) is not None and was(i) is not d]
            found = [item for item in found if devices.get(item[0].id) is item[0]]
            found.extend(_unlistable(changed, self._own_collisions))
        else:
            found = _unlistable(_values(devices), self._own_collisions)
        self._checked = (devices, found)
        return found

    def failure(self, error: DriverError) -> None:
        self.consecutive_failures += 1
        if self._first_attempt_failed is not None:
            self._first_attempt_failed(error.reason)
            self._first_attempt_failed = None
        self._metrics.driver_errors.labels(self._resource, error.reason).inc()
        if self.consecutive_failures == 1 or error.reason != self._last_reason:
            self._log.warning(
                "probe_failed",
                reason=error.reason,
                error=str(error),
                stderr=error.detail,
                consecutive=self.consecutive_failures,
                threshold=self._threshold,
                action="keeping last good device list",
            )
        self._last_reason = error.reason
        if not self.degraded and self.consecutive_failures >= self._threshold:
            self.degraded = True
            self._sink.set_degraded(f"{error.reason}: {error}")
            self._log.error(
                "resource_degraded",
                reason=error.reason,
                error=str(error),
                stderr=error.detail,
                consecutive=self.consecutive_failures,
                action="all devices Unhealthy until a scan succeeds",
            )

    def scanned(self, seconds: float) -> None:
        self._metrics.scan_seconds.labels(self._resource).observe(seconds)

    def rate_limited(self, dropped: int) -> None:
        self._metrics.driver_skipped.labels(self._resource, "rate_limited").inc(dropped)
        if not self._throttled:
            self._log.warning(
                "device_lists_rate_limited",
                dropped=dropped,
                action="applying only the newest list, at a bounded rate",
            )
        self._throttled += dropped
        self._dropped_before_this_list = True

    async def taken(self) -> None:
        await self._sink.taken()

    def _note_flood_end(self) -> None:
        if self._throttled and not self._dropped_before_this_list:
            self._log.info("device_lists_rate_limit_ended", dropped=self._throttled)
            self._throttled = 0
        self._dropped_before_this_list = False

    def _recovered(self) -> None:
        # Always lift: a previous runtime of this resource may have left the sink degraded.
        self._sink.set_degraded(None)
        if self.consecutive_failures:
            self._log.info(
                "probe_recovered",
                after_failures=self.consecutive_failures,
                was_degraded=self.degraded,
            )
        self.consecutive_failures = 0
        self.degraded = False
        self._last_reason = None

    def _note_skipped(self, skipped: frozenset[Skipped]) -> None:
        if skipped == self._skipped:
            return
        by_reason: dict[str, list[Skipped]] = {}
        for item in skipped - self._skipped:
            by_reason.setdefault(item.reason, []).append(item)
        for reason, items in sorted(by_reason.items()):
            self._metrics.driver_skipped.labels(self._resource, reason).inc(len(items))
            if len(items) > SKIPPED_SHOWN:
                first = min(items, key=lambda item: item.subject)
                self._log.warning(
                    "paths_skipped",
                    reason=reason,
                    count=len(items),
                    example=first.subject,
                    error=first.message,
                )
                continue
            for item in items:
                self._log.warning(
                    "path_skipped", reason=item.reason, path=item.subject, error=item.message
                )
        self._skipped = skipped


def _after_this_turn(log: Callable[..., None], event: str, **fields: object) -> None:
    """Log in a later callback of the loop (at once with none running): the ListAndWatch
    streams a publish woke write their list first (a line held a hot-plug's update back by
    ~0.1 ms under load, issue 19). The line keeps the caller's context (`logs.muted_by`)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        log(event, **fields)
        return
    loop.call_soon(functools.partial(log, event, **fields))


def _values(devices: Iterable[Device] | Mapping[str, Device]) -> Iterable[Device]:
    return devices.values() if isinstance(devices, Mapping) else devices


VALUE_TOO_LONG = "value_too_long"
"""The skip reason of a device with an env or annotation value longer than one exec string
may be (`rules.exec_string_problem`): every hook given it, and the container, would fail."""


def _too_long_for_exec(device: Device) -> str | None:
    """Why a device's env value (as a hook gets it, under DEVICE_ENV_PREFIX: the longest name
    it is passed under) or annotation value cannot pass through an exec, or None."""
    for name, value in device.env.items():
        if why := exec_string_problem(value, DEVICE_ENV_PREFIX + name):
            return f"device {device.id}: env {name} {why}; no container can be given it"
    for key, value in device.annotations.items():
        if why := exec_string_problem(value):
            return f"device {device.id}: annotation {key} {why}; no container can be given it"
    return None


def _unlistable(devices: Iterable[Device], own: OwnCollisions) -> list[tuple[Device, Skipped]]:
    """Devices with a node path that `{paths}` or `{hostPaths}` could not list (it holds
    LIST_SEPARATOR: rules.device_path_problem), or that no container can be given (two of
    its nodes and mounts, or one and `allocate.mounts`, at one container path or nested:
    `container_paths.OwnCollisions`; an env or annotation value too long for an exec:
    `rules.exec_string_problem`), each with why it is left out. Drivers check IDs as
    they make them; node paths come from file names, symlink targets, templates and probes,
    so they are checked here, once for every driver."""
    found: list[tuple[Device, Skipped]] = []
    for device in devices:
        if why := own.collision(device):
            subject = printable_path(device.path or device.id)
            found.append((device, Skipped(PATH_COLLISION, subject, why)))
            continue
        if (device.env or device.annotations) and (why := _too_long_for_exec(device)):
            subject = printable_path(device.path or device.id)
            found.append((device, Skipped(VALUE_TOO_LONG, subject, why)))
            continue
        if not device.any_node_path_contains(LIST_SEPARATOR):
            continue  # (every device is checked on every update: keep the common case cheap)
        for node in device.nodes:
            if LIST_SEPARATOR in node.host_path or LIST_SEPARATOR in node.container_path:
                path = node.host_path if LIST_SEPARATOR in node.host_path else node.container_path
                why = device_path_problem(path)
                found.append((device, Skipped("bad_name", path, f"device {device.id}: path {why}")))
                break
    return found
