"""Counters and gauges whose series are small: the kdp_ counter and gauge families.

Each resource starts with ~37 series at zero (`metrics.Metrics.add_resource`). A
prometheus-client `Counter`/`Gauge` child is a full metric object (its own lock, value
object, label and keyword dicts): ~0.65 KiB and ~20 us to make, so a host with 100
resources spent ~2.4 MiB and a noticeable part of its start-up on series that mostly stay
at zero. Here a family keeps its series in one dict, each series one slot for its value,
behind one lock for the family; the HTTP thread reads them through prometheus-client's
public custom-collector interface (`collect`/`describe` on the host's registry), so
/metrics shows exactly what the prometheus-client objects showed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class CounterSeries:
    """One series of a counter: it only goes up."""

    __slots__ = ("_lock", "value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        with self._lock:
            self.value += amount


class GaugeSeries:
    """One series of a gauge."""

    __slots__ = ("_lock", "value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


S = TypeVar("S", CounterSeries, GaugeSeries)


class _Family(Generic[S]):
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

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
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
        key = tuple(str(value) for value in values)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = self._new_series()
        return series

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

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        with self._lock:
            values = [(key, series.value) for key, series in self._series.items()]
        for key, value in values:
            family.add_metric(list(key), value)
        yield family


class Counter(_Family[CounterSeries]):
    """A counter family (exposed as `<name>_total`, no `_created` series)."""

    def _new_series(self) -> CounterSeries:
        return CounterSeries(self._lock)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def inc(self, amount: float = 1.0) -> None:
        """The one series of a family without labels."""
        self._series[()].inc(amount)


class Gauge(_Family[GaugeSeries]):
    """A gauge family."""

    def _new_series(self) -> GaugeSeries:
        return GaugeSeries(self._lock)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def set(self, value: float) -> None:
        """The one series of a family without labels."""
        self._series[()].set(value)
