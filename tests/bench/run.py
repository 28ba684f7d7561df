"""`make bench`: run every benchmark, print a table, write bench-results/bench.json.

    python -m tests.bench.run [--quick] [--only NAME,...] [--repeats N] [--idle-seconds S]

Each figure is the median of one value per repeated run, with min and max; comparisons are
ratios taken within a run. `--quick` shrinks sizes and durations for a smoke run (its
figures are not comparable with the targets). Exit status: 0 when every benchmark ran (even
with missed targets), 1 when one could not run. Log records of the benchmarks' own process
(the kubelet simulator's, asyncio's, warnings) go to bench-results/bench.log, not stdout.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import importlib
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdp_host.logs import JsonFormatter

from .harness import Figure, Options
from .proto import REPO

BENCHMARKS: dict[str, str] = {
    "allocate": "latency",
    "hotplug": "hotplug",
    "restart": "restart",
    "scale": "scale",
    "large": "large",
    "containment": "containment",
    "sysfs": "sysfs",
    "hostile": "hostile",
    "hooks": "hooks",
    "registration": "registration",
    "peer": "peer",
    "release": "release",
    "preferred": "preferred",
}
EXTERNAL = {"allocation": "bench_allocation"}
"""Benchmarks other modules provide as `run() -> dict[str, float]` (included when present)."""


@dataclass
class Outcome:
    name: str
    figures: list[Figure]
    seconds: float
    error: str | None = None


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def _external(module_name: str) -> Callable[[Options], list[Figure]] | None:
    try:
        module = importlib.import_module(f"tests.bench.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"tests.bench.{module_name}":
            return None
        raise

    def run(opts: Options) -> list[Figure]:
        values: dict[str, float] = module.run()
        return [Figure(name, "ms", [float(value)]) for name, value in values.items()]

    return run


def compile_product() -> None:
    """Write kdp_host's bytecode before anything starts it, as installing the package does
    (pip compiles every module): with PYTHONDONTWRITEBYTECODE set, as on the development
    machines, each start would otherwise compile every module again, which is not what an
    installed kdp-host does and costs its start-up and memory figures."""
    compileall.compile_dir(str(REPO / "kdp_host"), quiet=1)


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """Send this process's log records (WARNING and up: the kubelet simulator's findings,
    asyncio's complaints) and Python warnings to `path` meanwhile, so the output holds only
    figures. Without a handler, logging's last resort printed them among the figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(JsonFormatter())  # with the simulator's fields
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.setLevel(level)
        root.removeHandler(handler)
        handler.close()


def run_one(name: str, run: Callable[[Options], list[Figure]], opts: Options) -> Outcome:
    print(f"== {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        figures = run(opts)
    except Exception:
        error = traceback.format_exc()
        print(error, file=sys.stderr, flush=True)
        return Outcome(name, [], time.monotonic() - started, error.strip().splitlines()[-1])
    seconds = time.monotonic() - started
    print(f"   {name}: {seconds:.1f}s", file=sys.stderr, flush=True)
    return Outcome(name, figures, seconds)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(outcomes: list[Outcome]) -> str:
    rows = [("figure", "unit", "median", "min", "max", "target", "result")]
    for outcome in outcomes:
        if outcome.error:
            rows.append((f"{outcome.name}: NOT RUN ({outcome.error})", "", "", "", "", "", "ERROR"))
        for fig in outcome.figures:
            if fig.row:
                continue  # in the side-by-side table
            result = {True: "pass", False: "FAIL", None: ""}[fig.passed]
            target = f"<= {_fmt(fig.target)}" if fig.target is not None else ""
            rows.append(
                (fig.name, fig.unit, _fmt(fig.median), _fmt(fig.min), _fmt(fig.max), target, result)
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def side_by_side(outcomes: list[Outcome]) -> str:
    """The figures that fill a row of the kdp-host vs GDP table (section `peer`), one line
    per row: both columns and the ratio (median, min-max), the target and the result."""
    rows: dict[str, dict[str, Figure]] = {}
    for outcome in outcomes:
        for fig in outcome.figures:
            if fig.row:
                rows.setdefault(fig.row, {})[fig.column] = fig
    if not rows:
        return ""
    lines = [("figure", "unit", "GDP", "kdp-host", "kdp-host/GDP", "target", "result")]
    notes: list[str] = []
    for label, columns in rows.items():
        cells = [label, columns["kdp-host"].unit]
        for column in ("GDP", "kdp-host", "ratio"):
            fig = columns[column]
            if fig.values:
                spread = f" ({_fmt(fig.min)}-{_fmt(fig.max)})" if len(fig.values) > 1 else ""
                cells.append(f"{_fmt(fig.median)}{spread}")
            else:
                cells.append("-")
                if fig.note and column != "ratio":
                    notes.append(f"{label}, {column}: {fig.note}")
        judged = next((f for f in (columns["ratio"], columns["kdp-host"]) if f.target), None)
        if judged is None:
            cells += ["", ""]
        else:
            unit = "x" if judged is columns["ratio"] else f" {judged.unit}"
            assert judged.target is not None
            cells.append(f"<= {_fmt(judged.target)}{unit}")
            cells.append({True: "pass", False: "FAIL", None: ""}[judged.passed])
        lines.append(tuple(cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    out += [f"  {note}" for note in notes]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, short durations")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--repeats", type=int, help="runs per figure")
    parser.add_argument("--idle-seconds", type=float, help="idle CPU window (default 30)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "bench.json")
    args = parser.parse_args(argv)
    opts = Options.quick_options() if args.quick else Options()
    if args.repeats:
        opts.repeats = args.repeats
        opts.scale_repeats = min(opts.scale_repeats, args.repeats)
    if args.idle_seconds:
        opts.idle_seconds = args.idle_seconds
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(wanted) - set(BENCHMARKS) - set(EXTERNAL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    runners: dict[str, Callable[[Options], list[Figure]]] = {}
    for name, module_name in BENCHMARKS.items():
        if not wanted or name in wanted:
            runners[name] = importlib.import_module(f"tests.bench.{module_name}").run
    for name, module_name in EXTERNAL.items():
        if not wanted or name in wanted:
            external = _external(module_name)
            if external is not None:
                runners[name] = external

    log_path = args.out.with_suffix(".log")
    compile_product()
    started = datetime.datetime.now(datetime.UTC)
    with logs_to(log_path):
        outcomes = [run_one(name, run, opts) for name, run in runners.items()]
    info = machine()
    print()
    print(
        f"kdp-host benchmarks{' (--quick: not comparable with the targets)' if opts.quick else ''}"
        f" on {info['cpus']} x {info['cpu_model'] or '?'}, Python {info['python']}"
    )
    print(table(outcomes))
    compared = side_by_side(outcomes)
    if compared:
        print("\nkdp-host vs squat/generic-device-plugin (GDP), same kubelet, same run")
        print(compared)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "quick": opts.quick,
        "options": opts.__dict__,
        "machine": info,
        "benchmarks": {
            o.name: {"seconds": round(o.seconds, 1), "error": o.error} for o in outcomes
        },
        "figures": [fig.as_json() for o in outcomes for fig in o.figures],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out} (log records: {log_path})")
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
