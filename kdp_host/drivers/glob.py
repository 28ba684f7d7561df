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

The driver is `GlobScan`, one look at the file system, run by the shared scan loop
(`scanning.py`: off the loop, watching, safety-net rescans, grace period). Attribute files
(`numaNodeFile`) are read through the FileReader (time-limited, size-capped, regular files
only).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING

from .. import rules
from ..config import GlobDriverConfig, render_template
from ..device_changes import Derived
from ..devices import Device, DeviceNode
from ..files import FileReader
from ..identity import NOTHING, PathReach, own_reach
from .base import DriverDeps, Skipped
from .glob_cache import MatchCache, leaf_pattern
from .glob_delta import Delta
from .glob_paths import (
    DeviceIdentity,
    DeviceIds,
    Found,
    assign_ids,
    examine,
    fixed_parent,
    link_parents,
    name_problem,
    printable_path,
)
from .glob_shared import dir_readable, numa_node, scan_notices, watch_pattern
from .glob_walk import matches
from .scanner import DirWatch, Listed, ScanResult, ScanSettings
from .scanning import ScanLoop

if TYPE_CHECKING:  # imported where a resource uses `glob.group` (`glob_scan`)
    from .glob_groups import GlobGroupScan

SCAN_TIMEOUT = 30.0
"""A scan slower than this (a hung file system) counts as a failure; the next waits for it."""


def glob_settings(
    config: GlobDriverConfig,
    scan_timeout: float = SCAN_TIMEOUT,
    max_matched_paths: int = rules.MAX_MATCHED_PATHS,
) -> ScanSettings:
    """How the scan loop runs a glob resource (with or without groups)."""
    return ScanSettings(
        config.rescan_interval,
        config.grace_period,
        scan_timeout,
        max_matched_paths=max_matched_paths,
        ids_name_nodes=not config.group,
    )


Looked = Found | DeviceIdentity | Skipped | None
"""What a scan keeps of a matched path (`look_at`): a device (its identity alone when the
path is its own real path, the common case: one object less per path), skipped, or nothing."""


def look_at(
    matched: str, real_dirs: dict[str, str], *, follow: bool = True
) -> tuple[Looked, str | None, bool]:
    """What a matched path is (for `MatchCache.lookup`): a device, skipped (a bad name stays
    bad; a dangling link may not), or nothing (a directory, gone; kept unless a link to a
    directory). Without `follow`, a link is skipped as `NOT_FOLLOWED` (`examine`)."""
    if why := name_problem(matched):
        return Skipped("bad_name", printable_path(matched), why), None, True
    found = examine(matched, real_dirs, follow=follow)
    if isinstance(found, Found):
        if found.real_path == matched and found.link_dir is None:
            return found.identity, matched, True
        return found, found.real_path, True
    # (a link to a directory is not kept: it dangles once the directory goes, unnamed)
    return found, None, found is None and not os.path.islink(matched)


def leaf_patterns(config: GlobDriverConfig) -> tuple[tuple[str, str], ...] | None:
    """Each pattern's (directory, leaf) when every pattern's wildcards are in its last
    component (a scan told what changed may then be a `Delta`'s), else None."""
    leaves = [leaf_pattern(pattern) for pattern in config.paths]
    return None if None in leaves else tuple(leaf for leaf in leaves if leaf is not None)


