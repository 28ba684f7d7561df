"""Running one release of a device (`release.py`): `release.command` on each use of the
device it covers as ITS Allocate handed it out (`handed_entries.releasing`), else as listed,
else as the kubelet's checkpoint says its booking was handed
(`OwnershipIndex.checkpoint_handed`); and which devices' uses not released yet were handed
what a container is handed (`owed_sharing`, `in_use_sharing`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from grpclib.const import Status

from .allocation import HookFailed, hook_values
from .config import ReleaseConfig
from .device_table import DeviceTable
from .devices import Device, physical_id
from .handed_entries import Handed, places_of, releasing, use_of, uses
from .handed_out import HandedOut
from .hooks import (
    Listed,
    PlaceCheck,
    changed_places,
    check_places,
    hook_env,
    place_changed,
    render_argv,
    run_hook,
)
from .identity import Identity
from .logs import EventLogger
from .process import CommandRunner
from .release_use import Checkpointed, DeviceUse, unknown_release


@dataclass
class ReleaseCommand:
    """A resource's `release.command`, run on one device at a time by its tracker."""

    resource: str
    config: ReleaseConfig
    commands: CommandRunner
    table: DeviceTable
    log: EventLogger
    places: PlaceCheck | None
    checkpoint: Checkpointed | None
    listed: Listed | None = None
    """Where the nodes a use was handed are listed now (a release acts on them there)."""

    async def run(self, device_id: str, use: DeviceUse, handed: Sequence[Handed]) -> None:
        """The release of each use `handed` (`acted_on`: the uses whose release is owed,
        each as its own Allocate handed it out, its paths reaching what they did then; one
        run each, in order: hostile14 N6); without one (handed out before the record knew
        it) the device as listed now, unless its record was lost
        (`handed_unknown`: not run, see `unknown_release`); not listed, what its booking from
        the kubelet's checkpoint was handed, also with its record lost (another plugin's ID,
        never listed nor handed out again: hostile11 K5). Nothing to act on: the release
        fails (the device stays owed, retried), never counted ok."""
        for one in handed:
            await self._run_on(device_id, use, one.device, one.reached)
        if handed:
            return
        devices = self.table.snapshot.devices
        listed = next((d for d in devices if d.id == device_id), None)
        booked = None if listed or not self.checkpoint else self.checkpoint(device_id)
        if use.handed_unknown and booked is None:
            message = unknown_release(self.resource, device_id)
            raise HookFailed(Status.FAILED_PRECONDITION, "unknown", message)
        device, reached = booked or (listed, None)
        if device is None:
            raise HookFailed(
                Status.FAILED_PRECONDITION,
                "invalid",
                f"{self.resource}: release of {device_id}: the device is not listed "
                "and its paths as handed out are not kept (or another pod holds them under "
                "another ID): nothing to release now; retried",
            )
        await self._run_on(device_id, use, device, reached)

    async def _run_on(
        self,
        device_id: str,
        use: DeviceUse,
        device: Device,
        reached: Mapping[str, Identity] | None,
    ) -> None:
        what, ids = f"{self.resource}: release of {device_id}:", {device_id, *use.used}
        if changed := await changed_places(self.places, ids, [device], reached):
            if (now := self._where_now(device_id, device, reached, changed)) is None:
                raise place_changed(what, changed)
            device, reached = now
            await check_places(self.places, what, ids, [device], reached)
        values = hook_values(self.resource, [device])
        values.update(use.holder_values())
        env = hook_env(self.resource, [device], values, self.config.env)
        self.log.info("release_started", device=device_id, pod=values["pod"] or "-")
        await run_hook(
            self.commands,
            what,
            render_argv(self.config.command, values),
            env,
            self.config.timeout,
        )

    def _where_now(
        self,
        device_id: str,
        device: Device,
        reached: Mapping[str, Identity] | None,
        changed: Mapping[str, str],
    ) -> tuple[Device, dict[str, Identity]] | None:
        """The device as handed out with each node whose path reaches another thing now
        (`changed`) at the path its driver lists that node at now (`listed`; issue 17,
        hostile20 F5: a reload swapped two cards' numbers): the release resets the node
        the use was handed, logged (`release_node_moved`). None: none is listed elsewhere."""
        reached = reached or {}
        astray = {n.host_path: reached[n.host_path] for n in device.nodes if n.seen in changed}
        moved = self.listed(astray) if self.listed is not None and astray else {}
        if not moved:
            return None
        for path, (listed_as, node) in sorted(moved.items()):
            self.log.info(
                "release_node_moved",
                device=device_id,
                path=path,
                now=node.host_path,
                listed_as=listed_as,
            )
        nodes = tuple(
            dataclasses.replace(n, host_path=now.host_path, seen_path=now.seen_path)
            if (now := moved.get(n.host_path, (None, None))[1]) is not None
            else n
            for n in device.nodes
        )
        d = device
        at = {moved[p][1].host_path if p in moved else p: key for p, key in reached.items()}
        return Device(
            d.id,
            d.healthy,
            nodes,
            d.numa,
            d.env,
            d.mounts,
            d.annotations,
            d.path,
            d.sysfs_path,
            d.iommu_group,
        ), at


