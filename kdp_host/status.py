"""Who holds each device: the `/devices` document and `kdp-host status`.

`/devices` (on the metrics port) is built in the HTTP thread, once per change of what it
shows (`DevicesAnswer`), from immutable pieces the event loop replaces whole: each
resource's device snapshot, the last PodResources answer, and the release trackers'
states. It names resources, device IDs, pods and fixed state words, never host paths or
command output (those are in the log).

`kdp-host status` asks a running host for `/devices` and prints a table (or the JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .devices import HEALTHY, UNHEALTHY, physical_id
from .logs import quote_text

if TYPE_CHECKING:
    from .host import Host

STATUS_TIMEOUT = 5.0
"""Seconds `kdp-host status` waits for the host's answer."""
MAX_ANSWER = 64 << 20
"""Most bytes of a `/devices` answer `kdp-host status` reads."""
MISSING = "missing"
"""The health of a device held or owed a release that the resource does not list now, or
held while a path of it reaches another node or file than handed out (`held_replaced`)."""
HELD = "held"
"""The health of a device found and held back (`device_held`: another device's claim, a
booking of another ID, a path no container is handed), with why (`heldBack`)."""

DUMP_SLICE = 256
"""List entries of `/devices` `dump_in_slices` encodes in one call of the C encoder."""


def dump_in_slices(value: Any, slice_size: int = DUMP_SLICE) -> Iterator[str]:
    """`json.dumps(value, sort_keys=True)`, in pieces: one call of the C encoder holds the
    GIL until it is done (0.5 s for 100,000 `/devices` entries, while the event loop and
    every Allocate wait), so a long list is encoded `slice_size` entries at a time and a short
    one, or an object, member by member: other threads get the GIL between two pieces."""
    if isinstance(value, dict):
        yield "{"
        for i, key in enumerate(sorted(value)):
            yield f"{', ' if i else ''}{json.dumps(str(key))}: "
            yield from dump_in_slices(value[key], slice_size)
        yield "}"
    elif isinstance(value, list) and len(value) > slice_size:
        yield "["
        for start in range(0, len(value), slice_size):
            piece = json.dumps(value[start : start + slice_size], sort_keys=True)
            yield f"{', ' if start else ''}{piece[1:-1]}"
        yield "]"
    elif isinstance(value, list):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ", "
            yield from dump_in_slices(item, slice_size)
        yield "]"
    else:
        yield json.dumps(value)


