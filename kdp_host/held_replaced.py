"""Held devices made anew at their paths: `replaced`, missing (hostile14 N3).

A device a pod holds whose host path reaches another node or file now than the Allocate
handed out (`Handed.reached`): a char driver reloaded with a dynamic major, another device
enumerated under that name, a file or directory made anew there. The pod's container has
the old node (and its cgroup rule), which reaches nothing now, while the resource lists the
new one under the held ID, healthy. Such a device is missing, state `replaced`, for the
held-missing check (`ResourceRuntime`: `kdp_devices_held_missing` and its
`held_device_missing` line) and for `/devices`, which both ask `Replaced.of`, until no pod
holds the ID (the new node is then advertised as any). The rule is the one a held CDI entry
is left out by (`ownership_canonical.strays`, through `reaches_another`), where something is
found: nothing there is `gone` or `unhealthy` as before, a path whose answer is not known
(hung, unresolvable) is not called replaced.

Where kdp-host sees each path (`DeviceNode.seen`: a node below a sysfs `devRoot`, as the
Allocate checked it), by identity (a device number, an inode: the same node through another
path or a link is the one handed out), a held device is looked at:
- listed now: at each path of the listed device the record has, and at each path of the
  record the listed device no longer has (hostile16 F2, F3: a node that left the device),
  where nothing is a node gone too (the pod has it; the list will never say so);
- not listed (held back by another's claim: hostile15 F4, another device's node made at its
  path): at each path of the record.
Looked at off the loop at each PodResources answer and each change of the list while a pod
holds a device, one look at a time (asked during one: looked at again after it, with what
was asked last); a result counts while the device's record is the one looked at (an
Allocate since handed it out anew).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from .devices import Device
from .files import Offload
from .handed_entries import Handed
from .identity import NOTHING, Identity
from .ownership_canonical import checked_reach, reaches_another, strays

Entry = Callable[[str], Handed | None]
"""A resource's record of what each device was handed out as (`HandedOut.entry`)."""
Paths = Mapping[str, Identity]
"""Where kdp-host sees each path -> what it reached when handed out."""
Wanted = Mapping[str, tuple[Handed, Paths, Paths]]
"""Device -> its record, the paths of the listed device, those it no longer has."""


@dataclass
class Replaced:
    """One resource's held devices made anew at a path (the module's rule)."""

    found: Mapping[str, Handed] = field(default_factory=dict)
    """The devices replaced at the last look, with the record looked at (replaced whole when
    it changes: `/devices` tells a new one by its identity)."""
    _asked: Wanted | None = field(default=None, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def of(self, devices: Iterable[str], entry: Entry) -> set[str]:
        """Of `devices` (held), those replaced at the last look, handed out as looked at."""
        found = self.found
        return {d for d in devices if (h := found.get(d)) is not None and entry(d) is h}

    def look(
        self,
        listed: Callable[[str], Device | None],
        held: Collection[str],
        entry: Entry,
        offload: Offload,
        done: Callable[[], None],
    ) -> None:
        """Look (off the loop) at the devices a pod holds (`held`; as `listed` gives them
        where the list has them, else as recorded), then call `done` (check again) if what
        is found changed; the caller checks after the call. `listed` is asked about the held
        devices only: a long list is not walked at each PodResources answer."""
        wanted: dict[str, tuple[Handed, Paths, Paths]] = {}
        for device_id in held:
            handed = entry(device_id)
            if handed is None:
                continue
            recorded = seen_reached(handed.device, handed.reached)
            device = listed(device_id)
            paths = recorded if device is None else seen_reached(device, handed.reached)
            left = {at: i for at, i in recorded.items() if at not in paths}
            if paths or left:
                wanted[device_id] = (handed, paths, left)
        idle = self._task is None or self._task.done()
        if not wanted and idle:
            if self.found:
                self.found = {}  # (no held device recorded: none replaced; the caller checks)
            return
        self._asked = wanted
        if idle:
            work = self._look(offload, done)
            self._task = asyncio.get_running_loop().create_task(work, name="held-replaced")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _look(self, offload: Offload, done: Callable[[], None]) -> None:
        while (wanted := self._asked) is not None:
            self._asked = None
            try:
                found = await offload.run(functools.partial(_replaced, wanted)) if wanted else {}
            except Exception:  # (a file system that fails: nothing known replaced)
                found = {}
            if found != self.found:
                self.found = found
                done()


def seen_reached(device: Device, reached: Mapping[str, Identity]) -> dict[str, Identity]:
    """Where kdp-host sees each host path of `device` that `reached` has (a node at `seen`,
    a mount at its host path: `Device.checked_at`), with what that path reached when
    handed out."""
    return {at: reached[path] for path, at in device.checked_at().items() if path in reached}


def _replaced(wanted: Wanted) -> dict[str, Handed]:
    """The devices of `wanted` a path of which reaches another node or file now. Blocking."""
    return {
        device: handed
        for device, (handed, paths, left) in wanted.items()
        if any(reaches_another(path, identity) for path, identity in paths.items())
        or any(left_behind(path, identity) for path, identity in left.items())
    }


def left_behind(path: str, handed: Identity) -> bool:
    """Whether `path`, handed out with `handed` and no longer a path of the device listed
    under its ID, reaches nothing now or another node or file (not what is not known: as
    `reaches_another`). Blocking."""
    now = checked_reach(path)
    return (
        now is not None
        and not isinstance(now, str)
        and (now[0][0] == NOTHING or strays(now, handed))
    )
