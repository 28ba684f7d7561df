"""A container that joins a shared device (`replicas`) without its release: only while another
holder is known alive (hostile17 F2).

An Allocate of an ID whose earlier user is gone (or never had one) on a device another ID of
which is in use, as last seen, JOINS that device: the release is not owed, the device never
was free. But "in use, as last seen" is an answer that may be seconds old: the other ID's
user may have ended since (the batch pattern: one job ends, the next is admitted at once,
and the kubelet hands it the replica ID that had long been free). So a join is taken on
trust only until the next answer decides it (`DeviceUse.joined`, `release_use.joined_alone`):
an answer asked after the Allocate in which the kubelet itself lists another ID of the device
held proves a live sharer (no release, as before); one in which no ID but the joiners' is held
at all proves every earlier user gone: the release is owed now, acting on the earlier uses
(`handed_entries.owed_but`: the joiners' own stays theirs), and their containers start after
it, as with `replicas: 1`. An Allocate that hands out again every ID the earlier users had
proves it too (`asked_for`). A holder only carried (`holdings.Settle`) decides nothing: the
next answer is waited for.

PreStartContainer of a joiner whose join no answer has decided yet asks PodResources at once
(`FreshAnswers.answer_after`: the poller's next List, no sooner than
`podresources.ASK_AGAIN_AFTER` after the last) and waits for the decision within the call's
budget; undecided by then, the start is refused (`not_known_shared`, UNAVAILABLE: the kubelet
tries again), never let start on trust nor released under a sharer that may be alive. With
PodResources off or not there (`absent`, `unsupported`) nothing can decide: a join is taken on
trust, as README says, and the joiner is a user from then on (an Allocate of the other IDs
later is no proof that the device is free: hostile17 F5). A holder no answer lists but an
Allocate made (`unlisted`: a regular init container) is a live sharer (hostile17 F6).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from grpclib.const import Status

from .allocation import HookFailed

if TYPE_CHECKING:
    from .release_use import DeviceUse
    from .start_budget import StartBudget


class FreshAnswers(Protocol):
    """The host's PodResources poller, as a container start asks it (`PodResourcesPoller`)."""

    @property
    def answering(self) -> bool: ...

    async def answer_after(self, after: float, timeout: float) -> bool: ...


def asked_for(
    use: DeviceUse, advertised: str, unknown: bool, wall: float
) -> tuple[frozenset[str], float] | None:
    """An Allocate asks for `advertised` of the device at `wall`: its earlier user is gone
    when it was used before (or `unknown`: the state not known counts every ID so). Returns,
    when that proves every earlier use of the device gone, the IDs of those that joined it
    since (their uses stay theirs) and the time before which every use was (the release's
    `covers`); else None, the ID joining the device when another ID of it is in use
    (`DeviceUse.joined`)."""
    if advertised in use.used or unknown:
        use.used.discard(advertised)
        use.joined.discard(advertised)
        if not use.used:  # (every use before this Allocate is gone)
            return frozenset(), wall
    if use.owed or not use.used:
        return None  # (a release owed: the container waits for it; free: its own use)
    if use.used <= use.joined:  # (each earlier user's ID allocated again: only joiners left)
        return frozenset(use.joined), use.joined_wall
    if not use.joined:
        use.joined_wall = wall
    use.joined.add(advertised)
    return None


def unproven(
    uses: Mapping[str, DeviceUse], devices: Sequence[str], ids: Sequence[str]
) -> list[str]:
    """The `devices` a container of `ids` joined that no answer has decided yet."""
    mine = set(ids)
    return [
        device_id
        for device_id in devices
        if (use := uses.get(device_id)) is not None
        and not use.owed
        and not use.joined.isdisjoint(mine)
    ]


async def decided(
    answers: FreshAnswers | None,
    joins: tuple[Mapping[str, DeviceUse], Sequence[str], Sequence[str]],
    heard: Callable[[], float],
    budget: StartBudget,
    resource: str,
) -> None:
    """PreStartContainer: wait (within `budget`) until an answer decides each device of
    `joins` (the tracker's uses, the container's devices and IDs) it joined (`unproven`),
    asking for one asked after their last Allocate and the last answer `heard`; raises
    `not_known_shared` when none does."""
    if not (pending := unproven(*joins)):
        return
    uses, _, ids = joins
    if answers is None or not answers.answering:  # (nothing can decide: taken on trust,
        for device_id in pending:  # a user from now on, not a joiner: hostile17 F5)
            uses[device_id].joined.difference_update(ids)
        return
    while pending:
        since = max(heard(), *(uses[device_id].allocated_at for device_id in pending))
        if not await answers.answer_after(since, budget.left()) or heard() <= since:
            break  # (no answer in time, or not heard here)
        pending = unproven(*joins)
    if pending:
        raise not_known_shared(resource, pending)


def not_known_shared(resource: str, devices: Sequence[str]) -> HookFailed:
    """PreStartContainer's error when no answer told whether a device the container joined is
    still held by another container (`decided`)."""
    names = ",".join(sorted(devices))
    return HookFailed(
        Status.UNAVAILABLE,
        "deadline",
        f"{resource}: this container joins device {names}, and no PodResources answer since its "
        "Allocate has told whether another container still holds it (if none does, it is "
        "released first): the kubelet tries the start again",
    )
