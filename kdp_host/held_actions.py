"""What kdp-host does itself about a device unplugged under a running pod (issue 20 item 3,
GDP#74), when the config asks (`heldMissing`, off by default):

- `events`: a Warning Event, reason `DeviceMissing`, on each pod holding a device that goes
  missing, once per (pod, device, state) as it appears: a device `unhealthy` then `gone`
  is two Events, a device missing through ten checks is one; back and missing again is a
  new one. Held across a restart of the resource's runtime (a reload), not of the host.
- `deletePods`: the deletion of such a pod once the device has been missing for `after`
  without a break, if the pod is on this node and its labels match `selector` (read just
  before, and the deletion is conditional on that pod's uid). A failed deletion is tried
  again `RETRY` later while the device stays missing; a pod outside the selector is kept.

The resource's held-missing check (`ResourceRuntime._check_held_devices`, the one rule of
what is missing) tells `update` what is missing now at every check; `update` only queues
work, so neither the scan loop nor an Allocate ever waits on the API server. One worker
(`run`) makes the calls one at a time, each bounded by kubeapi's timeouts. Events are
rate-bounded by a token bucket (`EVENT_BURST` at once, then one per `EVENT_EVERY` seconds,
like client-go's event spam filter); an Event over the bound or over a full queue is
dropped. Every outcome is counted (`kdp_held_missing_actions`) and each failure logged with
its reason; the metric `kdp_devices_held_missing` and the `held_device_missing` line stay
whatever happens here.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from .config import HeldMissingConfig
from .holdings import Holder
from .kubeapi import ApiError
from .logs import EventLogger
from .metric_labels import HeldMissingAction, HeldMissingResult
from .metrics import Metrics
from .pod_api import PodCalls, pod_event

EVENT_REASON = "DeviceMissing"
EVENT_BURST = 25
EVENT_EVERY = 10.0
"""Seconds per Event once the burst is spent."""
QUEUE_LIMIT = 256
"""Calls waiting for the worker at most; an Event beyond is dropped (a deletion waits for
its next try)."""
RETRY = 60.0
"""A deletion that failed is tried again this much later at the earliest (`after` if longer)."""
WHY = {
    "gone": "it is gone from the device list (unplugged?)",
    "unhealthy": "its driver reports it unhealthy (or its node is gone)",
    "replaced": "a host path handed out reaches another device node or file (or nothing) now",
}
FAILURES = (ApiError, OSError, ssl.SSLError, TimeoutError, ValueError)
"""What a call to the API server raises when it fails (kubeapi)."""


@dataclass(frozen=True)
class MissingHold:
    """A pod holding a missing device (its containers that hold it)."""

    device: str
    state: str
    """`gone`, `unhealthy` or `replaced` (the `held_device_missing` line's)."""
    namespace: str
    pod: str
    containers: tuple[str, ...]


def missing_holds(
    states: Mapping[str, str], held: Mapping[str, tuple[Holder, ...]]
) -> list[MissingHold]:
    """Per missing device (`states`: device -> state) and pod holding it, one MissingHold;
    holders no PodResources answer names (`UNLISTED`) have no pod to act on."""
    out = []
    for device, state in sorted(states.items()):
        pods: dict[tuple[str, str], list[str]] = {}
        for holder in held.get(device, ()):
            if holder.listed:
                pods.setdefault((holder.namespace, holder.pod), []).append(holder.container)
        for (namespace, pod), containers in sorted(pods.items()):
            out.append(MissingHold(device, state, namespace, pod, tuple(sorted(containers))))
    return out


@dataclass
class TokenBucket:
    """At most `burst` actions at once, one more every `every` seconds."""

    burst: int
    every: float
    clock: Callable[[], float] = time.monotonic
    _tokens: float = -1.0
    _at: float = 0.0

    def take(self) -> bool:
        now = self.clock()
        if self._tokens < 0:
            self._tokens, self._at = float(self.burst), now
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) / self.every)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


PodKey = tuple[str, str, str, str]
"""(resource, namespace, pod, device): a pod holding a missing device, for `deletePods`."""


