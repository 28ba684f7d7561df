"""Running one release of a device (`release.py`): `release.command` on the device as its
Allocate handed it out, else as listed, else as the kubelet's checkpoint says its booking
was handed (`OwnershipIndex.checkpoint_handed`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from grpclib.const import Status

from .allocation import HookFailed, hook_values
from .config import ReleaseConfig
from .device_table import DeviceTable
from .handed_entries import Handed
from .hooks import PlaceCheck, check_places, hook_env, render_argv, run_hook
from .logs import EventLogger
from .process import CommandRunner
from .release_use import Checkpointed, DeviceUse, unknown_release
from .run_env import HostEnv


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
    host_env: HostEnv = field(init=False)
    """Keeps the device's own loader variables from the command (`run_env`)."""

    def __post_init__(self) -> None:
        self.host_env = HostEnv(self.log)

    async def run(self, device_id: str, use: DeviceUse, handed: Handed | None) -> None:
        """The release of what the Allocate handed out (`handed`, taken from the record when
        the release was owed: its paths must reach what they did then); without it (handed
        out before the record knew it) the device as listed now, unless its record was lost
        (`handed_unknown`: not run, see `unknown_release`); not listed, what its booking from
        the kubelet's checkpoint was handed, also with its record lost (another plugin's ID,
        never listed nor handed out again: hostile11 K5). Nothing to act on: the release
        fails (the device stays owed, retried), never counted ok."""
        devices = () if handed else self.table.snapshot.devices
        listed = next((d for d in devices if d.id == device_id), None)
        booked = None if handed or listed or not self.checkpoint else self.checkpoint(device_id)
        if handed is None and use.handed_unknown and booked is None:
            message = unknown_release(self.resource, device_id)
            raise HookFailed(Status.FAILED_PRECONDITION, "unknown", message)
        device, reached = (handed.device, handed.reached) if handed else booked or (listed, None)
        if device is None:
            raise HookFailed(
                Status.FAILED_PRECONDITION,
                "invalid",
                f"{self.resource}: release of {device_id}: the device is not listed "
                "and its paths as handed out are not kept (or another pod holds them under "
                "another ID): nothing to release now; retried",
            )
        what = f"{self.resource}: release of {device_id}:"
        await check_places(self.places, what, {device_id, *use.used}, [device], reached)
        values = hook_values(self.resource, [device])
        values.update(use.holder_values())
        env = hook_env(self.host_env, self.resource, [device], values, self.config.env)
        self.log.info("release_started", device=device_id, pod=values["pod"] or "-")
        await run_hook(
            self.commands,
            what,
            render_argv(self.config.command, values),
            env,
            self.config.timeout,
        )
