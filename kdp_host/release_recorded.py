"""What a release tracker takes from `handed-out.json` at its start (issue 17).

An Allocate answers once `handed-out.json` keeps what it handed out (`handed_out`);
`release-state.json` takes the use after the answer (`ReleaseTracker.taken`), and
PreStartContainer waits for that write, at most the write limit (`state_file.WRITE_LIMIT`).
kdp-host killed in between, or killed after a write that stalled past the limit, left a state
file without the use, and no unsaved marker (nothing failed): the pod's end then owed no
release, and the next pod was handed the device as the last one left it.

The one rule: the record is the authority for what was handed out. Where the state is behind
it (no entry for the device, or its last Allocate of the device older than the record's
newest use), the record's newest use, when it has IDs and is not owed, is used from its
Allocate, as `taken` would have made it (seen gone, or its ID allocated again, its release
is owed); and a use the record keeps owed (`handed_entries.Handed.owed`: its user seen gone,
or its ID allocated again, before the kill) makes the device owed. Neither releases a device
under a pod that still runs (a use ends as any does: PodResources or a new Allocate). Where
the state took the newest Allocate, it knows what happened since (a use seen gone, a release
done): the record changes nothing. A release that had run when the kill came is not run
again: its lock file keeps what it covered (`release_lock.Released`), and an owed use taken
here is dated by its Allocate (`DeviceUse.last_use`, as the state's are), so
`DeviceLock.done_elsewhere` skips it; one run here covers it for every host that knows it
(`release_lock.through`: when it was seen gone is not recorded, hostile23 F5). The host
reads the record before the state (`host.Host`): a use another host on the directory
answers meanwhile (a rolling update) is then in neither, or in both unless its state write
is slower than the gap between the two reads; one that is (a stalled write) is taken as a
use of this host's, dated by its Allocate, whose release the other host runs before that
pod's next container start.

The other way round (the state keeps a use the record does not) needs no rule: the record
drops a device's entry only once none of its IDs is booked, and a booking stays while the
state keeps the device (`ownership_bookings.ReleasePending`); a record written after a
release (its uses gone) whose state write was lost leaves a use whose release the lock's
record covers, as above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .handed_entries import uses
from .logs import EventLogger
from .release_lock import through
from .release_use import DeviceUse

if TYPE_CHECKING:
    from .handed_out import HandedOut


def recorded_uses(
    kept: dict[str, DeviceUse],
    record: HandedOut,
    at: tuple[float, float],
    settle: float,
    log: EventLogger,
) -> None:
    """Take into `kept` (the uses the state file keeps, by device) what `record` (the
    resource's view of `handed-out.json`) keeps and they lack (the module docstring);
    `at`: the monotonic clock and the Unix time now; `settle`: `Timings.allocation_settle`."""
    now, wall = at
    for device_id in sorted(record.devices):
        if (handed := record.entry(device_id)) is None:
            continue
        use = kept.get(device_id)
        if use is not None and use.allocated_wall is not None and handed.at <= use.allocated_wall:
            continue  # (the state took the newest Allocate: what it says since is newer)
        owed = [one.at for one in uses(handed) if one.owed]
        newer = bool(handed.ids) and not handed.owed
        if not newer and not owed:
            continue  # (released: its IDs went, nothing owed)
        use = kept.setdefault(device_id, DeviceUse())
        if owed and not use.owed:
            use.last_use = max(owed) + settle  # (when the kubelet had recorded them)
            use.owe(through(use.last_use))  # (seen gone: when, not known)
        if newer:
            for advertised in sorted(handed.ids):
                use.begun(advertised, (now - max(0.0, wall - handed.at), handed.at), settle)
        log.warning(
            "release_use_recorded",
            device=device_id,
            ids=",".join(sorted(handed.ids)) if newer else "-",
            owed=bool(owed),
            reason="handed-out.json keeps a use of the device that release-state.json lacks "
            "(kdp-host stopped before that write landed)",
        )