def utc(seconds: float | None) -> str | None:
    """Unix time as RFC 3339 UTC text (`2026-12-05T08:14:44Z`)."""
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def devices_document(host: Host) -> dict[str, Any]:
    """Every device of every resource with its health, holders and release state."""
    poller = host.pod_resources
    holdings = None if poller is None else poller.shown
    allocatable = None if poller is None else poller.allocatable
    if poller is None:
        pod_resources: dict[str, Any] = {"state": "off"}
    else:
        status = poller.status
        pod_resources = {"state": status.state, "lastAnswer": utc(status.last_ok)}
        if status.problem is not None:
            pod_resources["problem"] = status.problem
    resources = []
    for name, runtime in sorted(list(host.resources.items())):
        replicas, tracker = runtime.config.replicas, runtime.release
        held: dict[str, list[dict[str, Any]]] = {}
        ids: dict[str, list[str]] = {}
        if holdings is not None:
            for advertised, holders in sorted(holdings.of(name).items()):
                device_id = physical_id(advertised)
                ids.setdefault(device_id, []).append(advertised)
                held.setdefault(device_id, []).extend(
                    {
                        "namespace": h.namespace,
                        "pod": h.pod,
                        "container": h.container,
                        "since": utc(h.since),
                        **({} if h.listed else {"listed": False}),
                        **({"replica": advertised} if advertised != device_id else {}),
                    }
                    for h in holders
                )
        known = None if allocatable is None else allocatable.get(name, frozenset())
        devices = []
        listed = set()
        replaced = runtime.held_replaced(held)  # (made anew at a path: hostile14 N3)
        for device in runtime.table.snapshot.devices:
            listed.add(device.id)
            entry: dict[str, Any] = {
                "id": device.id,
                "health": HEALTHY if device.healthy else UNHEALTHY,
                "holders": held.get(device.id, []),
            }
            if device.id in replaced:  # (its pod has the node it was handed, gone now)
                entry["health"] = MISSING
            if known is not None and replicas == 1:
                entry["kubeletAllocatable"] = device.id in known
            if tracker is not None:
                entry["release"] = tracker.view(device.id)
            devices.append(entry)
        outstanding = set() if tracker is None else tracker.outstanding()
        back = host.ownership.held_now(name)
        for device_id in sorted((held.keys() | outstanding | back.keys()) - listed):
            # Held or owed a release, and not in the list the resource advertises now (gone,
            # held back, or renamed by a reload): shown until released (hostile5 H3); held
            # back (`device_held`), with why (hostile11 K5: a node a booking of another
            # plugin's ID holds).
            shown = MISSING if device_id in held or device_id in outstanding else HELD
            if host.ownership.held_in_place(name, device_id):
                shown = HELD
            entry = {"id": device_id, "health": shown, "holders": held.get(device_id, [])}
            kept = host.ownership.kept_for(name, ids.get(device_id, ()))
            if kept:  # its node, listed under another ID, is kept for it (hostile11 K6)
                entry["keptAs"] = sorted({d.id for d in kept})
                entry["health"] = HEALTHY if any(d.healthy for d in kept) else UNHEALTHY
            elif device_id in runtime.elsewhere.present:  # another plugin's (hostile12 L2)
                entry["health"] = HEALTHY
            elif runtime.elsewhere.kept((device_id,)):  # (not looked at yet: not missing)
                entry["health"] = HELD
            if device_id in replaced:  # (held back by what was made at its path: F4)
                entry["health"] = MISSING
            if (holding := back.get(device_id)) is not None:
                entry["heldBack"] = {"reason": holding.reason}
                if holding.owner.resource:  # (by that device, or that booking)
                    entry["heldBack"].update(
                        resource=holding.owner.resource, device=holding.owner.device
                    )
            if tracker is not None:
                entry["release"] = tracker.view(device_id)
            devices.append(entry)
        resources.append({"name": name, "devices": devices})
    return {"podResources": pod_resources, "resources": resources}


class DevicesAnswer:
    """The `/devices` answer, built once per change of what it shows and shared by every
    scraper (hostile4 H9: each request built and encoded it again, 0.5 s of GIL for 100,000
    devices, so two scrapers stalled every Allocate and the event loop).

    What it shows comes from pieces the event loop replaces whole (a resource's runtime and
    its snapshot, the PodResources poller's status, holdings and allocatable) or counts
    changes of (`ReleaseTracker.changes`): their identities are the generation. A request of
    a generation already built gets the bytes built for it; scrapers arriving during a build
    wait for it (one build at a time, the lock) and share it. The JSON is encoded in slices
    (`dump_in_slices`), so a build never holds the GIL for long."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._lock = threading.Lock()
        self._generation: tuple[tuple[object, ...], tuple[int, ...]] | None = None
        self._data = b""
        self.builds = 0
        """Documents built (a generation is built once, whatever the number of scrapers)."""

    def generation(self) -> tuple[tuple[object, ...], tuple[int, ...]]:
        """The pieces `/devices` shows now: objects (compared by identity) and counters."""
        poller = self._host.pod_resources
        pieces: list[object] = []
        counters: list[int] = []
        if poller is not None:
            pieces += (poller.status, poller.holdings, poller.allocatable)
            counters.append(poller.unshown)
        for name, runtime in sorted(list(self._host.resources.items())):
            pieces += (name, runtime, runtime.table.snapshot, self._host.ownership.held_now(name))
            pieces += (runtime.elsewhere.present, runtime.elsewhere.looked, runtime.replaced.found)
            tracker = runtime.release
            counters.append(-1 if tracker is None else tracker.changes)
        return tuple(pieces), tuple(counters)

    def _current(self, generation: tuple[tuple[object, ...], tuple[int, ...]]) -> bool:
        built = self._generation
        if built is None or built[1] != generation[1] or len(built[0]) != len(generation[0]):
            return False
        return all(a is b for a, b in zip(built[0], generation[0], strict=True))

    def __call__(self) -> bytes:
        """The answer's bytes; raises RuntimeError if the loop changed a map while it was
        read (rare: the caller answers 503, try again)."""
        with self._lock:
            generation = self.generation()
            if not self._current(generation):
                document = devices_document(self._host)
                self._data = ("".join(dump_in_slices(document)) + "\n").encode()
                self._generation = generation
                self.builds += 1
            return self._data


def status_rows(document: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row per (device, holder) for the table; every cell quoted where it must be."""
    from .holdings import UNLISTED  # (the command's, not a run's: a run may poll nothing)

    rows: list[tuple[str, ...]] = []
    for resource in document.get("resources", []):
        for device in resource.get("devices", []):
            release = device.get("release", {}).get("state", "-")
            holders = device.get("holders") or [None]
            back = device.get("heldBack") or {}
            for holder in holders:
                if holder is None and back:  # (held back: why, and by which booking)
                    why = [str(back[k]) for k in ("reason", "resource", "device") if k in back]
                    held, since = f"({' '.join(map(quote_text, why))})", "-"
                elif holder is None:
                    held, since = "-", "-"
                elif holder.get("listed") is False:
                    held = UNLISTED
                    since = quote_text(holder.get("since") or "-")
                else:
                    held = "/".join(
                        quote_text(holder.get(k, "")) for k in ("namespace", "pod", "container")
                    )
                    since = quote_text(holder.get("since") or "-")
                rows.append(
                    (
                        quote_text(resource.get("name", "")),
                        quote_text(device.get("id", "")),
                        quote_text(device.get("health", "")),
                        held,
                        since,
                        quote_text(release),
                    )
                )
    return rows


