"""The `glob` driver: every existing path matching one of the patterns is one device.

Changes are seen through inotify on the patterns' directories (and on the directories that
matched symlinks point into), so a hot-plugged node shows up within milliseconds, with a
periodic full rescan as a safety net. A path that vanishes is reported Unhealthy at once and
dropped after the grace period.

One physical device is advertised once, whatever the patterns (identity and IDs:
`glob_paths.py`). Its ID and host path come from its canonical path (the real node), so
every matched path that reaches it (the node, a `by-id` link) gives the same ID, and a link
that appears or vanishes never advertises it a second time under another ID. Of the
matched paths that reach one device, the first pattern's (then the first in sorted order)
gives `{path}` and `{name}`; the others are skipped and logged (`same_device`).

A scan runs on a daemon thread (a hung file system cannot keep the host from exiting), and
attribute files (`numaNodeFile`) are read through the FileReader (time-limited, size-capped,
regular files only).
"""

from __future__ import annotations

import asyncio
import glob as globlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import GlobDriverConfig, render_template
from ..devices import Device, DeviceNode
from ..files import FileReadError
from ..watch import DirSignature, Subscription, dir_signature
from .base import DriverDeps, DriverError, Notifier, Skipped
from .glob_paths import (
    DeviceIdentity,
    DeviceIds,
    canonical_path,
    examine,
    name_problem,
    printable_path,
    watch_dirs,
)

FAILURE_THRESHOLD = 3
"""Failed scans in a row (an I/O error, a scan that hangs) before every device is Unhealthy."""
SCAN_TIMEOUT = 30.0
"""A scan slower than this (a hung file system) counts as a failure; the next waits for it."""
RECENT_CHANGE = 2.0
"""A directory modified this recently (seconds) is rescanned even if its signature matches:
some file systems keep coarse timestamps, so a change right after a scan could hide."""


def dir_readable(directory: str) -> bool:
    return os.access(directory, os.R_OK | os.X_OK)


RESCAN_JITTER = 0.1
"""Spread the safety-net rescans of many resources instead of running them all at once."""


async def wait_for_change(
    wake: asyncio.Event, interval: float, next_expiry: float | None, clock: Callable[[], float]
) -> bool:
    """Wait for a watched change, the jittered safety-net rescan or the next grace expiry,
    whichever comes first: True when a change woke it."""
    timeout = interval * random.uniform(1 - RESCAN_JITTER, 1 + RESCAN_JITTER)
    if next_expiry is not None:
        timeout = min(timeout, max(0.0, next_expiry - clock()))
    try:
        async with asyncio.timeout(timeout):
            await wake.wait()
    except TimeoutError:
        return False
    return True


