"""What the ownership index's tests set up again and again, in one place: a resolver of
made-up claims (`FakeNodes`: device numbers without root), a device of one node (`node`),
and an index with each resource's devices attached and published (`indexed`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.files import Offload
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_claims import NOTHING, ClaimKey, Reached, Resolver
from kdp_host.watch import Watcher


class FakeNodes:
    """The index's resolver over a path -> claim table the test edits (`nodes`): each path
    its own real path unless `reals` names another (a link on the way). A path not in the
    table is no path (None), or with `nothing`, a path where nothing is (claimed by its
    text, as `ownership_claims.missing` does). `resolved`: every path asked, in order."""

    def __init__(
        self,
        nodes: Mapping[str, ClaimKey],
        reals: Mapping[str, str] | None = None,
        *,
        nothing: bool = False,
    ) -> None:
        self.nodes = dict(nodes)
        self.reals = dict(reals or {})
        self.nothing = nothing
        self.resolved: list[str] = []

    def __call__(self, path: str) -> Reached | None:
        self.resolved.append(path)
        key = self.nodes.get(path)
        if key is None:
            return ((NOTHING, path), path) if self.nothing else None
        return key, self.reals.get(path, path)


def node(path: str, device_id: str | None = None) -> Device:
    """A device of one node at `path` (its ID: the path's last name)."""
    return Device(device_id or path.rsplit("/", 1)[-1], nodes=(DeviceNode(path, path),), path=path)


async def indexed(
    devices: Mapping[str, Iterable[Device]],
    resolve: Resolver | None = None,
    *,
    watcher: Watcher | None = None,
    offload: Offload | None = None,
) -> tuple[OwnershipIndex, dict[str, DeviceTable]]:
    """An index resolving through `resolve` (the real one: None), on `watcher`, with each
    resource's `devices` attached and published, settled (`quiet`); and their tables."""
    index = OwnershipIndex(resolve=resolve, offload=offload)
    if watcher is not None:
        index.watch(watcher)
    tables = {name: DeviceTable() for name in devices}
    for name, listed in devices.items():
        index.attach(name, tables[name].publish, get_logger().bind(resource=name))
        index.publish(name, {device.id: device for device in listed})
    await index.quiet()
    return index, tables
