"""Who holds which device, as the kubelet's PodResources answers say, and when an answer that
lacks a holder is taken at its word (`Settle`).

`Holdings` is one answer (`holdings_from`), as the poller (`podresources.py`) publishes it to
the release trackers, the ownership index and `/devices`. An answer is not taken at its word
when it lacks a container shown before: right after a restart the kubelet answers from a pod
manager it is still filling, and after a restart while the API server is unreachable it
lists no API pod for as long as that lasts, while their containers run and keep their
devices (the kubelet frees nothing before its pod sources are ready). `Settle` publishes such
a holder as still holding until it has been missing long enough, on answers that count.

Nor does an answer's silence about an ID it never showed say anything: the kubelet does not
list regular init containers (docs/kubelet-contract.md §15), so an ID an Allocate handed out
and no answer has shown since is published as held by an unlisted holder (`with_unlisted`,
kept by `unlisted.Unlisted`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .timings import Timings

if TYPE_CHECKING:
    from .api.v1 import ListPodResourcesResponse

UNLISTED: Final = "(not-listed)"
"""The name shown for a holder the kubelet's PodResources does not name (a regular init
container's device; README, "Device release")."""


@dataclass(frozen=True, slots=True)
class Holder:
    """A container holding a device, as the kubelet names it."""

    namespace: str
    pod: str
    container: str
    since: float
    """Unix time of the first answer that showed this container holding the device (of the
    Allocate, for an unlisted holder)."""
    listed: bool = True
    """False: a holder no answer names, of an ID an Allocate handed out and no answer has
    shown since (a regular init container's, or a pod's not admitted yet); its names are
    empty (`unlisted.Unlisted`)."""

    def shown(self, container: bool = True) -> str:
        """How a log line or the status table names it: `namespace/pod[/container]`, or
        `UNLISTED` for a holder no answer names (its names are empty)."""
        if not self.listed:
            return UNLISTED
        pod = f"{self.namespace}/{self.pod}"
        return f"{pod}/{self.container}" if container else pod


@dataclass(frozen=True)
class Holdings:
    """One answer of List: resource -> advertised device ID -> the containers holding it."""

    asked_at: float
    """Monotonic time the List call was sent: an allocation after it is newer news."""
    answered_at: float
    """Unix time of the answer."""
    by_resource: Mapping[str, Mapping[str, tuple[Holder, ...]]]
    unshown: frozenset[tuple[str, str]] = frozenset()
    """(resource, ID) held here that the kubelet's answer itself did not list: each of its
    holders carried (`Settle`) or unlisted (`with_unlisted`). Still held, but no news that
    its use went on past its Allocate or the last answer that listed it (the time a use was
    last known to the kubelet, which two hosts compare: `release_lock`)."""

    def of(self, resource: str) -> Mapping[str, tuple[Holder, ...]]:
        return self.by_resource.get(resource, {})

    def shows(self, resource: str, device_id: str) -> bool:
        """Whether the kubelet's answer itself listed `device_id` of `resource` held."""
        return (resource, device_id) not in self.unshown

    def pods(self) -> frozenset[tuple[str, str]]:
        """The pods (namespace, name) the answer shows holding a device."""
        return frozenset(
            (h.namespace, h.pod)
            for ids in self.by_resource.values()
            for holders in ids.values()
            for h in holders
            if h.listed
        )


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


def with_unlisted(holdings: Holdings, unlisted: Mapping[str, Mapping[str, float]]) -> Holdings:
    """`holdings` with each ID of `unlisted` (resource -> ID -> Unix time of its Allocate)
    held by an unlisted holder too."""
    if not unlisted:
        return holdings
    merged = {r: dict(ids) for r, ids in holdings.by_resource.items()}
    unshown = set(holdings.unshown)
    for resource, ids in unlisted.items():
        by_id = merged.setdefault(resource, {})
        for device_id, since in ids.items():
            holder = Holder("", "", "", since, listed=False)
            if device_id not in by_id:
                unshown.add((resource, device_id))
            by_id[device_id] = (*by_id.get(device_id, ()), holder)
    return Holdings(holdings.asked_at, holdings.answered_at, merged, frozenset(unshown))


Key = tuple[str, str, Holder]
"""resource, advertised device ID, holder."""
Held = tuple[str, str, str, str, str]
"""resource, advertised device ID, namespace, pod, container."""


def _held(holdings: Holdings) -> frozenset[Held]:
    return frozenset(
        (resource, device_id, h.namespace, h.pod, h.container)
        for resource, ids in holdings.by_resource.items()
        for device_id, holders in ids.items()
        for h in holders
        if h.listed
    )


def _none_listed(_resource: str, _device_id: str) -> bool:
    return False


