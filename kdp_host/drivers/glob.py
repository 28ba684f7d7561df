"""The `glob` driver: every existing path matching one of the patterns is one device.

Changes are seen through inotify on the patterns' parent directories (a hot-plugged node
shows up within milliseconds), with a periodic full rescan as a safety net. A path that
vanishes is reported Unhealthy at once and dropped after the grace period.
"""

from __future__ import annotations

import asyncio
import glob as globlib
import hashlib
import os
import random
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import GlobDriverConfig, render_template
from ..devices import Device, DeviceNode
from ..watch import DirSignature, Subscription, dir_signature
from .base import DeviceSink, DriverContext

MAX_ID_LENGTH = 128
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAGIC = re.compile(r"[*?[]")


def fixed_parent(pattern: str) -> str:
    """The deepest directory of `pattern` with no wildcard in it."""
    parts = pattern.split("/")[:-1]
    for index, part in enumerate(parts):
        if _MAGIC.search(part):
            parts = parts[:index]
            break
    return "/".join(parts) or "/"


def device_id_for_path(path: str, base: str = "/dev") -> str:
    """A stable, kubelet-safe ID for a matched path, relative to `base`.

    `/dev/fpga0` under `/dev` -> `fpga0`; `/dev/bus/usb/001/002` under `/dev/bus/usb` ->
    `001-002`. Inside the relative path `/` becomes `-` and unsafe characters become `_`;
    when that is lossy, or the result is too long, a short hash of the full path is
    appended, so two different paths never share an ID and a path always gets the same one.
    """
    prefix = base.rstrip("/") + "/"
    rel = path[len(prefix) :] if path.startswith(prefix) else path.lstrip("/")
    readable = _UNSAFE_ID_CHARS.sub("_", rel.replace("/", "-"))
    lossy = ("/" in rel and ("-" in rel or "_" in rel)) or readable != rel.replace("/", "-")
    if not lossy and 0 < len(readable) <= MAX_ID_LENGTH and readable not in (".", ".."):
        return readable
    digest = hashlib.sha256(path.encode()).hexdigest()[:10]
    return f"{readable[: MAX_ID_LENGTH - 11]}-{digest}"


def watch_dirs(pattern: str) -> list[str]:
    """Directories whose entries decide what `pattern` matches (inotify is not recursive)."""
    parent = os.path.dirname(pattern)
    base = fixed_parent(pattern)
    dirs = [base]
    if parent != base:
        parts = parent.split("/")
        for depth in range(len(base.rstrip("/").split("/")) + 1, len(parts) + 1):
            dirs.extend(p for p in globlib.glob("/".join(parts[:depth])) if os.path.isdir(p))
    return dirs


