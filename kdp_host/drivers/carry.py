"""What a resource's driver hands its successor: the devices its list has missing.

A resource restarts with a new driver when a reload changes it (an `allocate.env`, its
`gracePeriod`: any setting) or after a crash. The new driver's first scan lists only what is
present, so without this a device missing within its grace period would be dropped at once,
and with it what rests on its being listed (its identity's claim wherever its node turns up:
`ownership_lingering._device_missing`; issue 17, hostile28 G3: the node moved into the
resource's `allocate.mounts` source went to every new pod). The grace period is the
operator's promise that a vanished device may come back as itself; a restart does not end it.

So the new driver's list (`grace.Tracker.carry`) inherits the old one's missing entries,
each counted from when it went missing with the new `gracePeriod` (a reload that shortens it
past that time drops the device at once), where the new config lists the device under the
same ID: all of them, and the nodes its present devices lost, when its driver section is the
old one but for its timing (`same_scan`); else, for a glob of paths, each one a pattern still
matches whose node's path still has that ID (`GlobScan.lists_as`). A device the reload renames
or no longer matches is not carried: as at a start, it is not listed (what a pod holds under
its old ID stays booked). A start of kdp-host carries nothing: no list is kept on disk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..devices import Device
from ..logs import EventLogger
from .base import Driver
from .grace import Missing
from .scanning import ScanLoop

if TYPE_CHECKING:
    from ..config import DriverConfig

TIMING = frozenset({"grace_period", "rescan_interval", "scan_timeout"})
"""The driver settings that change when a scan looks, not what it lists under which ID."""


@runtime_checkable
class ListsAs(Protocol):
    """A scan that can say of a device of another config's list whether it would list it
    under that ID (`GlobScan.lists_as`)."""

    def lists_as(self, device: Device) -> bool: ...


@dataclass(frozen=True)
class Carried:
    """What a stopped driver leaves: its config and what its list had missing."""

    config: DriverConfig
    missing: Missing


def left_by(driver: Driver | None, config: DriverConfig) -> Carried | None:
    """What `driver` (stopped; of `config`) leaves its successor; None: nothing missing."""
    if not isinstance(driver, ScanLoop):
        return None  # (a probe lists its devices as it sees them: no grace period kept)
    missing = driver.tracker.missing()
    return Carried(config, missing) if missing.gone or missing.lost else None


def carry(carried: Carried | None, driver: Driver, config: DriverConfig, log: EventLogger) -> None:
    """Before `driver` (of `config`) runs: its tracker takes what `carried` has missing that
    `config` lists under the same ID (the module's doc); what it leaves is logged."""
    if carried is None or not isinstance(driver, ScanLoop):
        return
    missing, scanner = carried.missing, driver.scanner
    if same_scan(carried.config, config):
        gone = dict(missing.gone)
        driver.tracker.carry(missing)
    else:
        lists = scanner.lists_as if isinstance(scanner, ListsAs) else lambda device: False
        gone = {i: entry for i, entry in missing.gone.items() if lists(entry[0])}
        driver.tracker.carry(Missing(gone, {}))
    dropped = sorted(missing.gone.keys() - gone.keys())
    if gone or dropped:
        log.info(
            "missing_devices_carried",
            devices=",".join(sorted(gone)),
            dropped=",".join(dropped),
            detail="listed missing before the restart: their grace period runs on"
            + ("; the dropped ones the new config lists under other IDs or not" * bool(dropped)),
        )


def same_scan(old: DriverConfig, new: DriverConfig) -> bool:
    """Whether `new` lists what `old` listed under the same IDs: the same driver section but
    for its timing (a glob of paths whose patterns changed may still: `GlobScan.lists_as`)."""
    return type(old) is type(new) and all(
        getattr(old, f.name) == getattr(new, f.name)
        for f in dataclasses.fields(old)
        if f.name not in TIMING
    )
