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

from tests.bench import flooder, harness, hotplug, latency, run, scale

MODULES = (
    "bare_plugin",
    "containment",
    "floor_server",
    "flooder",
    "hooks",
    "hostile_drivers",
    "large",
    "peer",
    "pinger",
    "preferred",
    "proto",
    "release",
    "restart",
    "scale",
    "startup_profile",
    "sysfs",
    "uevent_sources",
)

TINY = replace(harness.Options.quick_options(), repeats=1, calls=20, warmup=5, hotplug_events=2)


@pytest.mark.parametrize("name", MODULES)
def test_bench_modules_import(name: str) -> None:
    importlib.import_module(f"tests.bench.{name}")


def test_churning_flooder_keeps_as_many_files_as_there_were(tmp_path: Path) -> None:
    harness.make_device_files(tmp_path, 10, "f")
    event = flooder.churner(tmp_path)
    for i in range(101):
        event(i)
    assert len(list(tmp_path.iterdir())) == 11  # event 100 created one, its removal is next
    event(101)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"c{i}" for i in range(41, 51)]


def test_statistics_helpers() -> None:
    assert harness.percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert harness.percentile([1.0] * 99 + [50.0], 99) == 1.0
    assert harness.median([5.0, 1.0, 3.0, 2.0]) == 2.5
    figure = harness.Figure("x", "ms", [3.0, 1.0, 2.0], target=2.5)
    assert (figure.median, figure.min, figure.max, figure.passed) == (2.0, 1.0, 3.0, True)
    assert harness.Figure("y", "ms", target=1.0).passed is False
    assert math.isnan(harness.Figure("z", "ms").median)


def test_scale_start_up_ends_when_every_resource_listed_all_its_devices() -> None:
    """An empty first list (a resource that registered before its first scan was done) is
    not the end of start-up: the scale bench's idle window must not begin in its scan."""
    updates = {
        "a": [harness.Update(1.0, 0, 0), harness.Update(5.0, 10, 10)],
        "b": [harness.Update(0.5, 10, 10), harness.Update(2.0, 10, 10)],
    }
    since = {"a": 0.9, "b": 1.5}  # b's list at 0.5 came before its Register

    def of(name: str) -> list[harness.Update]:
        return updates[name]

    assert scale.all_devices_listed(of, since, 10) == 5.0
    updates["a"].pop()
    assert scale.all_devices_listed(of, since, 10) is None


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


