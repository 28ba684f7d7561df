"""The benchmarks (tests/bench, `make bench`) still run: tiny sizes, structure only.

No timing is asserted here: the figures are `make bench`'s business.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from tests.bench import harness, hotplug, latency, run

MODULES = (
    "containment",
    "floor_server",
    "hooks",
    "large",
    "pinger",
    "proto",
    "restart",
    "scale",
    "sysfs",
    "uevent_sources",
)

TINY = replace(harness.Options.quick_options(), repeats=1, calls=20, warmup=5, hotplug_events=2)


@pytest.mark.parametrize("name", MODULES)
def test_bench_modules_import(name: str) -> None:
    importlib.import_module(f"tests.bench.{name}")


def test_statistics_helpers() -> None:
    assert harness.percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert harness.percentile([1.0] * 99 + [50.0], 99) == 1.0
    assert harness.median([5.0, 1.0, 3.0, 2.0]) == 2.5
    figure = harness.Figure("x", "ms", [3.0, 1.0, 2.0], target=2.5)
    assert (figure.median, figure.min, figure.max, figure.passed) == (2.0, 1.0, 3.0, True)
    assert harness.Figure("y", "ms", target=1.0).passed is False
    assert math.isnan(harness.Figure("z", "ms").median)


def check_figures(figures: list[harness.Figure], with_target: bool = True) -> None:
    assert figures
    for figure in figures:
        assert figure.values, figure.name
        assert all(math.isfinite(v) and v >= 0 for v in figure.values), figure.name
    if with_target:
        assert any(f.target is not None for f in figures)


def test_allocate_benchmark_runs_against_kdp_host_and_the_floor() -> None:
    figures = latency.run(TINY)
    names = {f.name for f in figures}
    assert "allocate p50 ratio kdp-host/floor" in names
    assert {"allocate p50 floor grpc.aio", "allocate p99 kdp-host asyncio"} <= names
    check_figures(figures)


def test_runner_writes_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    status = run.main(["--quick", "--only", "hotplug", "--repeats", "1", "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "hot-plug add -> update" in printed and "target" in printed
    report = json.loads(out.read_text())
    assert report["quick"] is True
    assert report["machine"]["cpus"] >= 1
    assert report["benchmarks"]["hotplug"]["error"] is None
    figures = {f["name"]: f for f in report["figures"]}
    plug = figures["hot-plug add -> update"]
    assert plug["target"] == 50.0 and len(plug["values"]) == 1
    assert plug["min"] <= plug["median"] <= plug["max"]


def test_hotplug_benchmark_structure() -> None:
    check_figures(hotplug.run(TINY))


def test_hooks_benchmark_structure() -> None:
    from tests.bench import hooks

    figures = hooks.run(replace(TINY, calls=5, warmup=2))
    assert [f.name for f in figures] == [
        "allocate p50 without allocate.command",
        "allocate p50 with allocate.command",
        "PreStartContainer p50 with preStart: true",
        "command run p50 (true)",
        "event loop held per spawn p50",
    ]
    check_figures(figures, with_target=False)
