"""Latency histograms that follow `metrics.histograms`: recorded per resource, once for the
whole host (no `resource` label), or not at all, behind one `labels(resource)` call."""

from __future__ import annotations

import contextlib
from typing import Protocol

from prometheus_client import CollectorRegistry

from .metric_labels import HistogramMode
from .metric_series import Histogram

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
"""Buckets of the in-plugin answers (Allocate, GetPreferredAllocation)."""
SCAN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Buckets of what may take seconds (scans, probes, hooks)."""


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
