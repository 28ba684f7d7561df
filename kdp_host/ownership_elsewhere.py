"""Held IDs of another plugin whose nodes are there: not missing (hostile12 L2).

A pod that another plugin (generic-device-plugin, before a migration) handed a node under
that plugin's own ID holds the ID still; kdp-host booked it from the kubelet's checkpoint
alone (the places of the answer: `kubelet_checkpoint.take_handed`). No device of kdp-host
has that ID, and the node may lie in no device it lists (a pattern that matches no device
there, as a plain directory path does; a device that contains the node is found by
`OwnershipIndex.kept_for`). Such a device is not unplugged while its nodes are where the
answer handed them out, with the identity they had then (device number, or inode): the
held-missing check (`ResourceRuntime`) and `/devices` say so, instead of `gone` (whose
recipe deletes the pod). The paths are looked at off the loop at each PodResources answer,
one look at a time; a device is not called missing before its first look either.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .devices import Device
from .files import Offload
from .identity import Identity
from .ownership_claims import reach

Handed = Mapping[str, Identity | None]
"""What each host path of an answer reached when it was booked (None: nothing was there)."""


class CheckpointHanded(Protocol):
    """The index's record of another plugin's answers (`OwnershipIndex.checkpoint_handed`)."""

    def checkpoint_handed(
        self, resource: str, device_id: str, shared: bool = False
    ) -> tuple[Device, dict[str, Identity]] | None: ...


@dataclass
class Elsewhere:
    """One resource's held devices under another plugin's ID, and whether their nodes are
    there (the module's rule)."""

    present: frozenset[str] = frozenset()
    """The devices whose every path reached, at the last look, what it reached when booked."""
    looked: frozenset[str] = frozenset()
    """The devices the last look covered."""
    pending: frozenset[str] = frozenset()
    """The held devices booked so, as of the last answer."""
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def kept(self, missing: Collection[str]) -> set[str]:
        """Of `missing` (held, no listed device holds them), those that are not: there at the
        last look, or not looked at yet."""
        return {
            d for d in missing if d in self.present or (d in self.pending and d not in self.looked)
        }

    def look(
        self,
        index: CheckpointHanded,
        resource: str,
        held: Collection[str],
        offload: Offload,
        done: Callable[[], None],
    ) -> None:
        """A PodResources answer shows `held` devices of `resource` held: look (off the loop)
        at the paths of those booked from another plugin's answer, then call `done` (check
        again). One look at a time: an answer during one is looked at with the next."""
        wanted: dict[str, Handed] = {}
        for device in held:
            handed = index.checkpoint_handed(resource, device, shared=True)
            if handed is not None and handed[1]:
                booked, reached = handed
                paths = [n.host_path for n in booked.nodes] + [m.host_path for m in booked.mounts]
                wanted[device] = {path: reached.get(path) for path in paths}
        self.pending = frozenset(wanted)
        if not wanted:
            self.present = self.looked = frozenset()
            return
        if self._task is None or self._task.done():
            work = self._look(wanted, offload, done)
            self._task = asyncio.get_running_loop().create_task(work, name="held-elsewhere")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _look(
        self, wanted: Mapping[str, Handed], offload: Offload, done: Callable[[], None]
    ) -> None:
        try:
            present = await offload.run(functools.partial(_there, wanted))
        except Exception:  # (a file system that fails: nothing is known there, so missing)
            present = frozenset()
        self.present, self.looked = present, frozenset(wanted)
        done()


def _there(wanted: Mapping[str, Handed]) -> frozenset[str]:
    """The devices of `wanted` whose every path reaches what it reached. Blocking."""
    return frozenset(d for d, handed in wanted.items() if all(map(_same, handed.items())))


def _same(handed: tuple[str, Identity | None]) -> bool:
    """Whether a path reaches what it reached when booked (a path gone then: never)."""
    path, identity = handed
    if identity is None:
        return False
    found = reach(path)
    return found is not None and found[0] == identity
