"""Counters, gauges and histograms whose series are small: the kdp_ families.

Each resource starts with ~37 series at zero (`metrics.Metrics.add_resource`) and a scan
histogram series at its first scan. A prometheus-client child is a full metric object (its
own lock, value object, label and keyword dicts; a histogram's, one value and one lock per
bucket): ~0.55 KiB for a counter, ~3.5 KiB for a histogram, and ~20 us to make, so a host
with 100 resources spent ~2.4 MiB and a noticeable part of its start-up on series that
mostly stay at zero. Here a family keeps its series in one dict, each series a few slots,
behind one lock for the family; the HTTP thread reads them through prometheus-client's
public custom-collector interface (`collect`/`describe` on the host's registry), so
/metrics shows exactly what the prometheus-client objects showed.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class _ValueSeries:
    """One value, changed under its family's lock."""

    __slots__ = ("_lock", "value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0.0

    def _add(self, amount: float) -> None:
        with self._lock:
            self.value += amount


class CounterSeries(_ValueSeries):
    """One series of a counter: it only goes up."""

    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self._add(amount)


class GaugeSeries(_ValueSeries):
    """One series of a gauge."""

    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        self._add(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._add(-amount)

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramSeries:
    """One series of a histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("_bounds", "_lock", "counts", "sum")

    def __init__(self, lock: threading.Lock, bounds: tuple[float, ...]) -> None:
        self._lock = lock
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        bucket = bisect.bisect_left(self._bounds, amount)
        with self._lock:
            self.sum += amount
            if bucket < len(self._bounds) and amount <= self._bounds[bucket]:  # not NaN
                self.counts[bucket] += 1


S = TypeVar("S", CounterSeries, GaugeSeries, HistogramSeries)
V = TypeVar("V", CounterSeries, GaugeSeries)


class _Family(Collector, Generic[S]):
    """A family of series by label values, registered on `registry` as a collector."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] | list[str] = (),
        *,
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], S] = {}
        if not self.labelnames:
            self._series[()] = self._new_series()
        registry.register(self)

    def _new_series(self) -> S:
        raise NotImplementedError

    def labels(self, *values: str) -> S:
        """The series of these label values (made at zero the first time)."""
        series = self._series.get(values)
        if series is not None:
            return series
        if len(values) != len(self.labelnames) or not self.labelnames:
            raise ValueError(
                f"{self.name}: {len(values)} label values for labels {list(self.labelnames)}"
            )
        key = values
        for value in values:
            if type(value) is not str:
                key = tuple(map(str, values))
                break
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = self._new_series()
        return series

    def add(self, keys: Iterable[tuple[str, ...]]) -> None:
        """Make the series of these label values that do not exist yet (at zero), under
        one taking of the lock: a starting resource's ~40 series in one call per family."""
        width = len(self.labelnames)
        with self._lock:
            for key in keys:
                if key not in self._series:
                    if len(key) != width or not width:
                        raise ValueError(f"{self.name}: {key} for labels {list(self.labelnames)}")
                    self._series[key] = self._new_series()

    def remove(self, *values: str) -> None:
        """Drop a series; KeyError when there is none of these values."""
        with self._lock:
            del self._series[tuple(str(value) for value in values)]

    def label_values_of(self, first: str) -> list[tuple[str, ...]]:
        """The label values of the series whose first label is `first`."""
        with self._lock:
            return [key for key in self._series if key and key[0] == first]

    def describe(self) -> list[Metric]:
        return [self._family()]

    def _family(self) -> Metric:
        raise NotImplementedError


class _ValueFamily(_Family[V]):
    """A family whose series are one value each (counters, gauges)."""

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        with self._lock:
            values = [(key, series.value) for key, series in self._series.items()]
        for key, value in values:
            family.add_metric(list(key), value)
        yield family


class Counter(_ValueFamily[CounterSeries]):
    """A counter family (exposed as `<name>_total`, no `_created` series)."""

    def _new_series(self) -> CounterSeries:
        return CounterSeries(self._lock)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def inc(self, amount: float = 1.0) -> None:
        """The one series of a family without labels."""
        self._series[()].inc(amount)


class Gauge(_ValueFamily[GaugeSeries]):
    """A gauge family."""

    def _new_series(self) -> GaugeSeries:
        return GaugeSeries(self._lock)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def set(self, value: float) -> None:
        """The one series of a family without labels."""
        self._series[()].set(value)


class Histogram(_Family[HistogramSeries]):
    """A histogram family; `buckets` are the upper bounds (+Inf is added)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] | list[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(bound) for bound in buckets]
        if bounds != sorted(bounds):
            raise ValueError(f"{name}: buckets not in sorted order")
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        self._le: list[str] = [floatToGoString(bound) for bound in bounds]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry=registry)

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self._lock, self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def observe(self, amount: float) -> None:
        """The one series of a family without labels."""
        self._series[()].observe(amount)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        with self._lock:
            values = [(key, list(s.counts), s.sum) for key, s in self._series.items()]
        for key, counts, total in values:
            cumulative = itertools.accumulate(counts)
            family.add_metric(list(key), list(zip(self._le, cumulative, strict=True)), total)
        yield family
