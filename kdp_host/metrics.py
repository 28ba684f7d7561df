"""The metric families, on a registry owned by the host (a leaf: anything may record into it).

prometheus-client metric objects are thread-safe, so the HTTP thread reads them while the
event loop writes. Conventions: no `_created` series; every counter with a `result` or
`reason` label has a series for each known value from the start (at zero), so `rate()` and
absence alerts work from the first scrape; a resource that leaves the config leaves no
series behind.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Collection
from typing import Literal, Protocol, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from . import __version__

ALLOCATION_RESULTS = ("ok", "invalid", "hook_failed")
REGISTRATION_RESULTS = ("ok", "refused", "unavailable", "error")
DriverErrorReason = Literal["timeout", "exit", "parse", "output_too_large", "spawn", "io"]
"""Every `reason` a driver may count a failed scan or probe under (DriverError's type)."""
DRIVER_ERROR_REASONS: tuple[DriverErrorReason, ...] = get_args(DriverErrorReason)
DRIVER_SKIP_REASONS = (
    "bad_name",
    "dangling_link",
    "link_loop",
    "same_device",
    "id_collision",
    "read_timeout",
    "read_refused",
    "read_error",
    "rate_limited",
    "incomplete_group",
    "path_collision",
    "unsafe_mount",
    "node_owned",
)
"""Every `reason` a driver may count something it left out (without failing) under."""
ConfigReloadResult = Literal["ok", "invalid", "refused", "unchanged"]
CONFIG_RELOAD_RESULTS: tuple[ConfigReloadResult, ...] = get_args(ConfigReloadResult)
DEVICE_HEALTH = ("healthy", "unhealthy")
HookResult = Literal["ok", "exit", "timeout", "spawn", "output_too_large", "parse", "invalid"]
PRE_START_RESULTS: tuple[HookResult, ...] = (
    "ok", "exit", "timeout", "spawn", "output_too_large", "invalid",
)  # fmt: skip
"""Every `result` of a preStart call (`invalid`: devices the plugin does not know)."""
ALLOCATE_HOOK_RESULTS: tuple[HookResult, ...] = (
    "ok", "exit", "timeout", "spawn", "output_too_large", "parse",
)  # fmt: skip
"""Every `result` of an `allocate.command` run (`parse`: output that does not validate)."""
HookName = Literal["preStart", "allocate.command", "release"]
"""The config sections whose series exist only while a resource has them (`forget_hooks`)."""

RELEASE_RESULTS: tuple[HookResult, ...] = ("ok", "exit", "timeout", "spawn", "output_too_large")
"""Every `result` of a `release.command` run."""
PodResourcesResult = Literal["ok", "absent", "unsupported", "rate_limited", "error"]
POD_RESOURCES_RESULTS: tuple[PodResourcesResult, ...] = get_args(PodResourcesResult)
"""Every `result` of a PodResources poll (`absent`: no socket; `unsupported`: no v1 List;
`rate_limited`: refused by the kubelet's rate limit)."""

HistogramMode = Literal["perResource", "host", "off"]
HISTOGRAM_MODES: tuple[HistogramMode, ...] = ("perResource", "host", "off")
"""`metrics.histograms`: one set of latency histograms per resource (15 series each), one set
for the whole host (no `resource` label: the count no longer grows with resources), or none."""
DEFAULT_HISTOGRAM_MODE: HistogramMode = "perResource"

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
_SCAN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _NoObserver:
    def observe(self, amount: float) -> None:
        """Histograms are switched off."""


class ResourceHistogram:
    """A latency histogram recorded per resource, for the whole host, or not at all."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: tuple[float, ...],
        mode: HistogramMode,
        registry: CollectorRegistry,
    ) -> None:
        self.mode = mode
        self._per_resource: Histogram | None = None
        self._host: Histogram | None = None
        if mode == "perResource":
            self._per_resource = Histogram(
                name, documentation, ["resource"], buckets=buckets, registry=registry
            )
        elif mode == "host":
            self._host = Histogram(name, documentation, buckets=buckets, registry=registry)

    def labels(self, resource: str) -> Observer:
        if self._per_resource is not None:
            return self._per_resource.labels(resource)
        if self._host is not None:
            return self._host
        return _NoObserver()

    def remove(self, resource: str) -> None:
        if self._per_resource is not None:
            with contextlib.suppress(KeyError):
                self._per_resource.remove(resource)


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        histograms: HistogramMode = DEFAULT_HISTOGRAM_MODE,
        process_collectors: bool = True,
        holders: bool = False,
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if process_collectors:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.build_info = Info("kdp_build", "kdp-host build information.", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.devices = Gauge(
            "kdp_devices",
            "Devices advertised to the kubelet, by health (replicas counted).",
            ["resource", "health"],
            registry=r,
        )
        self.allocations = Counter(
            "kdp_allocations",
            "Allocate container requests, by result (ok, invalid, hook_failed: allocate.command).",
            ["resource", "result"],
            registry=r,
        )
        self.allocate_seconds = ResourceHistogram(
            "kdp_allocate_duration_seconds",
            "Time to answer Allocate, inside the plugin.",
            _LATENCY_BUCKETS,
            histograms,
            r,
        )
        self.allocate_hooks = Counter(
            "kdp_allocate_hook_runs",
            "allocate.command runs, by result (" + ", ".join(ALLOCATE_HOOK_RESULTS) + ").",
            ["resource", "result"],
            registry=r,
        )
        self.pre_start_calls = Counter(
            "kdp_pre_start_calls",
            "PreStartContainer calls answered by running preStart.command, by result ("
            + ", ".join(PRE_START_RESULTS)
            + ").",
            ["resource", "result"],
            registry=r,
        )
        self.pre_start_waits = Counter(
            "kdp_pre_start_waits",
            "PreStartContainer calls that waited for a free slot (preStart.parallelism).",
            ["resource"],
            registry=r,
        )
        self.pre_start_seconds = ResourceHistogram(
            "kdp_pre_start_duration_seconds",
            "Time to answer PreStartContainer (waiting for a slot and running the command).",
            _SCAN_BUCKETS,
            histograms,
            r,
        )
        self.release_runs = Counter(
            "kdp_release_runs",
            "release.command runs, by result (" + ", ".join(RELEASE_RESULTS) + ").",
            ["resource", "result"],
            registry=r,
        )
        self.releases_pending = Gauge(
            "kdp_releases_pending",
            "Devices used by a container that is gone whose release has not succeeded yet "
            "(waiting, running or failed).",
            ["resource"],
            registry=r,
        )
        self.release_seconds = ResourceHistogram(
            "kdp_release_duration_seconds",
            "Duration of one release.command run.",
            _SCAN_BUCKETS,
            histograms,
            r,
        )
        self.devices_in_use = Gauge(
            "kdp_devices_in_use",
            "Devices held by a container, as the kubelet's PodResources API last said "
            "(replicas of one device counted once).",
            ["resource"],
            registry=r,
        )
        self.devices_held_missing = Gauge(
            "kdp_devices_held_missing",
            "Devices a container holds (PodResources) that are gone from the device list or "
            "unhealthy: the stick was unplugged while its pod keeps running.",
            ["resource"],
            registry=r,
        )
        self.holders_enabled = holders
        self.device_holders = Gauge(
            "kdp_device_holder_info",
            "1 for each container holding a device, as PodResources last said (only with "
            "metrics.holders: one series per device and container).",
            ["resource", "device", "namespace", "pod", "container"],
            registry=r,
        )
        self._holder_series: dict[str, set[tuple[str, str, str, str]]] = {}
        self.pod_resources_polls = Counter(
            "kdp_pod_resources_polls",
            "Calls of the kubelet's PodResources List, by result ("
            + ", ".join(POD_RESOURCES_RESULTS)
            + ").",
            ["result"],
            registry=r,
        )
        self.pod_resources_up = Gauge(
            "kdp_pod_resources_up",
            "1 while the last PodResources List was answered.",
            registry=r,
        )
        self.preferred_seconds = ResourceHistogram(
            "kdp_preferred_allocation_duration_seconds",
            "Time to answer GetPreferredAllocation, inside the plugin.",
            _LATENCY_BUCKETS,
            histograms,
            r,
        )
        self.preferred_fallbacks = Counter(
            "kdp_preferred_allocation_fallbacks",
            "GetPreferredAllocation answers that fell back to a plain valid subset after an "
            "internal problem.",
            ["resource"],
            registry=r,
        )
        self.registrations = Counter(
            "kdp_registrations",
            "Register calls to the kubelet, by result (ok, refused, unavailable, error).",
            ["resource", "result"],
            registry=r,
        )
        self.registered = Gauge(
            "kdp_registered",
            "1 while the resource is served and registered with the kubelet.",
            ["resource"],
            registry=r,
        )
        self.kubelet_restarts = Counter(
            "kdp_kubelet_restarts", "Kubelet restarts seen (kubelet.sock re-created).", registry=r
        )
        self.list_and_watch_updates = Counter(
            "kdp_list_and_watch_updates",
            "Device lists sent on ListAndWatch streams.",
            ["resource"],
            registry=r,
        )
        self.list_and_watch_streams = Gauge(
            "kdp_list_and_watch_streams",
            "Open ListAndWatch streams.",
            ["resource"],
            registry=r,
        )
        self.scan_seconds = ResourceHistogram(
            "kdp_driver_scan_duration_seconds",
            "Duration of one driver scan or probe run.",
            _SCAN_BUCKETS,
            histograms,
            r,
        )
        self.driver_errors = Counter(
            "kdp_driver_errors",
            "Failed scans or probes, by reason (" + ", ".join(DRIVER_ERROR_REASONS) + ").",
            ["resource", "reason"],
            registry=r,
        )
        self.driver_skipped = Counter(
            "kdp_driver_skipped",
            "What drivers left out without failing: paths, attribute files, stream lists "
            "(rate limit), by reason (" + ", ".join(DRIVER_SKIP_REASONS) + ").",
            ["resource", "reason"],
            registry=r,
        )
        self.health_check_failures = Counter(
            "kdp_health_check_failures",
            "Device health commands that failed (non-zero exit or timeout).",
            ["resource"],
            registry=r,
        )
        self.cdi_spec_failures = Counter(
            "kdp_cdi_spec_write_failures",
            "Failed attempts to write or remove a resource's CDI spec file.",
            ["resource"],
            registry=r,
        )
        self.resource_restarts = Counter(
            "kdp_resource_restarts",
            "Times a resource's runtime crashed and was restarted.",
            ["resource"],
            registry=r,
        )
        self.config_reloads = Counter(
            "kdp_config_reloads",
            "Config reloads, by result (" + ", ".join(CONFIG_RELOAD_RESULTS) + ").",
            ["result"],
            registry=r,
        )
        for result in CONFIG_RELOAD_RESULTS:
            self.config_reloads.labels(result)
        self.config_timestamp = Gauge(
            "kdp_config_last_applied_timestamp_seconds",
            "Unix time the config in force was applied.",
            registry=r,
        )
        self.config_info = Info(
            "kdp_config", "The config in force (sha256 of the file).", registry=r
        )
        self.loop_lag = Gauge(
            "kdp_event_loop_lag_seconds",
            "How long the event loop took to answer the last probe or scrape.",
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "kdp_event_loop_lag_max_seconds",
            "Longest event-loop answer to a probe or scrape since start.",
            registry=r,
        )

    def _by_resource(self) -> tuple[Counter | Gauge, ...]:
        return (
            self.allocations,
            self.preferred_fallbacks,
            self.registrations,
            self.registered,
            self.list_and_watch_updates,
            self.list_and_watch_streams,
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

    def _label_sets(self, resource: str) -> list[tuple[Counter | Gauge, tuple[str, ...]]]:
        """Every series a resource has from its start: one per known label value."""
        sets: list[tuple[Counter | Gauge, tuple[str, ...]]] = [
            (self.devices, (resource, health)) for health in DEVICE_HEALTH
        ]
        sets += [(self.allocations, (resource, result)) for result in ALLOCATION_RESULTS]
        sets += [(self.registrations, (resource, result)) for result in REGISTRATION_RESULTS]
        sets += [(self.driver_errors, (resource, reason)) for reason in DRIVER_ERROR_REASONS]
        sets += [(self.driver_skipped, (resource, reason)) for reason in DRIVER_SKIP_REASONS]
        labelled = (self.allocations, self.registrations, self.driver_errors, self.driver_skipped)
        hooks = (
            self.allocate_hooks,
            self.pre_start_calls,
            self.pre_start_waits,
            self.release_runs,
            self.releases_pending,
        )
        sets += [
            (metric, (resource,))
            for metric in self._by_resource()
            if metric not in labelled and metric not in hooks
        ]
        return sets

    def add_resource(self, resource: str) -> None:
        """Create a starting resource's series at zero."""
        for metric, labels in self._label_sets(resource):
            metric.labels(*labels)

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
                for labels in _label_values_of(metric, resource):
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
        for metric in (self.devices, *self._by_resource()):
            for labels in _label_values_of(metric, resource):
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


def _label_values_of(metric: Counter | Gauge, resource: str) -> list[tuple[str, ...]]:
    """The label tuples of `metric`'s series whose first label is `resource`, including
    values no list above knows (a driver's new reason)."""
    found: set[tuple[str, ...]] = set()
    for family in metric.collect():
        for sample in family.samples:
            if sample.labels.get("resource") == resource:
                names = [n for n in sample.labels if n != "le"]
                found.add(tuple(sample.labels[n] for n in names))
    return sorted(found)
