"""Who holds each device, as the kubelet's PodResources answers show it: the holders of one
answer (`Holdings`, `holdings_from`; a holder seen before keeps its first `since`) and the
one rule for when a holder shown is gone (`Settle`): missing from answers `GONE_AFTER` apart,
none of them just after a kubelet restart. Asking the kubelet is `podresources`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api.v1 import ListPodResourcesResponse

GONE_AFTER = 4.0
"""Seconds a holder must be missing from the kubelet's answers (in two answers at least, the
first and the last of them this far apart) before it is let go: one answer without a pod
(a kubelet between its restart and its pod manager being filled again) ends nothing."""
RESTART_SETTLE = 10.0
"""Seconds after a kubelet restart (its socket made anew, or PodResources unreachable and
back) in which an answer that lacks a holder is no evidence at all: the kubelet answers from
a pod manager it is still filling."""


@dataclass(frozen=True, slots=True)
class Holder:
    """A container holding a device, as the kubelet names it."""

    namespace: str
    pod: str
    container: str
    since: float
    """Unix time of the first answer that showed this container holding the device."""


@dataclass(frozen=True)
class Holdings:
    """One answer of List: resource -> advertised device ID -> the containers holding it."""

    asked_at: float
    """Monotonic time the List call was sent: an allocation after it is newer news."""
    answered_at: float
    """Unix time of the answer."""
    by_resource: Mapping[str, Mapping[str, tuple[Holder, ...]]]

    def of(self, resource: str) -> Mapping[str, tuple[Holder, ...]]:
        return self.by_resource.get(resource, {})


def holdings_from(
    response: ListPodResourcesResponse,
    asked_at: float,
    answered_at: float,
    previous: Holdings | None,
) -> Holdings:
    """The holders in a List answer; a holder seen before keeps its first `since`."""
    seen: dict[str, dict[str, list[Holder]]] = {}
    earlier: dict[tuple[str, str, str, str, str], float] = {}
    if previous is not None:
        for resource, known in previous.by_resource.items():
            for device_id, was in known.items():
                for h in was:
                    earlier[(resource, device_id, h.namespace, h.pod, h.container)] = h.since
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                by_id = seen.setdefault(devices.resource_name, {})
                for device_id in devices.device_ids:
                    key = (devices.resource_name, device_id, pod.namespace, pod.name)
                    since = earlier.get((*key, container.name), answered_at)
                    holders = by_id.setdefault(device_id, [])
                    holder = Holder(pod.namespace, pod.name, container.name, since)
                    if holder not in holders:  # one entry per NUMA node: count it once
                        holders.append(holder)
    return Holdings(
        asked_at,
        answered_at,
        {
            resource: {device_id: tuple(found) for device_id, found in by_device.items()}
            for resource, by_device in seen.items()
        },
    )


Key = tuple[str, str, Holder]
"""resource, advertised device ID, holder."""


@dataclass
class Settle:
    """Turns the kubelet's answers into who holds what, on trustworthy evidence only.

    A holder shown once holds until it has been missing for `GONE_AFTER` seconds, from
    two answers at least, none of them asked within `RESTART_SETTLE` seconds of a kubelet
    restart. Until then it is carried into the published `Holdings` as it was (same
    `since`), so claims, bookings and owed releases (every subscriber) see it held."""

    restarted_at: float = float("-inf")
    """Monotonic time of the last kubelet restart seen (`kubelet_restarted`)."""
    missing: dict[Key, float] = field(default_factory=dict)
    """Holder -> asked_at of the first trusted answer that lacked it."""
    misses: dict[Key, int] = field(default_factory=dict)

    def restarted(self, now: float) -> None:
        self.restarted_at = now
        self.missing.clear()  # absences seen before the restart prove nothing after it
        self.misses.clear()

    def trusted(self, asked_at: float) -> bool:
        return asked_at >= self.restarted_at + RESTART_SETTLE

    def apply(self, answer: Holdings, previous: Holdings | None) -> tuple[Holdings, int]:
        """The holdings to publish for `answer`, and how many holders it lacked that are
        carried (still held)."""
        if previous is None:
            return answer, 0
        trusted = self.trusted(answer.asked_at)
        merged = {
            r: {d: list(hs) for d, hs in ids.items()} for r, ids in answer.by_resource.items()
        }
        shown = {
            (r, d, h.namespace, h.pod, h.container)
            for r, ids in merged.items()
            for d, hs in ids.items()
            for h in hs
        }
        carried = 0
        still: set[Key] = set()
        for resource, ids in previous.by_resource.items():
            for device_id, holders in ids.items():
                for h in holders:
                    if (resource, device_id, h.namespace, h.pod, h.container) in shown:
                        continue
                    key = (resource, device_id, h)
                    if trusted:
                        first = self.missing.setdefault(key, answer.asked_at)
                        misses = self.misses[key] = self.misses.get(key, 0) + 1
                        if misses >= 2 and answer.asked_at - first >= GONE_AFTER:
                            continue  # gone, on trustworthy evidence
                    still.add(key)
                    carried += 1
                    merged.setdefault(resource, {}).setdefault(device_id, []).append(h)
        for forgotten in set(self.missing) - still:
            del self.missing[forgotten]
            self.misses.pop(forgotten, None)
        published = Holdings(
            answer.asked_at,
            answer.answered_at,
            {r: {d: tuple(hs) for d, hs in ids.items()} for r, ids in merged.items()},
        )
        return published, carried
