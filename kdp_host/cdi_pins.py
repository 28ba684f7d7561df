"""The held entries of a resource's CDI spec file (`cdi.CdiSpecWriter`): what each booked ID
keeps, taken from the record of what its Allocate handed out (`handed_out`) and the bookings.

A container that restarts resolves its CDI names again without a new Allocate, so a booked
ID's entry keeps the device as its Allocate handed it out (`cdi_spec.Held`, rendered by
`cdi_spec.render_held`), whether the resource still lists it (`cdi`) or a reload removed the
resource or its `allocate.cdi` (`cdi_keeper`).

Such an entry is left out while a host path of it reaches another node or file than it was
handed out with (`render_held`): the path made anew, another device's node renamed over it
(`mv n1 n0`), a probe's device moved there. So the writer looks again whenever one of those
paths changes, told by the host's watcher (`HeldPaths`: the directory of each path the
entries are checked at, `cdi_spec.checked_paths`, and each directory above it, for the entry
on the way), not when a driver happens to list the change: a keeper's resource lists nothing
(a reload removed it, or turned its `allocate.cdi` off: hostile21 F2, a held name resolved to
another pod's node until the next 10 s check), and a probe lists a change at its interval.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from .allocation import cdi_device_name
from .cdi_files import spec_entries
from .cdi_spec import Held, render_held
from .config import ResourceConfig
from .devices import Snapshot, physical_id
from .handed_entries import cdi_held
from .handed_out import HandedOut
from .watch import Subscription, Watcher


def held_entries(pinned: HandedOut, booked: Callable[[str], bool]) -> Held:
    """Each booked ID's use as its Allocate handed it out (entries none of whose IDs is still
    booked are let go first), an older version's device-named uses, and the IDs withheld
    (booked, not known as handed out: left out, with the device's own name, which an older
    version may have answered)."""
    pinned.let_go(booked)
    entries = {d: h for d in pinned.devices if (h := pinned.entry(d)) is not None}
    by_id, legacy = cdi_held(entries, booked)
    withheld = pinned.withheld
    return Held(
        {i: use.device for i, use in by_id.items()},
        {i: use.reached for i, use in by_id.items()},
        frozenset({*withheld, *(physical_id(i) for i in withheld)}),
        {d: use.device for d, use in legacy.items()},
        {d: use.reached for d, use in legacy.items()},
    )


NOTHING_LISTED = Snapshot(version=-1, devices=(), advertised=(), healthy_count=0)


def held_only(resource: ResourceConfig, held: Held) -> bytes | None:
    """What the resource's spec file holds with no device listed, as a keeper's
    (`cdi_keeper`: its table lists nothing): the held entries only; None when none is
    held. A stopped writer leaves it (`cdi.CdiSpecWriter._leave`). Blocking."""
    return render_held(resource, NOTHING_LISTED, held)[0] if held else None


HeldNames = dict[str, frozenset[str] | None]
"""The CDI device name of each ID a pod holds -> the host paths this host's file gives it
(None: left out, so it fails closed), for `cdi_dirs.check_spec_dirs` (hostile21 F3)."""


def render_with_held(
    resource: ResourceConfig, snapshot: Snapshot, held: Held
) -> tuple[bytes | None, frozenset[str], HeldNames]:
    """`cdi_spec.render_held`, and the names of the held entries, each with what the file
    so rendered defines for it. Blocking (a spec with held entries is parsed back): off the
    loop."""
    content, astray = render_held(resource, snapshot, held)
    if not held or (cdi := resource.allocate.cdi) is None:
        return content, astray, {}
    mine = spec_entries(content, cdi.kind)
    keys = (*held.held, *held.withheld, *held.legacy)
    names = (cdi_device_name(resource.name, k) for k in keys)
    return content, astray, {name: mine.get(name) for name in names}


class HeldPaths:
    """Calls `changed` when an entry is made, removed or renamed at a path it follows, or at a
    directory on the way to one (or anything may have changed there: an overflow), through
    the host's `watcher` (None: nothing is followed; the writer's periodic check remains)."""

    def __init__(self, watcher: Watcher | None, changed: Callable[[], None]) -> None:
        self._watcher, self._changed = watcher, changed
        self._names: dict[str, frozenset[str]] = {}
        self._subscriptions: dict[str, Subscription] = {}

    def follow(self, paths: Iterable[str]) -> None:
        """Follow `paths` from now on (and no others): subscriptions change only where the
        names wanted in a directory did."""
        if self._watcher is None:
            return
        wanted: dict[str, set[str]] = {}
        for path in paths:
            directory, name = os.path.split(os.path.normpath(path))
            while name:
                there = wanted.setdefault(directory, set())
                if name in there:
                    break  # (and every directory above it)
                there.add(name)
                directory, name = os.path.split(directory)
        names = {d: frozenset(n) for d, n in wanted.items()}
        for directory in self._names.keys() - names.keys():
            self._subscriptions.pop(directory).cancel()
        for directory, these in names.items():
            if self._names.get(directory) != these:
                if (old := self._subscriptions.pop(directory, None)) is not None:
                    old.cancel()
                self._subscriptions[directory] = self._watcher.subscribe(
                    directory, self._heard, these, entries=True
                )
        self._names = names

    def _heard(self, _name: str | None) -> None:
        self._changed()

    def stop(self) -> None:
        for subscription in self._subscriptions.values():
            subscription.cancel()
        self._subscriptions.clear()
        self._names = {}