@dataclass
class Settle:
    """Turns the kubelet's answers into who holds what, on trustworthy evidence only.

    A holder shown once holds until it has been missing for `Timings.gone_after` seconds,
    from two answers at least, none of them asked within `Timings.restart_settle` seconds of
    a kubelet restart. Until then it is carried into the published `Holdings` as it was (same
    `since`), so claims, bookings and owed releases (every subscriber) see it held; an ID
    held by carried holders alone is marked so (`Holdings.unshown`).

    After a kubelet restart, also past that window, a holder shown before it and not
    shown since (`before`) is carried while the kubelet's checkpoint still lists its ID (or
    cannot be read): the kubelet frees an ended pod's devices only once all its pod
    sources are ready, and keeps every allocation in the file until then
    (docs/kubelet-contract.md §10), while a kubelet restarted with its API server away
    lists no API pod, only its static pods, for as long as that lasts. No other sign says
    the API pods are back (a static pod shown again, or one admitted, says nothing of
    them), so such a holder is let go by absence only once the file, written again, no
    longer lists its ID; or sooner when its own pod is shown again (from then on the usual
    rule), or when the kubelet allocates its ID again (`allocated`: its earlier user is
    gone)."""

    timings: Timings = field(default_factory=Timings)
    restarted_at: float = float("-inf")
    """Monotonic time of the last kubelet restart seen (`kubelet_restarted`)."""
    missing: dict[Key, float] = field(default_factory=dict)
    """Holder -> asked_at of the first trusted answer that lacked it."""
    misses: dict[Key, int] = field(default_factory=dict)
    before: frozenset[Held] = frozenset()
    """The holders published at a kubelet restart and not shown since (`Held`)."""

    def restarted(self, now: float, shown: Holdings | None = None) -> None:
        """A kubelet restart, `shown` the holdings published before it (None: PodResources
        unreachable and back, maybe a new kubelet: the window only; a kubelet that really
        restarted made its `kubelet.sock` anew, and `kubelet_restarted` gives `shown`)."""
        self.restarted_at = now
        self.missing.clear()  # absences seen before the restart prove nothing after it
        self.misses.clear()
        self.before |= _held(shown) if shown is not None else frozenset()

    def allocated(self, resource: str, ids: Collection[str]) -> None:
        """The kubelet allocated these IDs again: their holders before its restart are gone."""
        self.before = frozenset(h for h in self.before if h[0] != resource or h[1] not in ids)

    @property
    def waiting(self) -> bool:
        """Holders of a kubelet restart are carried while its checkpoint lists their IDs."""
        return bool(self.before)

    def trusted(self, asked_at: float) -> bool:
        return asked_at >= self.restarted_at + self.timings.restart_settle

    def doubting(self, asked_at: float) -> bool:
        """Whether an answer asked at `asked_at` may lack pods that run."""
        return self.waiting or not self.trusted(asked_at)

    def apply(
        self,
        answer: Holdings,
        previous: Holdings | None,
        listed: Callable[[str, str], bool] = _none_listed,
    ) -> tuple[Holdings, int]:
        """The holdings to publish for `answer`, and how many holders it lacked that are
        carried (still held). `listed(resource, ID)`: whether the kubelet's checkpoint lists
        the ID (True when it cannot be read), asked for a holder shown before a restart and
        not since."""
        if self.before:
            pods = answer.pods()
            self.before = frozenset(h for h in self.before if (h[2], h[3]) not in pods)
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
                    if not h.listed or (resource, device_id, h.namespace, h.pod, h.container) in (
                        shown
                    ):
                        continue  # (an unlisted holder is added to each answer anew)
                    key = (resource, device_id, h)
                    held = (resource, device_id, h.namespace, h.pod, h.container) in self.before
                    if trusted and not (held and listed(resource, device_id)):
                        first = self.missing.setdefault(key, answer.asked_at)
                        misses = self.misses[key] = self.misses.get(key, 0) + 1
                        if misses >= 2 and answer.asked_at - first >= self.timings.gone_after:
                            continue  # gone, on trustworthy evidence
                    still.add(key)
                    carried += 1
                    merged.setdefault(resource, {}).setdefault(device_id, []).append(h)
        for forgotten in set(self.missing) - still:
            del self.missing[forgotten]
            self.misses.pop(forgotten, None)
        if self.before:  # (a holder let go is no longer carried as the restart's)
            self.before = self.before & {
                (r, d, h.namespace, h.pod, h.container) for r, d, h in still
            }
        answered = {(r, d) for r, ids in answer.by_resource.items() for d in ids}
        published = Holdings(
            answer.asked_at,
            answer.answered_at,
            {r: {d: tuple(hs) for d, hs in ids.items()} for r, ids in merged.items()},
            frozenset((r, d) for r, d, _ in still if (r, d) not in answered),
        )
        return published, carried