def print_table(document: Mapping[str, Any]) -> None:
    pod_resources = document.get("podResources", {})
    state = pod_resources.get("state", "?")
    line = f"podresources: {quote_text(state)}"
    if pod_resources.get("lastAnswer"):
        line += f", last answer {quote_text(pod_resources['lastAnswer'])}"
    if pod_resources.get("problem"):
        line += f" ({quote_text(pod_resources['problem'])})"
    print(line)
    header = ("RESOURCE", "DEVICE", "HEALTH", "HELD BY", "SINCE", "RELEASE")
    rows = status_rows(document)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def status_address(listen: str) -> str:
    """Where to reach a host listening on `listen` from this machine."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fetch_devices(address: str, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
    """GET /devices from a running host; raises OSError (or ValueError for a bad answer)."""
    import urllib.request  # only `kdp-host status` asks (a running host answers /devices)

    with urllib.request.urlopen(f"http://{address}/devices", timeout=timeout) as response:
        raw = response.read(MAX_ANSWER + 1)
    if len(raw) > MAX_ANSWER:
        raise ValueError(f"the answer is larger than {MAX_ANSWER} bytes")
    try:
        document = json.loads(raw)
    except RecursionError:
        raise ValueError("the answer is JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise ValueError("the answer is not a JSON object")
    return document


def status_command(args: argparse.Namespace, listen: str, devices_off: bool = False) -> int:
    """`devices_off`: the config read says `metrics.devices: false` (a 404 is then why)."""
    address = args.address or status_address(listen)
    try:
        document = fetch_devices(address)
    except (OSError, ValueError) as exc:
        from urllib.error import HTTPError, URLError

        reason = exc.reason if isinstance(exc, URLError) else exc
        if isinstance(exc, HTTPError) and exc.code == 404:
            reason = (
                f"{reason}: /devices is off on this host (its config has metrics.devices: false)"
                if devices_off
                else f"{reason}: this host serves no /devices (metrics.devices: false?)"
            )
        print(f"kdp-host: cannot read http://{address}/devices: {reason}", file=sys.stderr)
        return 1
    if args.format == "json":
        json.dump(document, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    try:
        print_table(document)
    except (AttributeError, TypeError, ValueError) as exc:
        print(
            f"kdp-host: http://{address}/devices is not a devices document: {exc}", file=sys.stderr
        )
        return 1
    return 0


def add_status_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument(
        "--config",
        type=str,
        default=None,
        help=config_help + " (its metrics.listen says where the host answers)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="host:port of the running host's metrics endpoint (default: from --config, "
        "else 127.0.0.1:9410)",
    )
    parser.add_argument(
        "--format", choices=("table", "json"), default="table", help="table (default) or json"
    )
