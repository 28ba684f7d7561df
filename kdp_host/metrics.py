"""The metrics of the host (a leaf: anything may record into it): the families of
`metric_families.py` and the life of their series.

Conventions: no `_created` series; every counter with a `result` or `reason` label has a
series for each known value (`metric_labels.py`) from the start (at zero), so `rate()` and
absence alerts work from the first scrape; series that exist only with a config section
(the hooks') come with it; a resource that leaves the config leaves no series behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection

from .metric_families import MetricFamilies
from .metric_histograms import ResourceHistogram
from .metric_labels import (
    ALLOCATE_HOOK_RESULTS,
    ALLOCATION_RESULTS,
    DEVICE_HEALTH,
    DRIVER_ERROR_REASONS,
    DRIVER_SKIP_REASONS,
    EVERY_RESOURCE_NEEDS,
    POD_RESOURCES_RESULTS,
    PRE_START_RESULTS,
    REGISTRATION_RESULTS,
    RELEASE_RESULTS,
    UNBOOKED_RESULTS,
    HookName,
)
from .metric_series import Counter, Gauge


class Metrics(MetricFamilies):
    """The families, with every series a resource has created at zero when it starts and
    dropped when it leaves."""

    _resource_series: tuple[tuple[Counter | Gauge, tuple[tuple[str, ...], ...]], ...] | None = None
    """`_label_sets`, made at the first resource."""

    def _by_resource(self) -> tuple[Counter | Gauge, ...]:
        return (
            self.allocations,
            self.preferred_fallbacks,
            self.registrations,
            self.registered,
            self.list_and_watch_updates,
            self.list_and_watch_streams,
            self.list_and_watch_left_out,
            self.streams_lost,
            self.driver_errors,
            self.driver_skipped,
            self.health_check_failures,
            self.cdi_spec_failures,
            self.resource_restarts,
            self.allocate_hooks,
            self.pre_start_calls,
            self.pre_start_waits,
            self.devices_in_use,
            self.devices_held_missing,
            self.release_runs,
            self.releases_pending,
        )

    def _label_sets(self) -> tuple[tuple[Counter | Gauge, tuple[tuple[str, ...], ...]], ...]:
        """Every series a resource has from its start: per family, the label values that
        follow the resource's name (one series per known value; `()`: the resource alone)."""
        if self._resource_series is None:
            labelled = (
                (self.devices, DEVICE_HEALTH),
                (self.allocations, ALLOCATION_RESULTS),
                (self.registrations, REGISTRATION_RESULTS),
                (self.driver_errors, DRIVER_ERROR_REASONS),
                (self.driver_skipped, DRIVER_SKIP_REASONS),
                (self.answer_need_unmet, EVERY_RESOURCE_NEEDS),
            )
            hooks = (
                self.allocate_hooks,
                self.pre_start_calls,
                self.pre_start_waits,
                self.release_runs,
                self.releases_pending,
            )
            alone: tuple[tuple[str, ...], ...] = ((),)
            sets: list[tuple[Counter | Gauge, tuple[tuple[str, ...], ...]]] = [
                (metric, tuple((value,) for value in values)) for metric, values in labelled
            ]
            sets += [
                (metric, alone)
                for metric in self._by_resource()
                if all(metric is not other for other, _ in labelled) and metric not in hooks
            ]
            self._resource_series = tuple(sets)
        return self._resource_series

    def add_resource(self, resource: str) -> None:
        """Create a starting resource's series at zero."""
        for metric, rests in self._label_sets():
            metric.add([(resource, *rest) for rest in rests])

    def add_pre_start(self, resource: str) -> None:
        """Create the preStart series of a resource that has a preStart command, at zero."""
        for result in PRE_START_RESULTS:
            self.pre_start_calls.labels(resource, result)
        self.pre_start_waits.labels(resource)

    def add_release(self, resource: str) -> None:
        """Create the series of a resource that has a release.command, at zero."""
        for result in RELEASE_RESULTS:
            self.release_runs.labels(resource, result)
        self.releases_pending.labels(resource)

    def add_pod_resources(self) -> None:
        """Create the PodResources series (polling is on), at zero."""
        for result in POD_RESOURCES_RESULTS:
            self.pod_resources_polls.labels(result)
        for unbooked in UNBOOKED_RESULTS:
            self.pod_resources_unbooked.labels(unbooked)
        self.pod_resources_up.set(0)

    def add_allocate_hook(self, resource: str) -> None:
        """Create the series of a resource that has an allocate.command, at zero."""
        for result in ALLOCATE_HOOK_RESULTS:
            self.allocate_hooks.labels(resource, result)

    def forget_hooks(self, resource: str, keep: Collection[HookName]) -> None:
        """Drop the series of the hooks a resource no longer has; call it once the
        runtime that had them has stopped, or it may write one back."""
        hooks: dict[HookName, tuple[tuple[Counter | Gauge, ...], ResourceHistogram | None]] = {
            "preStart": ((self.pre_start_calls, self.pre_start_waits), self.pre_start_seconds),
            "allocate.command": ((self.allocate_hooks,), None),
            "release": ((self.release_runs, self.releases_pending), self.release_seconds),
        }
        for hook, (families, histogram) in hooks.items():
            if hook in keep:
                continue
            for metric in families:
                for labels in metric.label_values_of(resource):
                    with contextlib.suppress(KeyError):
                        metric.remove(*labels)
            if histogram is not None:
                histogram.remove(resource)

    def set_holders(self, resource: str, holders: set[tuple[str, str, str, str]]) -> None:
        """The (device, namespace, pod, container) holding the resource's devices now
        (`metrics.holders`; a no-op when off): series of those gone are dropped."""
        if not self.holders_enabled:
            return
        previous = self._holder_series.get(resource, set())
        for gone in previous - holders:
            with contextlib.suppress(KeyError):
                self.device_holders.remove(resource, *gone)
        for new in holders - previous:
            self.device_holders.labels(resource, *new).set(1)
        self._holder_series[resource] = holders

    def set_device_counts(self, resource: str, healthy: int, unhealthy: int) -> None:
        self.devices.labels(resource, "healthy").set(healthy)
        self.devices.labels(resource, "unhealthy").set(unhealthy)

    def forget_resource(self, resource: str) -> None:
        """Drop every series of a resource that left the config (call once it has stopped)."""
        self.set_holders(resource, set())
        for metric in (self.devices, self.answer_need_unmet, *self._by_resource()):
            for labels in metric.label_values_of(resource):
                with contextlib.suppress(KeyError):
                    metric.remove(*labels)
        for histogram in (
            self.allocate_seconds,
            self.preferred_seconds,
            self.scan_seconds,
            self.pre_start_seconds,
            self.release_seconds,
        ):
            histogram.remove(resource)
