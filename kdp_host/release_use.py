"""What a release tracker (`release.py`) knows of one physical device: who uses it, whether
a release is owed, the release running or failed, and the state `/devices` shows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from grpclib.const import Status

from .allocation import HookFailed
from .backoff import Backoff
from .devices import physical_id
from .holdings import Holder
from .logs import EventLogger
from .release_document import Names, device_entry, handed_device, names_of
from .rules import join_list

if TYPE_CHECKING:
    from .devices import Device
    from .handed_out import HandedOut
    from .identity import Identity
    from .ownership_claims import Owner
    from .timings import Timings

HOLDER_KEYS = ("namespace", "pod", "container")
Checkpointed = Callable[[str], "tuple[Device, Mapping[str, Identity]] | None"]
"""Device ID -> what a booking from the kubelet's checkpoint alone says it was handed
(`OwnershipIndex.checkpoint_handed`, bound to the resource), or None."""
ReleaseState = Literal["clean", "in_use", "pending", "running", "failed"]


@dataclass
class DeviceUse:
    """What the tracker knows about one physical device."""

    used: set[str] = field(default_factory=set)
    """Advertised IDs handed to containers whose end has not been seen."""
    owed: bool = False
    """The users are gone and no release has succeeded since."""
    allocated_at: float = float("-inf")
    """Monotonic time of its last Allocate."""
    allocated_wall: float | None = None
    """Unix time of its last Allocate (kept in the state file: a tracker started later,
    by a reload or after a restart, still ignores answers asked before it)."""
    handed_unknown: bool = False
    """What it was last handed out as is not known (`handed-out.json` was lost or could not
    be read, `handed_out`): its release is not run on what its paths reach now
    (`unknown_release`), only once an Allocate hands it out again (kept in the state file)."""
    last_use: float | None = None
    """Unix time by which the kubelet had recorded the latest use known of the device: its
    last Allocate + `allocation_settle`, or the last answer that listed it held (not one
    that only carried its holder: `seen_free`) (None: none since the last release became
    owed)."""
    owed_for: float | None = None
    """`last_use` when the release became owed (None: not known): a release another host
    ran, covering uses recorded before a later time, covers it (`release_lock`)."""
    owed_covers: float | None = None
    """Unix time before which every use the kubelet had recorded was seen gone when the
    release became owed (what it covers for every host once run: `release_lock.Released`)."""
    booked_by: str | None = None
    """The host whose booking its last use was taken from (`assume_used`; None: this host's
    Allocate, or not known): that host's own use, which its `release_lock.owed_by_peers`
    leaves to itself (kept in the state file)."""
    holders: tuple[Holder, ...] = ()
    """Who held it, as PodResources last said of its current use (kept after they left)."""
    owed_holders: tuple[Holder, ...] = ()
    """Who held the use whose release is owed, as PodResources last said before it was seen
    gone (the release's templates): not the pod handed the device since (`holders` then),
    nor a holder of an earlier use for a use this host never saw held (empty)."""
    running: asyncio.Task[None] | None = None
    failure: str | None = None
    marked_unhealthy: bool = False
    released_at: float | None = None
    """Unix time of the last successful release."""
    backoff: Backoff | None = None
    """The waits before its failed release is tried again (None: it has not failed since its
    last success; made by the tracker from its `Timings`)."""
    joined: set[str] = field(default_factory=set)
    """IDs handed out while other IDs of the device were in use, as last seen, that no answer
    since has shown still shared with a live holder (`release_join`; not kept: a restart
    takes them on trust)."""
    joined_wall: float = 0.0
    """Unix time of the first of those Allocates (before it, every use is an earlier one)."""

    def released(self, wall: float, again: bool) -> None:
        """Its release succeeded at `wall` (`again`: a use seen gone meanwhile is owed, and
        run again as soon as it ends, hostile14 N6: that use is not the one the release was
        owed for, so no release's record covers it yet, `owed_for` not known)."""
        self.owed = again
        self.owed_for = None if again else self.owed_for
        self.handed_unknown, self.failure, self.backoff = False, None, None
        self.released_at = wall

    def owe(self, covers: float | None) -> None:
        """Its users are gone (every use allocated before `covers` is): a release is owed."""
        self.owed, self.owed_for, self.owed_covers = True, self.last_use, covers
        self.last_use = None
        self.owed_holders = self.holders
        self.joined.clear()  # (their containers start after the release)

    def begun(
        self, advertised: str, at: tuple[float, float], settle: float, by: str | None = None
    ) -> None:
        """`advertised` is handed out (`at`: the monotonic clock, the Unix time; recorded by
        the kubelet within `settle`, `Timings.allocation_settle`; `by`: seen in host `by`'s
        booking, `booked_by`): a use from now (an answer asked before then is no news of it).
        Its holders are not known yet when no other ID of the device is in use (its own)."""
        if not self.used:
            self.holders = ()
        self.used.add(advertised)
        (self.allocated_at, wall), self.booked_by = at, by
        self.allocated_wall = wall
        self.last_use = max(self.last_use or wall, wall + settle)

    def retry_delay(self, timings: Timings) -> float:
        """The wait before its failed release is tried again (doubling while it fails)."""
        if self.backoff is None:
            self.backoff = Backoff(timings.release_retry_first, timings.release_retry_max)
        return self.backoff.next_delay()

    @property
    def state(self) -> ReleaseState:
        if self.running is not None:
            return "running"
        if self.owed:
            return "failed" if self.failure is not None else "pending"
        return "in_use" if self.used else "clean"

    def holder_values(self) -> dict[str, str]:
        """Who held the use being released last, as PodResources said (`owed_holders`): the
        `{namespace}`, `{pod}` and `{container}` of the release's templates."""
        return {key: _joined(getattr(h, key) for h in self.owed_holders) for key in HOLDER_KEYS}

    def kept_holders(self) -> list[Names]:
        """Who held the use its release is for (owed: `owed_holders`; else the current use's
        `holders`), as the state file keeps them (`release_document.device_entry`): the host
        that runs that release, this one after a restart or another on the directory, names
        them (`{pod}`: hostile23 F5). A holder with no names (unlisted) is left out."""
        held = self.owed_holders if self.owed else self.holders
        return [(h.namespace, h.pod, h.container) for h in held if h.listed]

    def last_holders(self) -> str:
        """Who held it last, as `namespace/pod/container` (a log line's)."""
        return _joined(h.shown() for h in self.holders)

    def view(self) -> dict[str, Any]:
        """Its release part in `/devices` (read from the HTTP thread). The command's error
        is in the log only: `/devices` shows no command output."""
        found: dict[str, Any] = {"state": self.state}
        if self.released_at is not None:
            found["releasedAt"] = self.released_at
        return found


def assume_used(
    uses: dict[str, DeviceUse],
    booked: Collection[str],
    at: tuple[float, float],
    settle: float,
    log: EventLogger,
    writer: str | None,
) -> None:
    """The IDs `booked` count as used from `at` (monotonic, Unix time; `settle`: see
    `DeviceUse.begun`), as
    an Allocate of this host's would: released once their device is seen free or allocated
    again (an ID no answer has shown is not seen free: another host's booking is held as
    this host's Allocates are, `unlisted.Unlisted.booked_elsewhere`). One line
    (`release_use_assumed`) per ID not used before."""
    for advertised in sorted(booked):
        use = uses.setdefault(device_id := physical_id(advertised), DeviceUse())
        if advertised not in use.used:
            use.begun(advertised, at, settle, writer)
            log.warning(
                "release_use_assumed",
                device=device_id,
                id=advertised,
                booked_by=writer or "-",
                reason="the kubelet's checkpoint or the bookings say it was handed out (before "
                "the resource's release tracking began, or by another host on the state "
                "directory since)",
            )


def seen_free(
    uses: dict[str, DeviceUse],
    held: Mapping[str, Mapping[str, tuple[Holder, ...]]],
    asked: tuple[float, float],
    settle: float,
    log: EventLogger,
    gone: Callable[[str, frozenset[str]], object] = lambda device_id, kept: None,
    listed: Callable[[str], bool] = lambda advertised: True,
) -> list[str]:
    """A PodResources answer asked at `asked` (monotonic, Unix time) shows `held` (device ->
    its IDs held -> by whom): a device none of whose IDs is held is free unless allocated
    after the question was sent, or within `settle` before (the kubelet may not have
    recorded it yet: `Timings.allocation_settle`). A device held moves its `last_use` to
    then only where the kubelet's answer itself listed one of its IDs (`listed`, by ID): a
    holder carried or unlisted (`holdings.Holdings.unshown`) is no news that the use went on
    (hostile14 N8: each host carries a holder for its own while, so such times told another
    host's release from after the use ended as one from before). Returns the devices whose
    release this makes owed (their users gone); `gone` is told of each device whose users
    are seen gone, owed already or not, with the IDs whose uses go on (the record's other
    uses then owed: `handed_entries.owed_but`). A device joined since the last answer is
    decided by this one (`joined_alone`, `release_join`): its earlier users gone, the release is
    owed, the joiners' uses going on."""
    asked_at, asked_wall = asked
    owed: list[str] = []
    for device_id in set(uses) | set(held):
        use = uses.setdefault(device_id, DeviceUse())
        if use.allocated_at >= asked_at:
            continue  # allocated after the question was sent: the answer predates it
        now_held = held.get(device_id)
        alone = joined_alone(use, now_held, listed) if use.joined and not use.owed else None
        if alone:  # (every earlier use is gone: released, the joiners' go on)
            use.used = set(use.joined)
            gone(device_id, frozenset(use.joined))
            use.owe(use.joined_wall)
            why = {"reason": "joined_after_last_holder", "last_holders": use.last_holders()}
            log.info("release_owed", device=device_id, **why)
            owed.append(device_id)
        elif alone is False:
            use.joined.clear()  # (a live sharer listed since: it shares the device)
        if now_held:
            use.used = set(now_held)
            if any(listed(advertised) for advertised in now_held):
                use.last_use = max(use.last_use or asked_wall, asked_wall)
            shown = tuple(  # (not a joiner undecided yet: not whose use a release acts on)
                dict.fromkeys(
                    h for a, hs in now_held.items() if a not in use.joined for h in hs if h.listed
                )
            )
            use.holders = shown or use.holders  # (an unlisted holder has no names)
        elif use.allocated_at >= asked_at - settle:
            continue  # "free" just after an Allocate: the kubelet may not have recorded it
        elif use.used:
            use.used.clear()
            gone(device_id, frozenset())
            if not use.owed:  # (seen free: every use allocated before then is gone)
                use.owe(asked_wall)
                why = {"reason": "no_longer_held", "last_holders": use.last_holders()}
                log.info("release_owed", device=device_id, **why)
                owed.append(device_id)
    return owed


def joined_alone(
    use: DeviceUse,
    now_held: Mapping[str, tuple[Holder, ...]] | None,
    listed: Callable[[str], bool],
) -> bool | None:
    """What an answer asked after the device's last Allocate says of its joiners: True, no
    ID but theirs is held (every earlier user gone); False, a live sharer: the kubelet
    itself lists another held, or holds it for a container no answer lists (unlisted: a
    regular init container, whose ID the kubelet's checkpoint still has; hostile17 F6);
    None, another is held by carried holders only (gone from the answers just now)."""
    others = [advertised for advertised in now_held or () if advertised not in use.joined]
    if not others:
        return True
    assert now_held is not None
    alive = any(listed(a) or not all(h.listed for h in now_held[a]) for a in others)
    return False if alive else None


def owe_held_before(
    uses: dict[str, DeviceUse],
    devices: Mapping[str, Owner],
    taken: Collection[Owner],
    wall: float,
    log: EventLogger,
) -> list[str]:
    """`devices` (advertised ID -> the device a booking of another resource held its node
    under, `ownership_held.HandOver`) were used by that booking's pod, now seen gone: their
    release is owed from `wall`, whatever name booked the node, before a container of this
    resource starts with them (hostile14 N1). One whose own users are not seen gone (or
    owed already) is left as it is: that end owes it. `taken`: the bookings whose removed
    resource's owed release this one runs instead (hostile14 N2). Returns the devices owed."""
    owed: list[str] = []
    for advertised, booked in sorted(devices.items()):
        use = uses.setdefault(device_id := physical_id(advertised), DeviceUse())
        if use.used or use.owed:
            continue
        use.owe(wall)
        use.owed_holders = ()  # (that pod held another name's ID: not seen here)
        owed.append(device_id)
        log.info(
            "release_owed",
            device=device_id,
            reason="held_by_booking",
            booked_resource=booked.resource,
            booked_device=booked.device,
            owed_by_removed=booked in taken,
        )
    return owed


def kept_use(entry: Mapping[str, Any], now: float, wall: float, settle: float) -> DeviceUse:
    """A device's use as the state file keeps it (`release_state`), its Allocate time back
    on the monotonic clock (`now`, at the Unix time `wall`): an answer asked before it stays
    no news after a restart (`settle`: `Timings.allocation_settle`)."""
    use = DeviceUse(set(entry["used"]), entry["owed"], handed_unknown="handedUnknown" in entry)
    use.booked_by = entry.get("bookedBy")
    allocated = entry.get("allocatedAt")
    if allocated is not None:
        use.allocated_wall, use.last_use = allocated, allocated + settle
        use.owed_for = use.last_use if use.owed else None
        use.allocated_at = now - max(0.0, wall - allocated)
    if use.owed:  # (the use owed as the host that owed it knew it, whichever host that was)
        use.owed_for = entry.get("owedFor", use.owed_for)
        use.owed_covers, use.owed_holders = entry.get("owedCovers"), holders_kept(entry)
    else:
        use.holders = holders_kept(entry)
    return use


def holders_kept(entry: Mapping[str, Any]) -> tuple[Holder, ...]:
    """Who held the use a device's entry (this host's or another's) says its release is for
    (`DeviceUse.kept_holders`; since: its Allocate)."""
    since = entry.get("allocatedAt") or 0.0
    return tuple(Holder(*names_of(names), since) for names in entry.get("holders", ()))


def taken_up(
    device_id: str,
    entry: Mapping[str, Any],
    handed: HandedOut,
    at: tuple[float, float],
    settle: float,
) -> DeviceUse:
    """A device's use as the state file keeps it (`kept_use`, `at`: the monotonic clock and
    the Unix time now); the device as handed out that a file of an older version keeps goes
    to the record."""
    use = kept_use(entry, *at, settle)
    if (legacy := handed_device(device_id, entry)) is not None:
        ids = use.used or {device_id}  # (an owed release: its booking stays meanwhile)
        handed.record.adopt(handed.resource, legacy, ids, use.allocated_wall or 0.0)
    return use


def kept_entries(uses: Mapping[str, DeviceUse]) -> dict[str, dict[str, Any]]:
    """The devices' entries the state file keeps (`release_state.device_entry`)."""
    return {
        device_id: device_entry(
            use.used,
            use.owed,
            use.allocated_wall,
            use.handed_unknown,
            use.booked_by,
            owed_use=(use.owed_for, use.owed_covers),
            holders=use.kept_holders(),
        )
        for device_id, use in uses.items()
        if use.used or use.owed
    }


def start_failed(resource: str, device_id: str, use: DeviceUse) -> HookFailed:
    """PreStartContainer's error when the device's owed release failed."""
    return HookFailed(
        Status.FAILED_PRECONDITION,
        "exit",
        f"{resource}: device {device_id} was used by an earlier container and its release "
        f"failed: {use.failure}",
    )


def not_released(resource: str, devices: Collection[str]) -> HookFailed:
    """PreStartContainer's error when a node it is handed was used by an earlier container of
    a device still in use, whose release runs once that device is free (`in_use_sharing`)."""
    names = ",".join(sorted(devices))
    return HookFailed(
        Status.UNAVAILABLE,
        "unknown",
        f"{resource}: a node this container is handed was used by an earlier container of "
        f"device {names}, which other containers still hold: it is released once none does, "
        "and no container starts with it before",
    )


def unknown_release(resource: str, device_id: str) -> str:
    """Why the release of a device whose record was lost (`handed_unknown`) is not run."""
    return (
        f"{resource}: release of {device_id} not run: what it was handed out as is not known "
        "(handed-out.json was lost or could not be read), and its paths may reach another "
        "device now; it stays owed, and runs at the next container start on the device, on "
        "what that Allocate hands out"
    )


def _joined(values: Iterable[str]) -> str:
    """Pod, namespace and container names as a list (they are DNS labels: no separator)."""
    return join_list(dict.fromkeys(v for v in values if v))