@dataclass(frozen=True)
class _ScanResult:
    devices: dict[str, Device]
    skipped: tuple[Skipped, ...]
    watch_dirs: frozenset[str]
    unreadable: tuple[str, ...]
    signatures: dict[str, DirSignature | None]
    """Of every watched directory, taken before looking into it."""

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
        deps: DriverDeps,
        *,
        dir_readable: Callable[[str], bool] = dir_readable,
        scan_timeout: float = SCAN_TIMEOUT,
    ) -> None:
        self._config = config
        self._deps = deps
        self._ids = DeviceIds(config.paths)
        self._dir_readable = dir_readable
        self._scan_timeout = scan_timeout
        self._vanished_since: dict[str, float] = {}
        self._known: dict[str, Device] = {}
        self._pending_scan: asyncio.Future[_ScanResult] | None = None

    async def scan(self) -> list[Device]:
        result = await self._scan()
        return sorted(result.devices.values(), key=lambda d: d.id)

    async def _scan(self) -> _ScanResult:
        """One scan on a daemon thread; a scan still stuck from last time is waited for
        again rather than started twice. Raises DriverError('io')."""
        if self._pending_scan is None:
            self._pending_scan = asyncio.ensure_future(self._deps.threads.run(self._scan_sync))
        scan = self._pending_scan
        try:
            async with asyncio.timeout(self._scan_timeout):
                result = await asyncio.shield(scan)
        except TimeoutError:
            raise DriverError(
                "io", f"scan did not finish within {self._scan_timeout:g}s (a hung file system?)"
            ) from None
        except OSError as exc:
            self._pending_scan = None
            raise DriverError("io", f"scan failed: {exc}") from None
        self._pending_scan = None
        return result

    async def run(self, notifier: Notifier) -> None:
        log = self._deps.log
        clock = self._deps.clock
        threads = self._deps.threads
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
                if result is None or woken or not await threads.run(result.still_current):
                    started = clock()
                    try:
                        result = await self._scan()
                    except DriverError as exc:
                        notifier.failure(exc)
                        result = None
                    notifier.scanned(clock() - started)
                if result is not None:
                    for directory in result.watch_dirs - subscriptions.keys():
                        subscriptions[directory] = self._deps.watcher.subscribe(
                            directory, on_change
                        )
                    for directory in subscriptions.keys() - result.watch_dirs:
                        subscriptions.pop(directory).cancel()
                    devices, next_expiry = self._merge(result.devices)
                    notifier.update(devices, result.skipped)
                    state = (bool(result.devices), result.unreadable)
                    if state != last_state:
                        if not result.devices:
                            log.info("no_devices_match", patterns=",".join(self._config.paths))
                        for directory in result.unreadable:
                            log.warning("device_dir_unreadable", dir=directory)
                        last_state = state
                else:
                    next_expiry = None
                woken = await wait_for_change(
                    wake, self._config.rescan_interval, next_expiry, clock
                )
        finally:
            for sub in subscriptions.values():
                sub.cancel()

    def _merge(self, present: dict[str, Device]) -> tuple[dict[str, Device], float | None]:
        """Present devices plus recently vanished ones (Unhealthy until the grace period ends)."""
        now = self._deps.clock()
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
        skipped: dict[str, Skipped] = {}
        dirs: set[str] = set()
        unreadable: list[str] = []
        real_dirs: dict[str, str] = {}
        # Read once: `_merge` (on the event loop) replaces this dict, it never mutates it.
        previous = self._known
        signatures: dict[str, DirSignature | None] = {}
        seen_paths: set[str] = set()
        # Every matched path of each device, in pattern order then sorted order.
        by_identity: dict[DeviceIdentity, list[tuple[str, str]]] = {}
        for pattern in config.paths:
            pattern_dirs = watch_dirs(pattern)
            dirs.update(pattern_dirs)
            for directory in pattern_dirs:
                signatures.setdefault(directory, dir_signature(directory))
            unreadable.extend(
                d for d in pattern_dirs if os.path.isdir(d) and not self._dir_readable(d)
            )
            for matched in sorted(globlib.glob(pattern)):
                if matched in seen_paths:
                    continue
                seen_paths.add(matched)
                if why := name_problem(matched):
                    skipped[matched] = Skipped("bad_name", printable_path(matched), why)
                    continue
                found = examine(matched, real_dirs)
                if found is None:
                    continue
                if isinstance(found, Skipped):
                    skipped[matched] = found
                    continue
                if found.link_dir is not None and found.link_dir not in dirs:
                    dirs.add(found.link_dir)
                    signatures.setdefault(found.link_dir, dir_signature(found.link_dir))
                by_identity.setdefault(found.identity, []).append((matched, found.real_path))
        devices: dict[str, Device] = {}
        for paths in by_identity.values():
            canonical = canonical_path(paths)
            matched = paths[0][0]
            for other, _real in paths[1:]:
                skipped[other] = Skipped(
                    "same_device", other, f"the same device as {matched}, listed once"
                )
            device_id = self._ids(canonical)
            if device_id in devices:  # only if two paths' hashes collide
                skipped[matched] = Skipped(
                    "id_collision",
                    matched,
                    f"ID {device_id!r} already belongs to {devices[device_id].path}",
                )
                continue
            devices[device_id] = self._device(device_id, matched, canonical, previous, skipped)
        return _ScanResult(
            devices,
            tuple(skipped.values()),
            frozenset(dirs),
            tuple(sorted(set(unreadable))),
            signatures,
        )

    def _device(
        self,
        device_id: str,
        matched: str,
        host_path: str,
        previous: dict[str, Device],
        skipped: dict[str, Skipped],
    ) -> Device:
        config = self._config
        name = os.path.basename(matched)
        container = (
            render_template(config.container_path, {"path": matched, "name": name})
            if config.container_path
            else matched
        )
        numa = self._numa_for(matched, name, skipped)
        known = previous.get(device_id)
        if (
            known is not None
            and known.healthy
            and known.path == matched
            and known.numa == numa
            and known.has_only_node(host_path, container)
        ):
            # Unchanged since the last scan: keep the same object (a rescan then
            # allocates nothing per device, and comparing the lists is cheap).
            return known
        return Device(
            id=device_id, nodes=(DeviceNode(host_path, container),), numa=numa, path=matched
        )

    def _numa_for(self, path: str, name: str, skipped: dict[str, Skipped]) -> int | None:
        if self._config.numa_node is not None:
            return self._config.numa_node
        if self._config.numa_node_file is None:
            return None
        numa_file = render_template(self._config.numa_node_file, {"path": path, "name": name})
        try:
            data = self._deps.files.read(numa_file)
        except FileReadError as exc:
            skipped[numa_file] = Skipped(exc.reason, printable_path(numa_file), str(exc))
            return None
        if data is None:
            return None
        try:
            node = int(data.strip())
        except ValueError:
            return None
        return node if node >= 0 else None