def acted_on(handed: HandedOut, device_id: str) -> tuple[Handed, ...]:
    """The uses of the device its release acts on now (`handed_entries.releasing`; none:
    not in the record)."""
    return () if (entry := handed.entry(device_id)) is None else releasing(entry)


def _places_of_mine(handed: HandedOut, ids: Sequence[str]) -> set[object]:
    """What the uses of `ids` were handed (host paths, what they reached: `places_of`)."""
    places: set[object] = set()
    for advertised in ids:
        if (entry := handed.entry(physical_id(advertised))) is not None:
            places |= places_of(use_of(entry, advertised))
    return places


def owed_sharing(uses: Mapping[str, DeviceUse], handed: HandedOut, ids: Sequence[str]) -> list[str]:
    """The devices, not of `ids`, whose owed release acts on a host path (or what one
    reached) that a use of `ids` was handed: the container starts after it (hostile14 N6: a
    use released on its own node, which another device lists now)."""
    mine = {physical_id(advertised) for advertised in ids}
    places = _places_of_mine(handed, ids)
    return [
        device_id
        for device_id, use in uses.items()
        if use.owed
        and device_id not in mine
        and places
        and any(places & places_of(one) for one in acted_on(handed, device_id))
    ]


def in_use_sharing(
    tracked: Mapping[str, DeviceUse], handed: HandedOut, ids: Sequence[str]
) -> list[str]:
    """The devices in use (not owed: another container holds an ID of theirs) one of whose
    uses, seen gone (none of its IDs is used now) and not released (the record keeps it:
    `handed_entries.after_release` lets a released one go), was handed a host path (or what
    one reached) that a use of `ids` is handed and no live use of that device but the
    container's own has. Such a node is released only once its device is free (a shared
    device, `replicas`); no container starts with it before (hostile14 N6: the probe
    moved d0 from n0 to n1 while d0::0 held n0, and lists n0 as d1 now)."""
    places = _places_of_mine(handed, ids)
    found: list[str] = []
    for device_id, use in tracked.items() if places else ():
        if use.owed or not use.used or (entry := handed.entry(device_id)) is None:
            continue
        if not entry.earlier and not entry.ids.isdisjoint(use.used):
            continue  # (its one use is live: the common case, no set made)
        *earlier, newest = every = uses(entry)  # (a newest with no IDs: released)
        gone = [one for one in earlier if one.ids.isdisjoint(use.used)]
        gone += [newest] if newest.ids and newest.ids.isdisjoint(use.used) else []
        others = use.used.difference(ids)
        live = {place for one in every if one.ids & others for place in places_of(one)}
        if any((places_of(one) - live) & places for one in gone):
            found.append(device_id)
    return found


def owed_left(handed: HandedOut, device_id: str) -> bool:
    """Whether a use of the device is owed its release still (`Handed.owed`), once a
    release's own uses went (`handed_entries.after_release`): one seen gone meanwhile."""
    entry = handed.entry(device_id)
    return entry is not None and any(use.owed for use in uses(entry))
