"""The CDI entries of a resource a reload removed while the kubelet still holds its devices.

A container of a pod that holds such a device resolves its CDI name (`<kind>=<resource>:
<device>`) again when it restarts, without a new Allocate: the name must keep resolving to
what that Allocate handed out for as long as the kubelet has the ID booked. So when a reload
removes a resource with `allocate.cdi` whose record (`handed_out`) still keeps devices, the
supervisor starts a *keeper* for it once its runtime stopped: a `cdi.CdiSpecWriter` of the
old config on an empty device table (`retired`), which writes the resource's own spec file
(same path, same per-instance owner file and lease, so one host instance writes it) with the
held devices only. Its entries go as their bookings end (the record lets them go at each
PodResources answer and each sync); with none left the file is removed and the keeper ends.
A resource of that name that comes back waits for its keeper to stop first (one writer per
file), then writes the file itself.
"""

from __future__ import annotations

import asyncio
import functools

from .config import ResourceConfig
from .device_table import DeviceTable
from .services import HostServices


def keep_held_entries(
    config: ResourceConfig, services: HostServices, after: asyncio.Task[None] | None
) -> asyncio.Task[None] | None:
    """The keeper of removed `config`'s held CDI entries, started once `after` (its runtime)
    ended; None when it has no CDI or no held device."""
    handed = services.handed.of(config.name)
    if config.allocate.cdi is None or not (handed.devices or handed.withheld):
        return None
    from .cdi import CdiSpecWriter

    table = DeviceTable(replicas=config.replicas)
    table.publish([])  # it lists nothing: only the held devices are written
    log = services.log.bind(resource=config.name, component="cdi-keeper")
    writer = CdiSpecWriter(
        config,
        table,
        log,
        instance=services.instance_id,
        watcher=services.watcher,
        offload=services.offload,
        booked=functools.partial(services.ownership.is_booked, config.name),
        pinned=handed,
        retired=True,
        spec_dirs=None if services.cdi_dirs is None else services.cdi_dirs(),
    )

    async def keep() -> None:
        if after is not None:
            try:
                await asyncio.wait({after})
            except asyncio.CancelledError:
                # the resource came back and waits for this task: its old runtime (which
                # removes the file as it stops) must be gone first
                await asyncio.wait({after})
                raise
        log.info("cdi_held_entries_kept", held=len(handed.devices) + len(handed.withheld))
        await writer.run()
        log.info("cdi_held_entries_gone")

    return asyncio.create_task(keep(), name=f"cdi-keeper:{config.name}")
