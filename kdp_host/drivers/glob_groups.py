"""Glob groups: one device made of several matched paths (`glob.group`).

Each member of `glob.group` is a glob pattern with `{key}` where the group key is:
`/dev/xdma{key}_user`, `/dev/xdma{key}_c2h_*`. The paths of every member that share one key
are one device; a member without `{key}` (`/dev/vfio/vfio`) belongs to every group. A group
is listed when each of its required members matched at least one path; a group that loses a
required member is no longer found, so it turns Unhealthy at once and is dropped after the
grace period, like a vanished glob path. A missing optional member is simply not passed.

A matched directory, or any path of a member with `mount: true`, is bind-mounted; everything
else is a device node. The ID of a group is a pure function of its key (the same rule as a
one-level glob path: the key itself where it is readable, else a sanitized prefix and a
hash), so it never moves to another group.

Identity: a physical node is part of one group at most, and which group may own it follows
from the node's own path, never from which links to it exist (`_claimants`). A node that a
keyed member of another group also reaches (a symlink to another group's node) is left out
of that group and logged (`same_device`); members without `{key}` are shared on purpose.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from functools import partial
from typing import NamedTuple

from .. import rules
from ..config import GlobDriverConfig, GlobGroupMemberConfig, render_template
from ..config.handed import UNSAFE_MOUNT, NeverHanded
from ..config.model import GROUP_KEY
from ..container_paths import NO_CONFIG_MOUNTS, PATH_COLLISION
from ..devices import Device, DeviceMount, DeviceNode
from ..files import FileReader
from .base import Skipped
from .glob_cache import MatchCache
from .glob_keys import GroupMember
from .glob_paths import (
    DeviceIdentity,
    DeviceIds,
    examine,
    name_problem,
    printable_path,
)
from .glob_shared import dir_readable, numa_node, scan_notices, watch_pattern
from .scanner import DirWatch, Listed, ScanResult

INCOMPLETE = "incomplete_group"
"""The skip reason of a group that lacks a required member."""
_NEVER_HANDED = NeverHanded()
"""`/`, which no group mounts (the ownership index applies the whole rule, with the config's
paths, to every device: `config.handed`)."""


_Claim = tuple[DeviceIdentity, tuple[str, str]]
"""A node a group owns: its identity, the group's key and the path that reaches it."""


class _Memo(NamedTuple):
    """A group's device as the last scan made it, and what that depended on."""

    inputs: object
    device: Device | None
    skipped: tuple[tuple[str, Skipped], ...]
    claims: tuple[_Claim, ...]


class _Match(NamedTuple):
    matched: str
    real_path: str
    directory: bool
    identity: DeviceIdentity
    link: bool
    """The matched path is a symlink (another name for a node, like a `by-path` link)."""


_Looked = tuple[_Match, str | None] | Skipped | None
"""A matched path as a node or a directory (and the directory a symlink leads into), why
it is skipped, or None (gone)."""


def _claimants(found: dict[str, dict[int, list[_Match]]]) -> dict[DeviceIdentity, frozenset[str]]:
    """Which group keys may own each node that keyed members reach: the keys whose members
    match the node itself, else, if one key alone reaches it through links, that key; a node
    that links of several keys reach, and no key matches itself, is owned by none of them.

    So a link that appears or vanishes (udev creates `by-id` and `by-path` links after the
    node) never moves a node to another group: the groups that can own it follow from the
    node's own path, never from which other names for it exist."""
    own: dict[DeviceIdentity, set[str]] = {}
    linked: dict[DeviceIdentity, set[str]] = {}
    for key, by_member in found.items():
        for matches in by_member.values():
            for match in matches:
                (linked if match.link else own).setdefault(match.identity, set()).add(key)
    claimants = {identity: frozenset(keys) for identity, keys in own.items()}
    for identity, keys in linked.items():
        if identity not in claimants:
            claimants[identity] = frozenset(keys) if len(keys) == 1 else frozenset()
    return claimants