def _real_file_path(path: str, real_dirs: dict[str, str]) -> str | None:
    """`os.path.realpath(path)`, or None for a directory (following symlinks, as isdir does).

    One lstat per path: the real path of a non-symlink is its directory's real path (cached
    in `real_dirs` for one scan) joined with its name, and when the directory is already
    canonical the matched string itself is returned (no copy kept per device).
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = 0  # vanished since the glob: kept, as before, with a lexical real path
    if stat.S_ISLNK(mode):
        return None if os.path.isdir(path) else os.path.realpath(path)
    if stat.S_ISDIR(mode):
        return None
    parent, name = os.path.split(path)
    real_parent = real_dirs.get(parent)
    if real_parent is None:
        real_parent = real_dirs[parent] = os.path.realpath(parent)
    return path if real_parent == parent else os.path.join(real_parent, name)


RECENT_CHANGE = 2.0
"""A directory modified this recently (seconds) is rescanned even if its signature matches:
some file systems keep coarse timestamps, so a change right after a scan could hide."""
RESCAN_JITTER = 0.1
"""Spread the safety-net rescans of many resources instead of running them all at once."""


@dataclass(frozen=True)
class _ScanResult:
    devices: dict[str, Device]
    watch_dirs: frozenset[str]
    unreadable: tuple[str, ...]
    signatures: dict[str, DirSignature | None]
    """Of every watched directory, taken before globbing it."""

    def still_current(self) -> bool:
        """True if no watched directory changed since the scan (a rescan would find the same)."""
        now_ns = time.time_ns()
        for directory, before in self.signatures.items():
            now = dir_signature(directory)
            if now != before:
                return False
            if now is not None and now_ns - now[1] < RECENT_CHANGE * 1e9:
                return False
        return True


class GlobDriver:
    def __init__(
        self,
        config: GlobDriverConfig,
        ctx: DriverContext,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._ctx = ctx
        self._clock = clock
        self._vanished_since: dict[str, float] = {}
        self._known: dict[str, Device] = {}

    async def scan(self) -> list[Device]:
        result = await asyncio.to_thread(self._scan_sync)
        return sorted(result.devices.values(), key=lambda d: d.id)

    async def run(self, sink: DeviceSink) -> None:
        log = self._ctx.log
        wake = asyncio.Event()
        subscriptions: dict[str, Subscription] = {}
        last_state: tuple[bool, tuple[str, ...]] | None = None

        def on_change(_name: str | None) -> None:
            wake.set()

        result: _ScanResult | None = None
        woken = True
        try:
            while True:
                wake.clear()
                if result is None or woken or not await asyncio.to_thread(result.still_current):
                    started = self._clock()
                    result = await asyncio.to_thread(self._scan_sync)
                    if self._ctx.metrics is not None:
                        self._ctx.metrics.scan_seconds.labels(self._ctx.resource).observe(
                            self._clock() - started
                        )
                for directory in result.watch_dirs - subscriptions.keys():
                    subscriptions[directory] = self._ctx.watcher.subscribe(directory, on_change)
                for directory in subscriptions.keys() - result.watch_dirs:
                    subscriptions.pop(directory).cancel()
                matched = bool(result.devices)
                devices, next_expiry = self._merge(result.devices)
                if sink.publish(devices):
                    healthy = sum(d.healthy for d in devices.values())
                    log.info("devices_changed", healthy=healthy, unhealthy=len(devices) - healthy)
                state = (matched, result.unreadable)
                if state != last_state:
                    if not matched:
                        log.info("no_devices_match", patterns=",".join(self._config.paths))
                    for directory in result.unreadable:
                        log.warning("device_dir_unreadable", dir=directory)
                    last_state = state
                timeout = self._config.rescan_interval * random.uniform(
                    1 - RESCAN_JITTER, 1 + RESCAN_JITTER
                )
                if next_expiry is not None:
                    timeout = min(timeout, max(0.0, next_expiry - self._clock()))
                try:
                    async with asyncio.timeout(timeout):
                        await wake.wait()
                    woken = True
                except TimeoutError:
                    woken = False
        finally:
            for sub in subscriptions.values():
                sub.cancel()

    def _merge(self, present: dict[str, Device]) -> tuple[dict[str, Device], float | None]:
        """Present devices plus recently vanished ones (Unhealthy until the grace period ends)."""
        now = self._clock()
        grace = self._config.grace_period
        for device_id in present:
            self._vanished_since.pop(device_id, None)
        for device_id in self._known:
            if device_id not in present and grace > 0:
                self._vanished_since.setdefault(device_id, now)
        # `present` may be reused by a later merge (when a rescan is skipped): never mutate
        # it; copy it only when vanished devices must be added (usually: no copy at all).
        devices = dict(present) if self._vanished_since else present
        next_expiry: float | None = None
        for device_id, since in list(self._vanished_since.items()):
            expiry = since + grace
            if expiry <= now:
                del self._vanished_since[device_id]
                continue
            known = self._known[device_id]
            # Still listed from the last merge: reuse that Unhealthy copy (scans only ever
            # produce healthy devices), so a long list of vanished devices costs no copies.
            devices[device_id] = known if not known.healthy else known.with_health(False)
            next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
        self._known = devices
        return devices, next_expiry

    def _scan_sync(self) -> _ScanResult:
        config = self._config
        devices: dict[str, Device] = {}
        dirs: set[str] = set()
        unreadable: list[str] = []
        real_dirs: dict[str, str] = {}
        # Read once: `_merge` (on the event loop) replaces this dict, it never mutates it.
        previous = self._known
        signatures: dict[str, DirSignature | None] = {}
        for pattern in config.paths:
            pattern_dirs = watch_dirs(pattern)
            dirs.update(pattern_dirs)
            for directory in pattern_dirs:
                signatures.setdefault(directory, dir_signature(directory))
            unreadable.extend(
                d for d in pattern_dirs if os.path.isdir(d) and not os.access(d, os.R_OK | os.X_OK)
            )
            base = fixed_parent(pattern)
            for matched in sorted(globlib.glob(pattern)):
                host_path = _real_file_path(matched, real_dirs)
                if host_path is None:
                    continue
                device_id = device_id_for_path(matched, base)
                if device_id in devices:
                    if devices[device_id].path == matched:
                        continue
                    device_id = device_id_for_path(matched, "/")
                name = os.path.basename(matched)
                container = (
                    render_template(config.container_path, {"path": matched, "name": name})
                    if config.container_path
                    else matched
                )
                numa = self._numa_for(matched, name)
                known = previous.get(device_id)
                if (
                    known is not None
                    and known.healthy
                    and known.path == matched
                    and known.numa == numa
                    and known.nodes == (DeviceNode(host_path, container),)
                ):
                    # Unchanged since the last scan: keep the same object (a rescan then
                    # allocates nothing per device, and comparing the lists is cheap).
                    devices[device_id] = known
                    continue
                devices[device_id] = Device(
                    id=device_id,
                    nodes=(DeviceNode(host_path, container),),
                    numa=numa,
                    path=matched,
                )
        return _ScanResult(devices, frozenset(dirs), tuple(sorted(set(unreadable))), signatures)

    def _numa_for(self, path: str, name: str) -> int | None:
        if self._config.numa_node is not None:
            return self._config.numa_node
        if self._config.numa_node_file is None:
            return None
        numa_file = render_template(self._config.numa_node_file, {"path": path, "name": name})
        try:
            with open(numa_file) as f:
                node = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return node if node >= 0 else None