class GlobScan:
    """The glob driver's scan: every matched path that reaches a device, once per device."""

    def __init__(
        self,
        config: GlobDriverConfig,
        files: FileReader,
        *,
        dir_readable: Callable[[str], bool] = dir_readable,
    ) -> None:
        self.config = config
        self._files = files
        self._ids = DeviceIds(config.paths)
        self._dir_readable = dir_readable
        self._held: dict[DeviceIdentity, Device] = {}
        """Each device of the last scan (its ID and host path), by identity."""
        self._link_parents: tuple[str, ...] = ()
        """Directories of the links on the way to the patterns' directories (`link_parents`)."""
        self._returning: dict[DeviceIdentity, str] = {}
        """The ID of each device that vanished while still listed, by identity (see
        `assign_ids`; shared with the `Delta`, pruned by each full look)."""
        self._cache: MatchCache[Looked] = MatchCache(config.paths)
        self._leaves = leaf_patterns(config)
        """Each pattern's (directory, leaf), when a scan told what changed can be a `Delta`."""
        self._delta: Delta | None = None
        """The last answer, for a scan told what changed (None: not of that kind)."""
        self._cache_behind = False
        """Whether scans by `_delta` ran since the cache learnt (its next scan looks at all)."""

    def scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        if changed is not None and (named := self._named(listed, dirs, changed)) is not None:
            return named
        if self._cache_behind:
            changed, self._cache_behind = None, False
        return self._scan(listed, dirs, changed)

    def named_on_loop(self) -> bool:
        return self._delta is not None

    def lists_as(self, device: Device) -> bool:
        """Whether this scan would list `device` (of another config's list: `carry`) under
        its ID were it there: a pattern matches its path, and its node's path has that ID."""
        path, node = device.path, next(device.node_places(), None)
        return (
            path is not None
            and node is not None
            and self._ids(node[0]) == device.id
            and any(matches(pattern, path) for pattern in self.config.paths)
        )

    def scan_on_loop(
        self, listed: Listed, dirs: DirWatch, changed: frozenset[str]
    ) -> ScanResult | None:
        return self._named(listed, dirs, changed, follow=False)

    def _named(
        self, listed: Listed, dirs: DirWatch, changed: frozenset[str], *, follow: bool = True
    ) -> ScanResult | None:
        """The answer after the `changed` paths, by the `Delta` of the last one (None: the
        full look must answer). Without `follow`, a named path that is a link is not
        followed (its target may lie anywhere: the full look, off the loop, answers)."""
        delta = self._delta
        if delta is None:
            return None
        self._delta = None  # (kept again below if it answers: a scan that raises drops it)
        unreadable: set[str] = set()
        for pattern in self.config.paths:
            watch_pattern(pattern, dirs, self._dir_readable, unreadable)
        for parent in self._link_parents:
            dirs.watch(parent)
        counted = dirs.guard.matched
        if not unreadable:  # (else the full look notes it)
            real_dirs: dict[str, str] = {}
            change = delta.scan(
                changed,
                dirs.guard,
                lambda path: look_at(path, real_dirs, follow=follow)[0],
                self._ids,
                lambda device_id, matched, host_path: self._device(
                    device_id, matched, host_path, listed.devices, {}
                ),
                listed.devices,
            )
            if change is not None:
                self._delta, self._cache_behind = delta, True
                self._held = delta.held
                reached = change.reached
                for path in changed - reached.keys():  # (the index asks what is there now)
                    found = own_reach(path, real_dirs)
                    if found is not None and found[0][0] == NOTHING:
                        reached[path] = found
                return ScanResult(
                    change.devices,
                    change.skipped,
                    notices=scan_notices(bool(change.devices), self.config.paths, set()),
                    reached=reached,
                )
        dirs.guard.matched = counted  # (the full look counts its paths again)
        if not follow:
            self._delta = delta  # (the full look off the loop answers, from it as before)
        return None

    def _scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        config = self.config
        cache = self._cache
        cache.begin(changed)
        leaves = self._leaves
        matches: list[list[str]] = []
        simple = True
        """Every matched path its own real path (no link: see `Delta`)."""
        skipped: dict[str, Skipped] = {}
        unreadable: set[str] = set()
        real_dirs: dict[str, str] = {}
        previous = listed.devices
        seen_paths: set[str] = set()
        # Every matched path of each device, in pattern order then sorted order.
        by_identity: dict[DeviceIdentity, list[tuple[str, str]]] = {}
        for index, pattern in enumerate(config.paths):
            watch_pattern(pattern, dirs, self._dir_readable, unreadable)
            pattern_matches = cache.matched(index, dirs.guard)
            matches.append(pattern_matches)
            for matched in pattern_matches:
                if matched in seen_paths:
                    continue
                seen_paths.add(matched)
                found = cache.lookup(matched, matched, partial(look_at, matched, real_dirs))
                if found is None:
                    # (a link to a directory: what it leads to decides; a `Delta` cannot say)
                    simple = simple and not os.path.islink(matched)
                    continue
                if isinstance(found, Skipped):
                    skipped[matched] = found
                    simple = simple and found.reason == "bad_name"  # (else a link's)
                    continue
                if isinstance(found, Found):
                    simple = False
                    if found.link_dir is not None:
                        dirs.watch(found.link_dir)
                    identity, real = found.identity, found.real_path
                else:
                    identity, real = found, matched  # (its own real path)
                by_identity.setdefault(identity, []).append((matched, real))
        returning = {i: d for i, d in self._returning.items() if d in previous}
        for identity, device in self._held.items():
            if identity not in by_identity and device.id in previous:
                returning[identity] = device.id
        assigned, collided = assign_ids(by_identity, self._held, returning, self._ids)
        devices: dict[str, Device] = Derived(None, (), {})  # (a base for the next: `Delta`)
        held: dict[DeviceIdentity, Device] = {}
        reached: dict[str, PathReach] = {}
        for identity, paths in by_identity.items():
            matched = paths[0][0]
            for other, _real in paths[1:]:
                skipped[other] = Skipped(
                    "same_device", other, f"the same device as {matched}, listed once"
                )
            if identity in collided:  # (two hashes collide)
                holder = assigned[collided[identity]].device_id
                skipped[matched] = Skipped(
                    "id_collision",
                    matched,
                    f"ID {holder!r} already belongs to {by_identity[collided[identity]][0][0]}",
                )
                continue
            device_id, host_path = assigned[identity]
            device = devices[device_id] = held[identity] = self._device(
                device_id, matched, host_path, previous, skipped
            )
            if device is not previous.get(device_id):  # (the index knows a device kept)
                reached[host_path] = (identity, host_path)
        bases = {fixed_parent(pattern) for pattern in config.paths}
        self._link_parents = tuple(  # (where a link is on the way: known from the scan)
            p for base in bases if real_dirs.get(base, base) != base for p in link_parents(base)
        )
        for parent in self._link_parents:
            dirs.watch(parent)
        # Read by the next scan only (scans never overlap: the loop runs one at a time).
        self._held = held
        self._returning = {
            identity: device_id
            for identity, device_id in returning.items()
            if identity not in held and device_id not in devices
        }
        cache.end()
        if leaves and simple and not collided and config.numa_node_file is None:
            groups = {
                identity: [matched for matched, _real in paths]
                for identity, paths in by_identity.items()
                if len(paths) > 1
            }
            counts = [len(m) for m in matches]
            self._delta = Delta(
                config.paths, leaves, cache, counts, held, self._returning, groups, devices, skipped
            )
        return ScanResult(
            devices,
            tuple(skipped.values()),
            notices=scan_notices(bool(devices), config.paths, unreadable),
            reached=reached,
        )

    def _device(
        self,
        device_id: str,
        matched: str,
        host_path: str,
        previous: Mapping[str, Device],
        skipped: dict[str, Skipped],
    ) -> Device:
        config = self.config
        container = (
            render_template(
                config.container_path, {"path": matched, "name": os.path.basename(matched)}
            )
            if config.container_path
            else matched
        )
        numa = numa_node(config, self._files, matched, skipped)
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
        # (the common device whose one node is its path: no DeviceNode built)
        nodes = None if host_path == matched == container else (DeviceNode(host_path, container),)
        return Device(id=device_id, nodes=nodes, numa=numa, path=matched)


def glob_scan(
    config: GlobDriverConfig,
    files: FileReader,
    *,
    dir_readable: Callable[[str], bool] = dir_readable,
) -> GlobScan | GlobGroupScan:
    """The scan of a `glob` section: of its paths, or of its groups (`glob.group`, whose
    modules are imported only then)."""
    if config.group:
        from .glob_groups import GlobGroupScan

        return GlobGroupScan(config, files, dir_readable=dir_readable)
    return GlobScan(config, files, dir_readable=dir_readable)


class GlobDriver(ScanLoop["GlobScan | GlobGroupScan"]):
    """The `glob` driver, with or without groups: the scan loop running its scan."""

    def __init__(
        self,
        config: GlobDriverConfig,
        deps: DriverDeps,
        *,
        dir_readable: Callable[[str], bool] = dir_readable,
        scan_timeout: float = SCAN_TIMEOUT,
        max_matched_paths: int = rules.MAX_MATCHED_PATHS,
    ) -> None:
        scanner = glob_scan(config, deps.files, dir_readable=dir_readable)
        super().__init__(scanner, glob_settings(config, scan_timeout, max_matched_paths), deps)