class HeldMissingActions:
    """The actions of `heldMissing` for every resource of the host (`run` makes the calls)."""

    def __init__(
        self,
        config: HeldMissingConfig,
        calls: PodCalls | None,
        node: str,
        metrics: Metrics,
        log: EventLogger,
        problem: str | None = None,
    ) -> None:
        self.config = config
        self.calls = calls
        """None: no API server to call (`problem` says why); every action is `unreachable`."""
        self.node = node
        self.problem = problem
        self.log = log
        self._metrics = metrics
        self.bucket = TokenBucket(EVENT_BURST, EVENT_EVERY)
        self._queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(QUEUE_LIMIT)
        self._shown: dict[str, set[tuple[str, str, str, str]]] = {}
        """Per resource, the (namespace, pod, device, state) of the last check."""
        self._since: dict[PodKey, asyncio.TimerHandle] = {}
        """Pods holding a missing device, with the timer that deletes them."""
        self._dropping = False

    def update(
        self, resource: str, states: Mapping[str, str], held: Mapping[str, tuple[Holder, ...]]
    ) -> None:
        """What is missing of `resource` now (every check, also when nothing is: `states`,
        device -> state, and who holds each, `held`): queues an Event for each (pod, device,
        state) new since the last check, and starts (or cancels) the deletion timer of each
        pod."""
        now = {(h.namespace, h.pod, h.device, h.state): h for h in missing_holds(states, held)}
        if self.config.events:
            for key in sorted(now.keys() - self._shown.get(resource, set())):
                self._event(resource, now[key])
        self._shown[resource] = set(now)
        if self.config.delete_pods is None:
            return
        pods = {(resource, h.namespace, h.pod, h.device) for h in now.values()}
        for key in [k for k in self._since if k[0] == resource and k not in pods]:
            self._since.pop(key).cancel()
        for key in sorted(pods - self._since.keys()):
            self._arm(key, self.config.delete_pods.after)

    @property
    def waiting(self) -> set[PodKey]:
        """The pods whose deletion is timed or done (`deletePods`), as (resource, namespace,
        pod, device)."""
        return set(self._since)

    def forget(self, resource: str) -> None:
        """The resource's runtime stopped: no deletion for it until it says again (its next
        runtime starts the wait anew); the Events shown stay shown."""
        for key in [k for k in self._since if k[0] == resource]:
            self._since.pop(key).cancel()

    async def run(self) -> None:
        """Make the queued calls, one at a time, until cancelled."""
        if self.calls is None:
            self.log.error("held_missing_actions_unavailable", reason=self.problem)
        try:
            while True:
                job = await self._queue.get()
                await job()
        finally:
            for handle in self._since.values():
                handle.cancel()
            self._since.clear()

    # ----------------------------------------------------------------- Events

    def _event(self, resource: str, hold: MissingHold) -> None:
        if self._queue.full() or not self.bucket.take():  # (a token only for a queued one)
            self._count(resource, "event", "dropped")
            if not self._dropping:  # (once per run of drops: the gauge and log line stay)
                self.log.warning("held_missing_events_dropped", resource=resource,
                                 burst=EVENT_BURST, every=EVENT_EVERY)  # fmt: skip
            self._dropping = True
            return
        self._dropping = False
        self._queue.put_nowait(lambda: self._send_event(resource, hold))

    async def _send_event(self, resource: str, hold: MissingHold) -> None:
        fields = dict(resource=resource, namespace=hold.namespace, pod=hold.pod,
                      device=hold.device, state=hold.state)  # fmt: skip
        try:
            if self.calls is None:
                raise ApiError(self.problem or "no Kubernetes API")
            pod = await self.calls.pod(hold.namespace, hold.pod)
            if pod is None or pod.node != self.node:
                self._count(resource, "event", "pod_gone")
                return
            message = (
                f"Device {hold.device} of {resource} held by container "
                f"{', '.join(hold.containers)} is {hold.state}: {WHY.get(hold.state, '')}; "
                "the container keeps running without it (kdp-host on node "
                f"{self.node})"
            )
            event = pod_event(hold.namespace, hold.pod, pod.uid, reason=EVENT_REASON,
                              message=message, node=self.node)  # fmt: skip
            await self.calls.create_event(hold.namespace, event)
        except FAILURES as exc:
            result = self._failed(resource, "event", exc)
            self.log.warning("held_missing_event_failed", result=result, reason=str(exc), **fields)
            return
        self._count(resource, "event", "sent")
        self.log.info("held_missing_event", reason=EVENT_REASON, **fields)

    # ----------------------------------------------------------------- deletions

    def _arm(self, key: PodKey, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._since[key] = loop.call_later(delay, self._due, key)

    def _due(self, key: PodKey) -> None:
        """The pod has held a missing device for `after`: delete it (through the worker)."""
        if key not in self._since:
            return
        if self._queue.full():
            self._arm(key, self._retry())
            return
        self._queue.put_nowait(lambda: self._delete(key))

    def _retry(self) -> float:
        after = self.config.delete_pods.after if self.config.delete_pods else RETRY
        return max(after, RETRY)

    async def _delete(self, key: PodKey) -> None:
        resource, namespace, name, device = key
        selector = self.config.delete_pods.selector if self.config.delete_pods else None
        if key not in self._since or selector is None:
            return  # (back, or its runtime stopped, while queued)
        fields = dict(resource=resource, namespace=namespace, pod=name, device=device)
        try:
            if self.calls is None:
                raise ApiError(self.problem or "no Kubernetes API")
            pod = await self.calls.pod(namespace, name)
            if pod is None or pod.node != self.node:
                self._count(resource, "delete", "pod_gone")
                return
            if any(pod.labels.get(k) != v for k, v in selector.items()):
                self._count(resource, "delete", "not_selected")
                why = "its labels do not match deletePods.selector"
                self.log.info("held_missing_pod_kept", why=why, **fields)
                return
            deleted = await self.calls.delete_pod(namespace, name, pod.uid)
        except FAILURES as exc:
            result = self._failed(resource, "delete", exc)
            retry = self._retry()
            self.log.warning("held_missing_pod_delete_failed", result=result, reason=str(exc),
                             retry_in=retry, **fields)  # fmt: skip
            if key in self._since:
                self._arm(key, retry)
            return
        self._count(resource, "delete", "deleted" if deleted else "pod_gone")
        if deleted:
            self.log.warning("held_missing_pod_deleted", uid=pod.uid, **fields)

    # ----------------------------------------------------------------- outcomes

    def _failed(
        self, resource: str, action: HeldMissingAction, exc: Exception
    ) -> HeldMissingResult:
        """`refused` when the API server answered (ApiError with an HTTP status), else
        `unreachable`."""
        answered = isinstance(exc, ApiError) and exc.status is not None
        result: HeldMissingResult = "refused" if answered else "unreachable"
        self._count(resource, action, result)
        return result

    def _count(self, resource: str, action: HeldMissingAction, result: HeldMissingResult) -> None:
        self._metrics.held_missing_actions.labels(resource, action, result).inc()
