"""What an Allocate answer is made of before anything is looked at on disk or booked: the
containers' responses as the config and the device list make them (`AllocationBuilder`),
what they hand out besides their devices' own (`Handed`), the host paths the ownership
index resolves and checks, which of them are device nodes and which are handed read-only
only, and each ID's device's own host paths (what its booking must still claim).

All of it is a function of the snapshot and the requested IDs alone, so it is made once
per snapshot and request (`AnswerPlans`), not at every Allocate (issue 19: 20-25 us of the
handler's ~110 us, a pod admission's every Allocate of a known device asking the same).
What depends on the moment is still asked at every Allocate by the caller: what each host
path reaches now and whether it may be handed out (`Bookings.hand_out_reaching`), the
record's room, the bookings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ..allocation import AllocationBuilder, Handed, spelled_paths
from ..api.v1beta1 import ContainerAllocateResponse
from ..devices import Snapshot
from ..identity import Identity
from ..ownership_claims import read_only_of

PLAN_LIMIT: Final = 256
"""Requests whose plans one snapshot keeps (all are let go beyond it, and at a new version)."""

Requests = tuple[tuple[str, ...], ...]
"""The IDs of each container request, as the kubelet sent them."""


@dataclass(frozen=True)
class AnswerPlan:
    """One Allocate request's answer as the snapshot makes it (`plan_answer`)."""

    responses: tuple[ContainerAllocateResponse, ...]
    """Shared by every answer of the plan, so never changed: `answer` copies what differs."""
    handed: Handed
    booked: tuple[str, ...]
    """Every requested ID, in request order (an ID asked twice, twice)."""
    nodes: frozenset[str]
    """The DeviceSpecs' host paths, and with `allocate.cdi` the nodes of its devices."""
    paths: frozenset[str]
    """`nodes` and the mounts' host paths: what the ownership index resolves and checks."""
    read_only: frozenset[str]
    """Of `paths`, those handed out read-only only (`read_only_of`)."""
    spelled: Mapping[str, tuple[str, ...]]
    """Each requested ID's device's own host paths (`spelled_paths`), for `handed_as`."""

    def answer(self, real: Mapping[str, str]) -> list[ContainerAllocateResponse]:
        """The responses with every host path handed out as the real path it reaches
        (`real`, from `hand_out_reaching`; a path it does not name as it is): the plan's
        own objects where each is its real path already (the common case)."""
        if all(real.get(path, path) == path for path in self.paths):
            return list(self.responses)
        return [
            dataclasses.replace(
                response,
                devices=[
                    dataclasses.replace(spec, host_path=real.get(spec.host_path, spec.host_path))
                    for spec in response.devices
                ],
                mounts=[
                    dataclasses.replace(mount, host_path=real.get(mount.host_path, mount.host_path))
                    for mount in response.mounts
                ],
            )
            for response in self.responses
        ]

    def handed_as(self, reached: Mapping[str, Identity]) -> dict[str, set[Identity]]:
        """What each ID's device's own host paths reached as the answer handed them out
        (`reached`, `hand_out_reaching`): what its booking must still claim (`Bookings.book`,
        `handed_as`)."""
        return {i: {reached[p] for p in own if p in reached} for i, own in self.spelled.items()}


def plan_answer(
    builder: AllocationBuilder,
    snapshot: Snapshot,
    requests: Requests,
    responses: Sequence[ContainerAllocateResponse],
) -> AnswerPlan:
    """The plan of an answer made of `responses` (one per request of `requests`)."""
    booked = tuple(i for ids in requests for i in ids)
    mounts = [(m.host_path, m.read_only) for r in responses for m in r.mounts]
    nodes = {spec.host_path for r in responses for spec in r.devices}
    if builder.resource.allocate.cdi is not None:  # (hostile15 F4: its CDI names' nodes)
        for device in builder.physical_devices(snapshot, booked):
            nodes.update(node.host_path for node in device.nodes)
    by_id = snapshot.by_advertised_id
    return AnswerPlan(
        responses=tuple(responses),
        handed=builder.handed(snapshot, requests, responses),
        booked=booked,
        nodes=frozenset(nodes),
        paths=frozenset(nodes).union(path for path, _ in mounts),
        read_only=read_only_of(nodes, mounts),  # (not writable: `config.handed`, K7)
        spelled={i: spelled_paths(e.device) for i in booked if (e := by_id.get(i)) is not None},
    )


class AnswerPlans:
    """The plans of the current snapshot's requests (`plan`), made at a request's first
    Allocate; a new snapshot version lets every one go."""

    def __init__(self, builder: AllocationBuilder) -> None:
        self._builder = builder
        self._version: int | None = None
        self._plans: dict[Requests, AnswerPlan] = {}

    def plan(self, snapshot: Snapshot, requests: Requests) -> AnswerPlan:
        """The plan of `requests` on `snapshot`; raises AllocationError as
        `AllocationBuilder.container_response` does (unknown or unhealthy IDs, ...)."""
        if snapshot.version != self._version:  # (a table's versions only grow)
            self._plans.clear()
            self._version = snapshot.version
        plan = self._plans.get(requests)
        if plan is None:
            builder = self._builder
            responses = [builder.container_response(snapshot, ids) for ids in requests]
            plan = plan_answer(builder, snapshot, requests, responses)
            if len(self._plans) >= PLAN_LIMIT:
                self._plans.clear()
            self._plans[requests] = plan
        return plan
