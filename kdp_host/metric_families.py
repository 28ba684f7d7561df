"""The metric families: every kdp_ family (and the process collectors) declared on a
registry owned by the host: counters and gauges of `metric_series` (small series), the
histograms, infos and process collectors of prometheus-client. All are thread-safe, so the
HTTP thread reads them while the event loop writes. Which series of them exist when is
`metrics.Metrics`'s business.
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from . import __version__
from .metric_histograms import LATENCY_BUCKETS, SCAN_BUCKETS, ResourceHistogram
from .metric_labels import (
    ALLOCATE_HOOK_RESULTS,
    ALLOCATION_RESULTS,
    CONFIG_RELOAD_RESULTS,
    DEFAULT_HISTOGRAM_MODE,
    DRIVER_ERROR_REASONS,
    DRIVER_SKIP_REASONS,
    HELD_MISSING_RESULTS,
    POD_RESOURCES_RESULTS,
    PRE_START_RESULTS,
    RELEASE_RESULTS,
    UNBOOKED_RESULTS,
    HistogramMode,
)
from .metric_series import Counter, Gauge


class MetricFamilies:
    """The families, as attributes (`metrics.allocations`, ...); no `_created` series."""

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
            "Allocate container requests, by result (" + ", ".join(ALLOCATION_RESULTS) + ").",
            ["resource", "result"],
            registry=r,
        )
        self.allocate_seconds = ResourceHistogram(
            "kdp_allocate_duration_seconds",
            "Time to answer Allocate, inside the plugin.",
            LATENCY_BUCKETS,
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
            SCAN_BUCKETS,
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
            SCAN_BUCKETS,
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
            "unhealthy, or whose host path reaches another node than handed out: the stick "
            "was unplugged (or replaced) while its pod keeps running.",
            ["resource"],
            registry=r,
        )
        self.held_missing_actions = Counter(
            "kdp_held_missing_actions",
            "What heldMissing did about a device missing under a pod, by action (event, "
            "delete) and result (" + ", ".join(HELD_MISSING_RESULTS) + ").",
            ["resource", "action", "result"],
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
        self.pod_resources_unbooked = Counter(
            "kdp_pod_resources_unbooked",
            "IDs of the host's resources a PodResources answer showed a pod holding with no "
            "booking (pods admitted before bookings were kept, or bookings lost with "
            "stateDir), by result (" + ", ".join(UNBOOKED_RESULTS) + ").",
            ["result"],
            registry=r,
        )
        self.checkpoint_unusable = Counter(
            "kdp_kubelet_checkpoint_unusable",
            "Reads of the kubelet's checkpoint a fenced resource waited for that could not use "
            "it (unreadable, bad, or not read in time): its first list waits and its Allocates "
            "are refused meanwhile.",
            registry=r,
        )
        self.cdi_unresolved = Counter(
            "kdp_kubelet_checkpoint_cdi_unresolved",
            "CDI names of an Allocate answer in the kubelet's checkpoint (another plugin's, "
            "by its resource) that resolved through no spec file of cdiRuntimeDirs, each "
            "counted once: the nodes its pod holds are not known, so not held.",
            ["resource"],
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
            LATENCY_BUCKETS,
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
        self.list_and_watch_left_out = Gauge(
            "kdp_list_and_watch_left_out",
            "Entries of the device list left out of ListAndWatch: the list is longer than one "
            "message to the kubelet may be, and only its first entries are advertised.",
            ["resource"],
            registry=r,
        )
        self.answer_need_unmet = Gauge(
            "kdp_answer_need_unmet",
            "1 while something every answer of the resource needs is not there (need: cdi, "
            "mounts, command, lock): its devices are advertised Unhealthy meanwhile.",
            ["resource", "need"],
            registry=r,
        )
        self.streams_lost = Counter(
            "kdp_list_and_watch_streams_lost",
            "ListAndWatch streams the kubelet ended (each one means registering again).",
            ["resource"],
            registry=r,
        )
        self.scan_seconds = ResourceHistogram(
            "kdp_driver_scan_duration_seconds",
            "Duration of one driver scan or probe run.",
            SCAN_BUCKETS,
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
        self.state_persist_failing = Gauge(
            "kdp_state_persist_failing",
            "1 while a state file in stateDir does not hold the latest change: its writes "
            "fail and are retried, or one has stalled past 5 s (what it lacks is lost if "
            "kdp-host restarts meanwhile).",
            ["file"],
            registry=r,
        )
        self.watch_unwatched = Gauge(
            "kdp_watch_unwatched_directories",
            "Directories kdp-host needs to watch that are there but inotify refused (its "
            "watch limit reached): their changes are seen by the safety-net rescan only.",
            registry=r,
        )
        self.watch_unfollowed = Gauge(
            "kdp_watch_unfollowed_trees",
            "Mounted directories whose tree the watcher cannot follow in full (too many "
            "directories, a watch refused, too much arrived at once): a node moved below "
            "them is seen by the safety-net rescan only.",
            registry=r,
        )
        self.admission_storms = Counter(
            "kdp_admission_storms",
            "Admission storms: resources admitted again, each round asking for the next, "
            "for 100 rounds in a row (a defect; each round in its own turn of the loop).",
            registry=r,
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
