"""Where kdp-host's start-up CPU goes, sampled on the CPU clock (issue 19).

    python -m tests.bench.cpu_sampler [--runs 5] [--top 50]   (--resources, --devices)

cProfile charges each Python call its own overhead, so code made of many small calls looks
far heavier than it is (100 resources' config read: ~93 ms under cProfile, ~8.6 ms alone).
This samples instead: kdp-host runs under a wrapper that takes its main thread's stack at
every tick of `ITIMER_PROF` (the process's CPU time, ~4 ms a sample with a 250 Hz kernel
tick), from exec to the kubelet's last first list (then the wrapper is told to write what
it has: SIGUSR1). Each run's samples are added up; printed: the share of samples each
function was on the stack (inclusive), then the share it was at the top of it (its own).
Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import time
from pathlib import Path

from .startup_profile import command, last_first_list, prepared, started

_SAMPLER = """
import collections, json, runpy, signal, sys
out = sys.argv.pop(1)
inclusive, own, taken = collections.Counter(), collections.Counter(), [0]

def name(frame):
    path = frame.f_code.co_filename
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/kdp_host/" in path:
        path = "kdp_host/" + path.split("/kdp_host/", 1)[1]
    elif "/lib/python3" in path:
        path = path.split("/lib/python3", 1)[1].partition("/")[2]
    return f"{path}:{frame.f_code.co_name}"

def sample(signum, frame):
    taken[0] += 1
    seen = set()
    if frame is not None:
        own[name(frame)] += 1
    while frame is not None:
        key = name(frame)
        if key not in seen:
            inclusive[key] += 1
            seen.add(key)
        frame = frame.f_back

def write(*_):
    signal.setitimer(signal.ITIMER_PROF, 0)
    with open(out + ".part", "w") as f:
        json.dump({"samples": taken[0], "inclusive": inclusive, "own": own}, f)
    import os
    os.replace(out + ".part", out)

signal.signal(signal.SIGPROF, sample)
signal.signal(signal.SIGUSR1, write)
signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
runpy.run_module("kdp_host", run_name="__main__", alter_sys=True)
"""


def sampled_run(workdir: Path, trees: list[Path], run: int) -> dict[str, object]:
    """One kdp-host start under the sampler: its samples up to the last first list."""
    script, out = workdir / "cpu_sampler.py", workdir / f"samples{run}.json"
    script.write_text(_SAMPLER)  # (a file: the command is passed on split at spaces)
    argv = [sys.executable, str(script), str(out)]
    with command(argv), started(workdir, trees, f"cs{run}") as (p, seconds):
        last_first_list(p, seconds)
        os.kill(p.kdp.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not out.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the sampler wrote nothing")
            time.sleep(0.02)
    loaded: dict[str, object] = json.loads(out.read_text())
    return loaded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--resources", type=int, default=100)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=50)
    args = parser.parse_args(argv)
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    with prepared(args.resources, args.devices) as (workdir, trees):
        for run in range(args.runs):
            got = sampled_run(workdir, trees, run)
            total += int(str(got["samples"]))
            inclusive.update(got["inclusive"])  # type: ignore[arg-type]
            own.update(got["own"])  # type: ignore[arg-type]
    load = os.getloadavg()[0]
    print(f"{args.resources} x {args.devices}, {args.runs} runs, {total} samples, load {load:.1f}")
    for title, counts in (("on the stack", inclusive), ("own", own)):
        print(f"share of samples {title}:")
        for key, count in counts.most_common(args.top):
            print(f"  {count / total * 100:5.1f} %  {key}")


if __name__ == "__main__":
    main()
