"""What changed between two device lists, without a walk of either.

A driver reports the whole list every time, and each stage between it and the kubelet (the
grace period, the reporter, the ownership index's admission) used to find what changed by
one identity pass over the list: O(devices) per hot-plug, several times over. A list made
from another by changing a few entries says so instead (`Derived`): it names its base and
the IDs it added, replaced or removed, and a stage that holds the base (or an older list the
chain of bases reaches) asks `changed_between` for them in O(changed). The bases are held
weakly, so no chain of old lists is kept alive; a list that names no base (a full scan, a
glob scan, a filtered copy) makes the caller walk, as before.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Collection, Iterable, Mapping
from typing import Final

from .devices import Device
from .turns import Pace, Steps

DEPTH: Final = 8
"""Bases followed back from a list looking for the one a stage holds (a stage skips a list
now and then: a list that came while an admission ran)."""
MAX_CHANGED: Final = 4096
"""Changed IDs gathered along the bases past which a walk is as cheap (the caller walks)."""


class Derived(dict[str, Device]):
    """A device list (ID -> device) made from `base` by adding, replacing or removing the
    entries `changed` names: every other entry is the very object of `base` (None: a list
    made from nothing, which the next one can name as its base). Never changed after it is
    handed on (as every published list)."""

    __slots__ = ("__weakref__", "_base", "_healthy", "changed")

    def __init__(
        self,
        base: Mapping[str, Device] | None,
        changed: Iterable[str],
        devices: Mapping[str, Device],
    ) -> None:
        """`devices` is the new list (copied); `changed` every ID where it differs from
        `base` (an ID named that did not change costs a look, nothing else)."""
        super().__init__(devices)
        self.changed: frozenset[str] = frozenset(changed)
        self._base: weakref.ref[Mapping[str, Device]] | None = None
        self._healthy = -1
        """Its healthy devices, once counted (`healthy_count`; -1: not yet)."""
        if base is not None:
            with contextlib.suppress(TypeError):  # (a plain dict: the caller walks)
                self._base = weakref.ref(base)

    @property
    def base(self) -> Mapping[str, Device] | None:
        """The list this one was made from, while something else holds it."""
        return None if self._base is None else self._base()


def changed_between(
    before: Mapping[str, Device], after: Mapping[str, Device]
) -> Collection[str] | None:
    """The IDs whose entries may differ between `before` and `after` (added, replaced,
    removed; an ID whose entry is the same object in both may be named too), or None when
    `after` does not say (the caller walks)."""
    if after is before:
        return ()
    changed: set[str] = set()
    current: Mapping[str, Device] | None = after
    for _ in range(DEPTH):
        if not isinstance(current, Derived):
            return None
        changed |= current.changed
        if len(changed) > MAX_CHANGED:
            return None
        current = current.base
        if current is before:
            return changed
    return None


def derive(base: Derived | None, devices: Iterable[Device], pace: Pace) -> Steps[Derived]:
    """`devices` (the first of each ID) as a list made from `base`, naming the IDs whose
    entry is not the very object of `base` (added, replaced) and those it lacks (removed),
    yielding when `pace` says: a driver that makes its whole list each time (a probe's
    output, whose unchanged entries `Recall` gives back as the same objects) hands the
    stages after it a list they compare with what they hold in O(changed). The IDs `base`
    lacks are looked for only when the count says some are missing."""
    listed = Derived(base, (), {})  # (filled here, before it is handed on: no copy)
    changed: list[str] = []
    was: Mapping[str, Device] = {} if base is None else base
    kept = 0
    for device in devices:
        if pace.due():
            yield
        device_id = device.id
        if device_id in listed:
            continue
        listed[device_id] = device
        old = was.get(device_id)
        if old is not device:
            changed.append(device_id)
        if old is not None:
            kept += 1
    if kept != len(was):
        for device_id in was:
            if pace.due():
                yield
            if device_id not in listed:
                changed.append(device_id)
    listed.changed = frozenset(changed if base is not None else ())
    return listed


def same_entries(before: Mapping[str, Device], after: Mapping[str, Device]) -> bool:
    """`before == after`, comparing only the entries `after` says may differ from `before`
    (`changed_between`; a walk when it does not say)."""
    changed = changed_between(before, after)
    if changed is None:
        return before == after
    return len(before) == len(after) and all(
        before.get(device_id) == after.get(device_id) for device_id in changed
    )


def healthy_count(devices: Mapping[str, Device]) -> int:
    """How many of `devices` are healthy: a `Derived` list is counted from the nearest list
    along its bases that was counted (up to DEPTH back) and the entries that changed since
    (each list on the way keeps its count, for the next one); else by a walk."""
    if not isinstance(devices, Derived):
        return sum(1 for device in devices.values() if device.healthy)
    steps, base = _uncounted(devices)
    if base is None:
        devices._healthy = sum(1 for device in devices.values() if device.healthy)
        return devices._healthy
    count = base._healthy
    for step in reversed(steps):
        for device_id in step.changed:
            old, new = base.get(device_id), step.get(device_id)
            count += (new is not None and new.healthy) - (old is not None and old.healthy)
        step._healthy, base = count, step
    return count


def carry_count(devices: Mapping[str, Device]) -> None:
    """Count `devices` where that costs what changed (`healthy_count` from a counted list
    along its bases), keeping the count on it for a list made from it later, which may
    outlive its bases; a list that would need a walk is left as it is."""
    if isinstance(devices, Derived) and _uncounted(devices)[1] is not None:
        healthy_count(devices)


def _uncounted(devices: Derived) -> tuple[list[Derived], Derived | None]:
    """The lists from `devices` back that were not counted, and the counted list they were
    made from (None: none within DEPTH, or one gone)."""
    steps: list[Derived] = []
    current: Mapping[str, Device] | None = devices
    while isinstance(current, Derived) and current._healthy < 0 and len(steps) < DEPTH:
        steps.append(current)
        current = current.base
    return steps, current if isinstance(current, Derived) and current._healthy >= 0 else None


def changed_among(
    before: Mapping[str, Device],
    after: Mapping[str, Device],
    also: Iterable[str],
    *,
    equal_is_same: bool,
) -> Collection[str]:
    """The IDs a stage that last looked at `before` must look at in `after`: those
    `changed_between` them and those `also` names (the stage's own changed ones), in ID
    order; with `equal_is_same`, an `after` equal to `before` changed nothing. Every ID of
    `after` when it does not say what changed (`after` itself: a walk)."""
    changed = changed_between(before, after)
    if changed is not None:
        return sorted({*changed, *also})
    if equal_is_same and after == before:
        return sorted(set(also))
    return after
