"""Whether a resource's configured `allocate.mounts` sources clash with what the ownership
index holds, for every answer of the resource: a cause of the whole resource, shown as its
answer need `mounts` (`answer_checks.NeedsWatch`; issue 17, hostile24 F1).

Every answer of a resource mounts its configured sources. A source that reaches another
device's node (replaced by a link into the device tree; holding a hard link of a node; a
node renamed into it: `ownership_lingering`) has every Allocate refused by the index's rule
(`PlaceOwned`), while the resource's devices stayed Healthy and /readyz said ok: the
scheduler kept sending pods that failed admission. The index is asked here with its own
rule, not a copy of it: an answer with no device, handing out the sources only
(`hand_out_reaching`, then `places_owned`, as an Allocate is checked and booked). Refused:
every answer is, but where the one device in the way is of the resource itself (a hard link
of one device's node in the source) and the answer for that device alone passes; then every
device but that one is held (`SourceClash.own`).

What the sources' paths themselves must be (there, safe to hand out) is the path rule's
(`answer_checks.mount_source_problems`); an answer the index cannot decide in time
(`Unresolvable`) is that rule's trouble too, not a clash.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from .devices import Device, physical_id
from .identity import Identity
from .ownership_claims import Unresolvable
from .ownership_shared import PlaceOwned


class AnswerChecks(Protocol):
    """What the index checks an answer by (`OwnershipIndex`)."""

    async def hand_out_reaching(
        self,
        resource: str,
        ids: list[str],
        paths: Collection[str],
        read_only: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, str], dict[str, Identity]]: ...

    async def places_owned(self, resource: str, places: Mapping[str, Collection[str]]) -> None: ...


@dataclass(frozen=True)
class SourceClash:
    """Why answers mounting the configured sources are refused (the device in the way, in
    words that stay the same while it does: one line while it lasts), and the one device of
    the resource whose own answer is not (None: every answer is)."""

    why: str
    own: str | None = None

    def holds(self, device: Device) -> bool:
        """Whether `device`'s answers are refused (a hold predicate: `AnswerNeeds.hold`)."""
        return self.own is None or physical_id(device.id) != physical_id(self.own)


async def source_clash(
    index: AnswerChecks, resource: str, sources: Collection[str], read_only: frozenset[str]
) -> SourceClash | None:
    """Whether an answer of `resource` that hands out its configured `sources` is refused
    by the index whatever devices it has (the module's doc); None: it is not."""
    try:
        await _answer(index, resource, None, sources, read_only)
    except Unresolvable:
        return None
    except PlaceOwned as refused:
        owner = refused.owner
        if owner is None:
            return SourceClash(str(refused))
        why = f"they reach what device {owner.device} of {owner.resource} owns or a pod holds"
        if owner.resource != resource:
            return SourceClash(why)
        try:
            await _answer(index, resource, owner.device, sources, read_only)
        except (PlaceOwned, Unresolvable):
            return SourceClash(why)
        return SourceClash(why, owner.device)
    return None


async def _answer(
    index: AnswerChecks,
    resource: str,
    device: str | None,
    sources: Collection[str],
    read_only: frozenset[str],
) -> None:
    """Check an answer for `device` (None: none) that hands out `sources` (raises as an
    Allocate's checks do)."""
    ids = [] if device is None else [device]
    await index.hand_out_reaching(resource, ids, sources, read_only)
    await index.places_owned(resource, {device or "": sources})
