"""The kdp_ counters and gauges (`metric_series`): what /metrics shows is what
prometheus-client's own Counter and Gauge show, and a resource's series are small."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kdp_host.metric_histograms import SCAN_BUCKETS
from kdp_host.metric_series import Counter, Gauge, Histogram
from kdp_host.metrics import Metrics


def _exercise(c: Any, g: Any, p: Any, lv: Any) -> None:
    """The same calls on either implementation: a labelled counter and gauge, and a plain
    counter and gauge."""
    c.labels("a", "ok").inc()
    c.labels("a", "ok").inc(2.5)
    c.labels("b", "ok")
    c.labels("a", "invalid")
    g.labels("a").set(3)
    g.labels("b").inc()
    g.labels("b").dec(0.5)
    g.labels("c").set(1)
    g.remove("c")
    p.inc()
    lv.set(7.25)


def test_the_exposition_is_prometheus_clients_own() -> None:
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    _exercise(
        prometheus_client.Counter("kdp_x", "Xs.", ["resource", "result"], registry=theirs),
        prometheus_client.Gauge("kdp_y", "Ys.", ["resource"], registry=theirs),
        prometheus_client.Counter("kdp_z", "Zs.", registry=theirs),
        prometheus_client.Gauge("kdp_w", "Ws.", registry=theirs),
    )
    _exercise(
        Counter("kdp_x", "Xs.", ["resource", "result"], registry=ours),
        Gauge("kdp_y", "Ys.", ["resource"], registry=ours),
        Counter("kdp_z", "Zs.", registry=ours),
        Gauge("kdp_w", "Ws.", registry=ours),
    )
    assert generate_latest(ours) == generate_latest(theirs)
    assert ours.get_sample_value("kdp_x_total", {"resource": "a", "result": "ok"}) == 3.5


def _observe(labelled: Any, plain: Any) -> None:
    for amount in (0.0, 0.001, 0.0011, 0.3, 5.0, 29.9, 30.0, 31.0, 1e9, float("nan")):
        labelled.labels("a").observe(amount)
        plain.observe(amount)
    labelled.labels("b").observe(0.02)
    labelled.labels("c")
    labelled.labels("d").observe(1.0)
    labelled.remove("d")


def test_histograms_expose_what_prometheus_clients_own_do() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    _observe(
        prometheus_client.Histogram(
            "kdp_h", "Hs.", ["resource"], buckets=SCAN_BUCKETS, registry=theirs
        ),
        prometheus_client.Histogram(
            "kdp_g", "Gs.", buckets=(0.5, 1.0, float("inf")), registry=theirs
        ),
    )
    _observe(
        Histogram("kdp_h", "Hs.", ["resource"], buckets=SCAN_BUCKETS, registry=ours),
        Histogram("kdp_g", "Gs.", buckets=(0.5, 1.0, float("inf")), registry=ours),
    )
    assert generate_latest(ours) == generate_latest(theirs)
    assert ours.get_sample_value("kdp_h_bucket", {"resource": "a", "le": "0.001"}) == 2.0
    with pytest.raises(ValueError, match="sorted"):
        Histogram("kdp_unsorted", "U.", buckets=(1.0, 0.5), registry=ours)


def test_misuse_fails_as_prometheus_client_does() -> None:
    registry = CollectorRegistry()
    counter = Counter("kdp_x", "Xs.", ["resource", "result"], registry=registry)
    with pytest.raises(ValueError, match="label values"):
        counter.labels("a")
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("a", "ok").inc(-1)
    with pytest.raises(KeyError):
        counter.remove("a", "never")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Gauge("kdp_x", "Again.", registry=registry)
    assert counter.labels("a", 1).value == 0.0  # type: ignore[arg-type]
    assert counter.label_values_of("a") == [("a", "ok"), ("a", "1")]


def test_a_resources_series_are_small() -> None:
    """A resource's ~37 series at zero and its scan histogram: prometheus-client's own
    children took ~24 KiB."""
    metrics = Metrics(process_collectors=False)
    metrics.add_resource("warm.example/r")
    metrics.scan_seconds.labels("warm.example/r").observe(0.002)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(50):
            metrics.add_resource(f"r{i}.example/dev")
            metrics.scan_seconds.labels(f"r{i}.example/dev").observe(0.002)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / 50 < 8 * 1024
    assert (
        metrics.registry.get_sample_value(
            "kdp_registrations_total", {"resource": "r7.example/dev", "result": "refused"}
        )
        == 0.0
    )


def test_a_scrape_while_series_come_and_go_sees_a_consistent_family() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("kdp_y", "Ys.", ["resource"], registry=registry)
    done = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        i = 0
        while not done.is_set():
            gauge.labels(f"r{i}").set(i)
            if i >= 10:
                gauge.remove(f"r{i - 10}")
            i += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(200):
            try:
                text = generate_latest(registry).decode()
            except RuntimeError as exc:  # dictionary changed size during iteration
                errors.append(exc)
                break
            assert text.startswith("# HELP kdp_y Ys.")
    finally:
        done.set()
        thread.join()
    assert errors == []


def test_adding_series_in_bulk_keeps_those_there_and_refuses_a_wrong_width() -> None:
    """`add` (a starting resource's series in one call per family) makes the missing series
    at zero, leaves a series already written as it is, and checks each key's width as
    `labels` does."""
    registry = CollectorRegistry()
    counter = Counter("kdp_x", "Xs.", ["resource", "result"], registry=registry)
    counter.labels("a", "ok").inc(3)
    counter.add([("a", "ok"), ("a", "invalid")])
    assert counter.labels("a", "ok").value == 3.0
    assert counter.label_values_of("a") == [("a", "ok"), ("a", "invalid")]
    with pytest.raises(ValueError, match="labels"):
        counter.add([("a",)])
    metrics = Metrics(process_collectors=False)
    metrics.add_resource("r.example/dev")
    metrics.registrations.labels("r.example/dev", "ok").inc()
    metrics.add_resource("r.example/dev")  # a restarted runtime: its counts go on
    assert metrics.registrations.labels("r.example/dev", "ok").value == 1.0
    assert metrics.devices.label_values_of("r.example/dev") == [
        ("r.example/dev", "healthy"),
        ("r.example/dev", "unhealthy"),
    ]
    assert metrics.registered.label_values_of("r.example/dev") == [("r.example/dev",)]
    assert metrics.pre_start_calls.label_values_of("r.example/dev") == []  # with its hook only