def test_runner_sends_log_records_to_a_file_not_among_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator's warnings (e.g. a stale stream's disconnect) and asyncio's complaints
    once reached the output through logging's last resort."""
    import logging

    from kdp_host.simulator.log import log_event

    def noisy(opts: harness.Options) -> list[harness.Figure]:
        log_event(logging.WARNING, "stale_stream_disconnects_new_client", resource="r/x")
        logging.getLogger("asyncio").error("Unclosed connection: Channel(...)")
        return []

    monkeypatch.setitem(run.BENCHMARKS, "noisy", "noisy")
    monkeypatch.setattr(run.importlib, "import_module", lambda name: type("M", (), {"run": noisy}))
    level = logging.getLogger().level
    out = tmp_path / "bench.json"
    assert run.main(["--quick", "--only", "noisy", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "stale_stream" not in printed.out + printed.err
    assert "Unclosed" not in printed.out + printed.err
    lines = [json.loads(line) for line in out.with_suffix(".log").read_text().splitlines()]
    assert [(r["event"], r.get("resource")) for r in lines] == [
        ("stale_stream_disconnects_new_client", "r/x"),
        ("Unclosed connection: Channel(...)", None),
    ]
    assert logging.getLogger().level == level  # the process's logging is left as it was


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


def test_side_by_side_table_shows_both_columns_ratio_and_why_a_column_is_missing() -> None:
    from tests.bench import peer

    measured = peer.Row.make("alloc p50", "us", ratio_target=1.1)
    for gdp, kdp in ((100.0, 105.0), (120.0, 150.0), (110.0, 121.0)):
        measured.add(gdp, kdp)
    absent = peer.Row.make("sysfs hot-plug", "ms", kdp_target=5.0)
    absent.skip_gdp("GDP reads the machine's own /sys")
    absent.add(None, 4.0)
    outcome = run.Outcome("peer", [*measured.figures(), *absent.figures()], 1.0)
    text = run.side_by_side([outcome])
    alloc = next(line for line in text.splitlines() if line.startswith("alloc p50"))
    assert "110 (100-120)" in alloc and "121 (105-150)" in alloc
    assert "1.10 (1.05-1.25)" in alloc and "<= 1.10x" in alloc and alloc.endswith("pass")
    sysfs = next(line for line in text.splitlines() if line.startswith("sysfs hot-plug"))
    assert "<= 5.00 ms" in sysfs and sysfs.endswith("pass")
    assert "sysfs hot-plug, GDP: not measured: GDP reads the machine's own /sys" in text
    assert "alloc p50" not in run.table([outcome]), "row figures are only in the side table"


def test_peer_benchmark_says_why_when_the_harness_is_absent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the binaries every row names the reason: the hot-plug rows are measured
    through the real kubelet only (the simulated figures are the hotplug and sysfs
    sections')."""
    from tests.bench import peer

    monkeypatch.setenv("KDP_KUBELET_HARNESS", str(tmp_path / "absent"))
    figures = peer.run(replace(TINY, repeats=1, hotplug_events=1))
    hot = [f for f in figures if "hot-plug" in f.row and f.column != "ratio"]
    assert hot and all(not f.values and "not found" in f.note for f in hot)
    gdp = [f for f in figures if f.column == "GDP"]
    assert gdp and all(not f.values and "not found" in f.note for f in gdp)


def test_peer_hotplug_rows_are_measured_through_the_real_kubelet() -> None:
    """Glob and sysfs hot-plug -> the real kubelet's receipt of the list (its own stamp)."""
    from tests.bench import peer
    from tests.kubelet_harness import harness_binary, missing_reason

    if harness_binary() is None:
        pytest.skip(missing_reason())
    rows = peer.hotplug_rows(replace(TINY, repeats=1, hotplug_events=2), None, "left out here")
    labels = [row.label for row in rows]
    assert labels[0].startswith("glob hot-plug") and "10 USB adapters" in labels[1]
    assert labels[-1].startswith("sysfs removal with 10")
    for row in rows:
        assert len(row.kdp.values) == 1 and 0 < row.kdp.values[0] < 10_000, row.label
        assert not row.gdp.values
    assert rows[0].gdp.note == "not measured: left out here"


def test_a_crashed_peer_row_says_why_and_the_other_rows_keep_their_figures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One measurement of the peer section timing out (the glob hot-plug) loses only its own
    row: the row says what failed, the sysfs rows keep what they measured."""
    from tests.bench import peer

    def crashed(*args: object, **kwargs: object) -> None:
        raise TimeoutError("timed out after 30s waiting for gdp.example/r000")

    def measured(opts: harness.Options, present: int) -> tuple[harness.Figure, harness.Figure]:
        return harness.Figure("plug", "ms", [1.5]), harness.Figure("removal", "ms", [2.5])

    monkeypatch.setattr(peer, "glob_hotplug", crashed)
    monkeypatch.setattr(peer, "sysfs_hotplug", measured)
    rows = peer.hotplug_rows(TINY, None, None)
    glob, *rest = rows
    assert glob.kdp.note.startswith("FAILED (TimeoutError: timed out after 30s")
    assert not glob.kdp.values and glob.kdp.passed is False
    assert rest and all(row.kdp.values for row in rest)


@pytest.mark.parametrize("name", ["release", "preferred"])
def test_a_kubelet_benchmark_says_why_when_the_harness_is_absent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    module = importlib.import_module(f"tests.bench.{name}")
    monkeypatch.setenv("KDP_KUBELET_HARNESS", str(tmp_path / "absent"))
    figures = module.run(TINY)
    assert figures and all(f.values == [] for f in figures)
    assert all("not measured" in f.note and "not found" in f.note for f in figures)
