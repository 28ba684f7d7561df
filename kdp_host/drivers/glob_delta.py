"""A glob scan told what changed, in O(changed) (`Delta`): the last scan's answer kept (what
each matched path is: `MatchCache`; the devices by identity) and only the paths the watcher
named looked at again: no walk of the matched paths, and a list that says what changed
(`device_changes.Derived`), so the grace period, the reporter and the ownership index skip
their identity passes too.

It applies where the last answer depends on the named paths alone: every pattern's
wildcards in its last component (`MatchCache`'s listing rule), every matched path its own
real path (no symlink matched, none on the way), no ID collision and no `numaNodeFile`
(read again on every scan). Anything else, and a named path that would make it so (a
symlink appears, an ID is taken), hands the scan back to `GlobScan`'s full look (`scan`
answers None); the safety net's rescans are full looks too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..device_changes import Derived
from ..devices import Device
from ..identity import PathReach
from .base import Skipped
from .glob_cache import MatchCache, leaf_matches
from .glob_paths import DeviceIdentity, DeviceIds, Found
from .scanner import ScanGuard

Answer = DeviceIdentity | Skipped | None
"""What a matched path is, in a `Delta`: a device's identity (its own real path), a bad name,
or nothing (a directory, or gone)."""
Look = Callable[[str], object]
"""What a matched path is (`glob.look_at`'s answer)."""
MakeDevice = Callable[[str, str, str], Device]
"""The device of (ID, matched path, host path): the listed one when unchanged
(`GlobScan._device`)."""

SAME_DEVICE = "same_device"


@dataclass(frozen=True, slots=True)
class Change:
    """A scan's answer told what changed: the list (`Derived` from the last one), what was
    left out, what the changed devices' host paths reach."""

    devices: Mapping[str, Device]
    skipped: tuple[Skipped, ...]
    reached: dict[str, PathReach]


def same_device(other: str, matched: str) -> Skipped:
    """A matched path of a device listed under another path."""
    return Skipped(SAME_DEVICE, other, f"the same device as {matched}, listed once")


class Delta:
    """The last answer of a glob scan of leaf patterns whose matched paths are all their own
    real paths, and the scan of what the watcher named against it (`scan`). Made by a full
    scan (`GlobScan`) and kept while its scans answer; used by one scan at a time. It keeps
    nothing per path beside what the scan keeps anyway (the cache's answers, the devices)."""

    def __init__(
        self,
        patterns: Sequence[str],
        leaves: Sequence[tuple[str, str]],
        cache: MatchCache[Any],
        counts: list[int],
        held: dict[DeviceIdentity, Device],
        returning: dict[DeviceIdentity, str],
        groups: dict[DeviceIdentity, list[str]],
        devices: Mapping[str, Device],
        skipped: dict[str, Skipped],
    ) -> None:
        self._patterns = tuple(patterns)
        self._leaves = tuple(leaves)
        self._dirs = frozenset(directory for directory, _leaf in leaves)
        self._cache = cache
        self._counts = counts
        """Each pattern's matched paths (directories too), as many as the last scan's."""
        self.held = held
        """Each device by identity (`GlobScan._held`, changed in place)."""
        self._returning = returning
        """The ID of each device that vanished while listed (`GlobScan._returning`, changed
        in place)."""
        self._groups = groups
        """The matched paths of each device that has more than one, in scan order (a
        device with one is at its `path`)."""
        self.devices = devices
        """The last list (what the next `Derived` names as its base)."""
        self._skipped = skipped

    def _hits(self, path: str) -> list[int]:
        directory, name = os.path.split(path)
        return [
            i
            for i, (pattern_dir, leaf) in enumerate(self._leaves)
            if pattern_dir == directory and leaf_matches(leaf, name)
        ]

    def _order(self, path: str) -> tuple[int, str]:
        """Where `path` comes in a full scan: its first pattern's, then sorted order."""
        return self._hits(path)[0], path

    def _paths(self, identity: DeviceIdentity) -> list[str]:
        group = self._groups.get(identity)
        if group is not None:
            return group
        device = self.held.get(identity)
        return [] if device is None or device.path is None else [device.path]

    def scan(
        self,
        changed: frozenset[str],
        guard: ScanGuard,
        look: Look,
        ids: DeviceIds,
        make: MakeDevice,
        previous: Mapping[str, Device],
    ) -> Change | None:
        """The list after the `changed` paths, looked at again alone (an lstat each); None
        when the answer may depend on more (the caller looks at everything). Nothing of it
        changes unless it answers."""
        dirs, cache = self._dirs, self._cache
        named: dict[str, list[int]] = {}
        for path in changed:
            if path in dirs or any(d.startswith(path + "/") for d in dirs):
                return None  # a pattern's directory (or one above it) replaced
            if os.path.dirname(path) not in dirs:
                return None  # (not a directory this answer watches)
            hits = self._hits(path)
            if hits:
                named[path] = hits
        # Look first; nothing changes until every named path is known to fit.
        counts = list(self._counts)
        looked: dict[str, Answer] = {}
        present: dict[str, bool] = {}
        for path, hits in named.items():
            exists = present[path] = os.path.lexists(path)
            for i in hits:
                counts[i] += exists - cache.was_matched(path)
            answer = look(path) if exists else None
            if answer is None and exists and os.path.islink(path):
                return None  # a link to a directory
            if isinstance(answer, Found) or (
                isinstance(answer, Skipped) and answer.reason != "bad_name"
            ):
                return None  # a symlink, or a path that is not its real path
            looked[path] = answer  # type: ignore[assignment]
        for i, count in enumerate(counts):
            if count != self._counts[i]:
                guard.match(self._patterns[i], count)
        touched: set[DeviceIdentity] = set()
        for path, answer in looked.items():
            old = cache.kept(path)
            if old == answer:
                continue
            if old is not None and not isinstance(old, Skipped):
                touched.add(old)
            if answer is not None and not isinstance(answer, Skipped):
                touched.add(answer)
        # The touched devices' paths now, and their IDs (the held ones first, so that a
        # newcomer never takes one: as `assign_ids`).
        held = self.held
        paths_now: dict[DeviceIdentity, list[str]] = {}
        for identity in touched:
            paths = [p for p in self._paths(identity) if looked.get(p, identity) == identity]
            paths += [p for p, a in looked.items() if a == identity and p not in paths]
            paths_now[identity] = sorted(paths, key=self._order)
        freed = {held[t].id for t in touched if t in held and not paths_now[t]}
        taken: set[str] = set()
        assigned: dict[DeviceIdentity, tuple[str, str]] = {}
        for identity in sorted(touched, key=lambda t: t not in held):
            paths = paths_now[identity]
            if not paths:
                continue
            kept = held.get(identity)
            if kept is not None:
                host_path = kept.nodes[0].host_path
                assigned[identity] = (kept.id, host_path if host_path in paths else min(paths))
                continue
            back = self._returning.get(identity)
            wanted = (back if back in previous else None, ids(min(paths)))
            device_id = next(
                (
                    w
                    for w in wanted
                    if w is not None and w not in taken and (w not in self.devices or w in freed)
                ),
                None,
            )
            if device_id is None:
                return None  # its path's ID is another's: the full look (`assign_ids`)
            taken.add(device_id)
            assigned[identity] = (device_id, min(paths))
        # Everything fits: the new answer.
        self._counts = counts
        devices = Derived(self.devices, (), self.devices)
        skipped = self._skipped
        changed_ids: set[str] = set()
        reached: dict[str, PathReach] = {}
        for path, answer in looked.items():
            if isinstance(answer, Skipped):
                skipped[path] = answer
            elif path in skipped and skipped[path].reason != SAME_DEVICE:
                del skipped[path]
            cache.learn(path, answer, present[path], own=not isinstance(answer, Skipped | None))
        for identity in paths_now:  # (all out first: a newcomer may take a freed ID)
            for other in self._groups.pop(identity, [])[1:]:
                skipped.pop(other, None)
            gone = held.pop(identity, None)
            if gone is not None:
                changed_ids.add(gone.id)
                del devices[gone.id]
                self._returning[identity] = gone.id
        for identity, paths in paths_now.items():
            if not paths:
                continue
            if len(paths) > 1:
                self._groups[identity] = paths
            matched = paths[0]
            for other in paths[1:]:
                skipped[other] = same_device(other, matched)
            device_id, host_path = assigned[identity]
            self._returning.pop(identity, None)
            device = held[identity] = devices[device_id] = make(device_id, matched, host_path)
            changed_ids.add(device_id)
            if device is not previous.get(device_id):  # (the index knows a device kept)
                reached[host_path] = (identity, host_path)
        devices.changed = frozenset(changed_ids)
        self.devices = devices
        return Change(devices, tuple(skipped.values()), reached)
