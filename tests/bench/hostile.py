"""Hostile input: what a bad or huge input costs the resources that keep serving.

Config reload: kdp-host serves a one-device resource that a pinger child calls every
millisecond (GetDevicePluginOptions); a stalled loop shows as a long round trip. The config
file is then replaced by a 1 MiB one (the ConfigMap limit), and the stall is the longest
round trip of the pings that overlap the time from the write to the reload being counted:
- "invalid": 1 MiB of list items under an unknown key (parsed and refused);
- "valid": the same resources plus one with a 1 MiB `allocate.env` (parsed and applied).

Hostile commands (a flooding stream command, a daemon-leaving probe): see hostile_drivers.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import hostile_drivers
from .harness import (
    BenchError,
    Figure,
    Options,
    glob_resource,
    helper_process,
    make_device_files,
    make_workdir,
    now,
    read_line,
    remove_tree,
)
from .latency import served_host

MS = 1000.0
CONFIG_BYTES = 1024 * 1024
_RELOADS = re.compile(r'^kdp_config_reloads_total\{result="(\w+)"\} ([0-9.e+]+)$', re.M)


def _dump(pinger: subprocess.Popen[str]) -> list[tuple[float, float]]:
    assert pinger.stdin is not None
    pinger.stdin.write("dump\n")
    pinger.stdin.flush()
    return [(float(a), float(b)) for a, b in json.loads(read_line(pinger, 30, "dump"))]


def _reloads(listen: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {result: float(count) for result, count in _RELOADS.findall(text)}


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _big_invalid(base: dict[str, Any]) -> dict[str, Any]:
    items = [f"item-{i:07d}" for i in range(CONFIG_BYTES // 14)]
    return {**base, "padding": items}


def _big_valid(base: dict[str, Any], workdir: Path, round_: int) -> dict[str, Any]:
    env = {f"VAR_{i:07d}": f"value-{round_}-{i:07d}" for i in range(CONFIG_BYTES // 44)}
    bulk = glob_resource("hostile.kdp-host.io/bulk", f"{workdir}/bulk/dev*", allocate={"env": env})
    return {**base, "resources": [*base["resources"], bulk]}


def _reload_stall(
    pinger: subprocess.Popen[str],
    config_path: Path,
    listen: str,
    data: dict[str, Any],
    result: str,
) -> float:
    before = _reloads(listen).get(result, 0.0)
    _dump(pinger)
    start = now()
    _write_atomically(config_path, data)
    deadline = time.monotonic() + 60
    while _reloads(listen).get(result, 0.0) <= before:
        if time.monotonic() > deadline:
            raise BenchError(f"the reload was not counted as {result!r} within 60 s")
        time.sleep(0.01)
    end = now()
    time.sleep(0.05)
    pings = [(sent, rtt) for sent, rtt in _dump(pinger) if sent <= end and sent + rtt >= start]
    if not pings:
        raise BenchError("no ping overlapped the reload (is the pinger running?)")
    return max(rtt for _, rtt in pings) * MS


def run(opts: Options) -> list[Figure]:
    invalid = Figure(
        "hostile: loop stall, 1 MiB invalid config reloaded",
        "ms",
        target=100.0,
        note="longest ping round trip while the file is read, parsed and refused",
    )
    valid = Figure(
        "hostile: loop stall, 1 MiB valid config reloaded",
        "ms",
        target=100.0,
        note="longest ping round trip while the file is read, parsed and applied",
    )
    workdir = make_workdir("hostile")
    try:
        make_device_files(workdir / "ping", 1)
        make_device_files(workdir / "bulk", 1)
        resources = [glob_resource("hostile.kdp-host.io/ping", f"{workdir}/ping/dev*")]
        with served_host(workdir, "kdp-hostile", resources) as served:
            config_path = served.host.config_path
            base = json.loads(config_path.read_text())
            listen = base["metrics"]["listen"]
            with helper_process(
                "pinger", "--socket", str(served.socket_path), "--interval", str(opts.ping_interval)
            ) as pinger:
                if read_line(pinger, 30, "ready line") != "ready":
                    raise BenchError("pinger did not start")
                for round_ in range(opts.repeats):
                    invalid.add(
                        _reload_stall(pinger, config_path, listen, _big_invalid(base), "invalid")
                    )
                    valid.add(
                        _reload_stall(
                            pinger, config_path, listen, _big_valid(base, workdir, round_), "ok"
                        )
                    )
                    _write_atomically(config_path, base)
                    time.sleep(0.5)
                    served.host.check_alive()
    finally:
        remove_tree(workdir)
    return [invalid, valid, *hostile_drivers.run(opts)]
