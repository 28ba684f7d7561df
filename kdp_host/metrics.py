"""The metric families, on a registry owned by the host (a leaf: anything may record into it).

prometheus-client metric objects are thread-safe, so the HTTP thread reads them while the
event loop writes.
"""

from __future__ import annotations

import contextlib
import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from . import __version__

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
_SCAN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
            "Allocate container requests, by result (ok, invalid).",
            ["resource", "result"],
            registry=r,
        )
        self.allocate_seconds = Histogram(
            "kdp_allocate_duration_seconds",
            "Time to answer Allocate, inside the plugin.",
            ["resource"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.preferred_seconds = Histogram(
            "kdp_preferred_allocation_duration_seconds",
            "Time to answer GetPreferredAllocation, inside the plugin.",
            ["resource"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
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
        self.scan_seconds = Histogram(
            "kdp_driver_scan_duration_seconds",
            "Duration of one driver scan or probe run.",
            ["resource"],
            buckets=_SCAN_BUCKETS,
            registry=r,
        )
        self.driver_errors = Counter(
            "kdp_driver_errors",
            "Failed scans or probes, by reason "
            "(timeout, exit, parse, output_too_large, spawn, io).",
            ["resource", "reason"],
            registry=r,
        )
        self.driver_skipped = Counter(
            "kdp_driver_skipped",
            "What drivers left out without failing, by reason: paths (bad_name, "
            "dangling_link, link_loop, same_device, id_collision), attribute files "
            "(read_timeout, read_refused, read_error), stream lists (rate_limited).",
            ["resource", "reason"],
            registry=r,
        )
        self.health_check_failures = Counter(
            "kdp_health_check_failures",
            "Device health commands that failed (non-zero exit or timeout).",
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
            "Config reloads, by result (ok, invalid, refused, unchanged).",
            ["result"],
            registry=r,
        )
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
            "How late the last event-loop heartbeat ran.",
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "kdp_event_loop_lag_max_seconds",
            "Largest event-loop heartbeat delay seen since start.",
            registry=r,
        )

    def set_device_counts(self, resource: str, healthy: int, unhealthy: int) -> None:
        self.devices.labels(resource, "healthy").set(healthy)
        self.devices.labels(resource, "unhealthy").set(unhealthy)

    def forget_resource(self, resource: str) -> None:
        """Drop the gauges of a resource that left the config (counters keep their history)."""
        for gauge, labels in (
            (self.devices, (resource, "healthy")),
            (self.devices, (resource, "unhealthy")),
            (self.registered, (resource,)),
            (self.list_and_watch_streams, (resource,)),
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
