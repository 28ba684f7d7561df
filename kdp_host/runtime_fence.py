"""A resource runtime's waits on the host's `CheckpointReads`: the `protocol.kept.Fence` its
DevicePlugin service is given (split out of `resource`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from grpclib.const import Status

from .checkpoint_reads import CheckpointReads
from .protocol.refusal import refusal


@dataclasses.dataclass(frozen=True)
class RuntimeFence:
    """A runtime's waits on the host's `CheckpointReads` (`protocol.kept.Fence`)."""

    name: str
    """The resource's."""
    reads: CheckpointReads
    report: Callable[[str | None], None]
    """Why the resource is not ready for the checkpoint (None: no longer), for /readyz."""
    check_held: Callable[[], None]
    """Check the held devices against the current list."""
    refused: Callable[[str], None]
    """An Allocate refused while the checkpoint cannot be read (why): counted and logged."""

    async def listing(self) -> None:
        """The first list waits for a read of the kubelet's checkpoint (while one is due);
        the held devices are checked then (not while another plugin's IDs are unbooked)."""
        held = self.reads.holds_list(self.name)
        await self.reads.listing(self.name, self.report)
        if held:
            self.check_held()

    async def allocating(self) -> None:
        """Raises the GRPCError (UNAVAILABLE) that refuses the Allocate while the kubelet's
        checkpoint cannot be read, or a write of it made before is not looked at in time."""
        why = await self.reads.allocating(self.name)
        if why is None:
            return
        self.refused(why)
        raise refusal(Status.UNAVAILABLE, why)