class GlobGroupScan:
    """The scan of the glob driver with `glob.group`: devices made of several paths."""

    def __init__(
        self,
        config: GlobDriverConfig,
        files: FileReader,
        *,
        dir_readable: Callable[[str], bool] = dir_readable,
    ) -> None:
        self.config = config
        self._files = files
        self._dir_readable = dir_readable
        self._members = tuple(GroupMember.of(m) for m in config.group)
        self._keyed = any(m.key_regex is not None for m in self._members)
        self._key_ids = DeviceIds(("/*",))
        """Group keys take the ID rule of a one-level glob path."""
        self._single_key = next(
            (
                part
                for part in reversed(config.group[0].path.split("/"))
                if part and not rules.GLOB_MAGIC.search(part)
            ),
            "group",
        )
        """The key of the one group of a config without `{key}`: the last component of the
        first member's path that is not a glob (`/dev/snd/*` -> `snd`)."""
        self._patterns = tuple(m.path for m in config.group)
        self._cache: MatchCache[tuple[str | None, _Looked]] = MatchCache(
            tuple(m.pattern for m in self._members)
        )
        self._real_bases: tuple[str, ...] = ()
        self._memo: dict[str, _Memo] = {}
        """Each group's device of the last scan, reused while nothing it depends on changed."""

    def group_id(self, key: str) -> str:
        """The ID of the group with this key: a pure function of the key and the config."""
        return self._key_ids("/" + (key if self._keyed else self._single_key))

    def scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        skipped: dict[str, Skipped] = {}
        unreadable: set[str] = set()
        real_dirs: dict[str, str] = {}
        previous = listed.devices
        real_bases = tuple(os.path.realpath(member.base) for member in self._members)
        cache = self._cache
        # What was learnt about a path depends on its member's resolved directory too.
        cache.begin(changed if real_bases == self._real_bases else None)
        self._real_bases = real_bases
        # key -> member index -> matches; members without {key} under the key "".
        found: dict[str, dict[int, list[_Match]]] = defaultdict(lambda: defaultdict(list))
        for index, member in enumerate(self._members):
            watch_pattern(member.pattern, dirs, self._dir_readable, unreadable)
            real_base = real_bases[index]
            for matched in cache.matched(index, dirs.guard):
                key, match = cache.lookup(
                    (index, matched),
                    matched,
                    partial(self._look_at, matched, member, real_base, real_dirs),
                )
                if key is None or match is None:
                    continue
                if isinstance(match, Skipped):
                    skipped[matched] = match
                    continue
                match_result, link_dir = match
                if link_dir is not None:
                    dirs.watch(link_dir)
                found[key][index].append(match_result)
        shared = found.pop("", {})
        claimants = _claimants(found) if self._keyed else {}
        keys = sorted(found) if self._keyed else [""]
        devices: dict[str, Device] = {}
        owners: dict[DeviceIdentity, tuple[str, str]] = {}
        memo: dict[str, _Memo] = {}
        shared_matches = tuple((i, tuple(ms)) for i, ms in shared.items())
        for key in keys:
            by_member = found.get(key, {})
            identities = [m.identity for ms in by_member.values() for m in ms]
            # Everything the group's device depends on: its matches (the same objects while
            # their paths are unchanged), the shared ones, who may and who does own its nodes.
            inputs = (
                tuple((i, tuple(ms)) for i, ms in by_member.items()),
                shared_matches,
                tuple(claimants.get(i) for i in identities),
                tuple(owners.get(i) for i in identities),
            )
            known = self._memo.get(key)
            if known is not None and known.inputs == inputs and self.config.numa_node_file is None:
                outcome = known
            else:
                outcome = _Memo(
                    inputs, *self._group_device(key, by_member, shared, claimants, owners, previous)
                )
            memo[key] = outcome
            skipped.update(outcome.skipped)
            owners.update(outcome.claims)
            device = outcome.device
            if device is None:
                continue
            if device.id in devices:  # only if two keys' hashes collide
                skipped[f"group {key}"] = Skipped(
                    "id_collision",
                    printable_path(key),
                    f"ID {device.id!r} already belongs to {devices[device.id].path}",
                )
                continue
            devices[device.id] = device
        cache.end()
        self._memo = memo
        return ScanResult(
            devices,
            tuple(skipped.values()),
            notices=scan_notices(bool(devices), self._patterns, unreadable),
        )

    @classmethod
    def _look_at(
        cls, matched: str, member: GroupMember, real_base: str, real_dirs: dict[str, str]
    ) -> tuple[tuple[str | None, _Looked], str | None, bool]:
        """A matched path's group key (None: not of this member's form) and what it is, for
        `MatchCache.lookup` (a bad name stays bad; a dangling link or a refused mount may
        not)."""
        key = member.key_of(matched)
        if key is None:
            return (None, None), None, True
        if why := name_problem(matched):
            return (key, Skipped("bad_name", printable_path(matched), why)), None, True
        looked = cls._examine(matched, member, real_base, real_dirs)
        if isinstance(looked, Skipped):
            return (key, looked), None, False
        return (key, looked), looked[0].real_path if looked else None, looked is not None

    @staticmethod
    def _examine(
        matched: str, member: GroupMember, real_base: str, real_dirs: dict[str, str]
    ) -> tuple[_Match, str | None] | Skipped | None:
        """A matched path as a node or a directory (and the directory a symlink leads into),
        why it is skipped, or None (gone since the glob).

        Resolved before grouping: a path that reaches its target through any symlink below
        the member's fixed directory (the leaf or a directory on the way) is a link, so it
        never takes a node from the group whose own path it is (`_claimants`). What would
        be mounted must really be inside the member's fixed directory, and never `/`: a
        directory member that is a symlink to `/` or out of the pattern's directory would
        bind-mount the host's root or anything else into the container."""
        result = examine(matched, real_dirs)
        if isinstance(result, Skipped):
            return result
        if result is not None:
            real_path, identity, directory = result.real_path, result.identity, False
            link_dir = result.link_dir
        elif os.path.isdir(matched):
            real_path = os.path.realpath(matched)
            identity, directory = ("path", real_path), True
            link_dir = os.path.dirname(real_path) if os.path.islink(matched) else None
        else:
            return None  # gone since the glob
        relative = os.path.relpath(matched, member.base)
        link = real_path != os.path.normpath(os.path.join(real_base, relative))
        if directory or member.config.mount:
            why = _NEVER_HANDED.problem(real_path)
            if why is None and not real_path.startswith(real_base.rstrip("/") + "/"):
                why = f"is outside {printable_path(real_base)}"
            if why is not None:
                where = f"its real path {printable_path(real_path)} {why}"
                return Skipped(UNSAFE_MOUNT, printable_path(matched), f"not mounted: {where}")
        return _Match(matched, real_path, directory, identity, link), link_dir

    def _group_device(
        self,
        key: str,
        by_member: dict[int, list[_Match]],
        shared: dict[int, list[_Match]],
        claimants: dict[DeviceIdentity, frozenset[str]],
        owners: dict[DeviceIdentity, tuple[str, str]],
        previous: Mapping[str, Device],
    ) -> tuple[Device | None, tuple[tuple[str, Skipped], ...], tuple[_Claim, ...]]:
        """The device of one group (None while a required member is missing), what it
        leaves out, and the nodes it claims: a pure function of its arguments.

        `claimants`: the keys that may own each node (`_claimants`); a keyed path to a node
        this key may not own is left out. `owners`: which group's path each physical node
        or directory belongs to. Only a complete group claims its paths (in key order among
        the claimants), so a stray match that forms no group never takes a node from one
        that does; a path of a keyed member that an earlier group owns, or that this group
        already has, is left out (another path to the same node is logged as `same_device`
        unless the group is incomplete anyway).
        """
        chosen: list[tuple[GlobGroupMemberConfig, _Match]] = []
        missing: list[str] = []
        duplicates: list[Skipped] = []
        mine: dict[DeviceIdentity, str] = {}
        for index, member in enumerate(self._members):
            keyed = member.key_regex is not None
            matches = by_member.get(index, []) if keyed else shared.get(index, [])
            kept = 0
            for match in matches:
                owner = mine.get(match.identity)
                if owner is None and keyed and match.identity in owners:
                    owner = owners[match.identity][1]
                if owner is None and keyed and key not in claimants[match.identity]:
                    others = sorted(claimants[match.identity])
                    owner = (
                        f"the node of group {others[0]}"
                        if others
                        else "a node that links of several groups reach (given to none)"
                    )
                if owner == match.matched:
                    continue  # the same path, matched by another member as well
                if owner is not None:
                    duplicates.append(
                        Skipped(
                            "same_device",
                            match.matched,
                            f"the same device as {owner}, listed once",
                        )
                    )
                    continue
                mine[match.identity] = match.matched
                chosen.append((member.config, match))
                kept += 1
            if not kept and not member.config.optional:
                missing.append(member.config.path)
        skipped = [(duplicate.subject, duplicate) for duplicate in duplicates]
        if not chosen:
            return None, tuple(skipped), ()
        first_path = chosen[0][1].matched
        if missing:
            incomplete = Skipped(
                INCOMPLETE,
                printable_path(f"group {key}" if self._keyed else first_path),
                f"not listed: no path for {', '.join(missing)}",
            )
            return None, ((f"group {key}", incomplete),), ()
        nodes: list[DeviceNode] = []
        mounts: list[DeviceMount] = []
        for config, match in chosen:
            name = os.path.basename(match.matched)
            container = (
                render_template(
                    config.container_path,
                    {"path": match.matched, "name": name, "key": key, "target": match.real_path},
                )
                if config.container_path
                else match.matched
            )
            # A member without {key} is in every group on purpose: a shared claim.
            every_group = self._keyed and GROUP_KEY not in config.path
            if match.directory or config.mount:
                mounts.append(
                    DeviceMount(match.real_path, container, config.read_only, every_group)
                )
            else:
                nodes.append(
                    DeviceNode(
                        match.real_path, container, config.permissions, config.optional, every_group
                    )
                )
        device_id = self.group_id(key)
        placed = Device(id=device_id, nodes=tuple(nodes), mounts=tuple(mounts))
        if collision := NO_CONFIG_MOUNTS.collision(placed):  # (the one rule: container_paths)
            refused = Skipped(
                PATH_COLLISION,
                printable_path(f"group {key}" if self._keyed else first_path),
                f"not listed: {collision}",
            )
            return None, (*skipped, (f"group {key}", refused)), ()
        claims = tuple(
            (match.identity, (key, match.matched))
            for config, match in chosen
            if GROUP_KEY in config.path
        )
        numa_skipped: dict[str, Skipped] = {}
        numa = numa_node(self.config, self._files, first_path, numa_skipped)
        device = Device(
            id=device_id, nodes=tuple(nodes), numa=numa, mounts=tuple(mounts), path=first_path
        )
        known = previous.get(device_id)
        if known is not None and known == device:
            device = known  # unchanged: keep the same object (cheap comparison of the lists)
        return device, (*skipped, *numa_skipped.items()), claims
