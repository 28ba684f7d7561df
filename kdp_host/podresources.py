"""Who holds each device: the kubelet's PodResources API (v1), asked gently.

The Device Plugin API never says that a pod let go of a device. The kubelet's PodResources
service does: `List` names every pod it runs with the devices of each container, as the
plugins advertised them. One poller per host calls `List` every
`kubelet.podResourcesInterval` (and `GetAllocatableResources` now and then) and hands each
answer, as immutable `Holdings`, to its subscribers: the resources' release trackers and the
`/devices` view.

The kubelet rate-limits the service to 100 calls/s with a burst of 10 for every client and
method together (monitoring agents share it). One call per interval (5 s by default) is a
fraction of a percent of that; a call refused with RESOURCE_EXHAUSTED doubles the delay
(up to `MAX_BACKOFF`), so kdp-host never keeps another client from its share. A missing
socket, an old kubelet without the v1 API, or any other failure is one log line when the
state changes and a counted poll (`kdp_pod_resources_polls_total{result}`): everything else
keeps working, and the last answer stays (marked by its age in `/devices`).

An answer is not taken at its word when it lacks a container shown before: right after a
restart the kubelet answers from a pod manager it is still filling (or, while its API
source is away after one, without any API pod). `holdings.Settle` publishes such a holder
as still holding until it has been missing long enough, on answers that count. Nor when it
lacks an ID an Allocate handed out that no answer has shown since (`unlisted.Unlisted`: a
regular init container's).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import grpclib.client
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from .backoff import Backoff
from .files import Offload
from .holdings import Holdings, Settle, holdings_from, with_unlisted
from .logs import EventLogger
from .metric_labels import PodResourcesResult
from .metrics import Metrics
from .podresources_calls import allocatable_devices, list_pod_resources
from .timings import Timings
from .unlisted import Unlisted

CALL_TIMEOUT = 10.0
"""Seconds one PodResources call may take (the kubelet answers from memory)."""
MAX_BACKOFF = 60.0
"""Longest delay between two polls after refusals or failures."""
UNSUPPORTED_RETRY = 300.0
"""An old kubelet without PodResources v1 is asked again this rarely (it may be upgraded)."""
ALLOCATABLE_EVERY = 12
"""GetAllocatableResources is called with every poll while it lists nothing (no plugin has
registered yet), then every this many polls; so is it after a call that failed (a timeout:
an answer naming every device of a large node is not asked for again at every poll)."""
JITTER = 0.1
"""Polls are spread by up to this fraction of the delay, so hosts started together do not
call the kubelet in step."""
ASK_AGAIN_AFTER = 1.0
"""An answer a container start waits for (`answer_after`) is asked at once, but no sooner than
this after the last call (nor while the kubelet's rate limit is backed off from)."""

AllocatableListener = Callable[[Mapping[str, frozenset[str]], float], None]
"""Told each GetAllocatableResources answer (resource -> IDs) and when it was asked."""
PollState = Literal["off", "starting"] | PodResourcesResult


@dataclass
class PollerStatus:
    """What `/devices` says about PodResources (replaced whole, read from the HTTP thread)."""

    state: PollState = "starting"
    problem: str | None = None
    last_ok: float | None = None
    """Unix time of the last answered List."""


@dataclass
class PodResourcesPoller:
    """Asks the kubelet's PodResources `List` every `interval` and publishes `Holdings`."""

    socket: str
    interval: float
    metrics: Metrics
    log: EventLogger
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    holdings: Holdings | None = None
    allocatable: Mapping[str, frozenset[str]] | None = None
    """resource -> device IDs the kubelet could hand out, from GetAllocatableResources."""
    status: PollerStatus = field(default_factory=PollerStatus)
    unlisted: Unlisted | None = None
    """The IDs handed out that no answer has shown since (None: none is held so, and the
    restart rule takes every ID as listed by the kubelet's checkpoint)."""
    timings: Timings = field(default_factory=Timings)
    """The restart window and how long a holder missing from the answers is kept (`Settle`)."""
    offload: Offload | None = None
    """Where a large answer is decoded (`podresources_calls`; None: on the loop)."""
    _listeners: list[Callable[[Holdings], None]] = field(default_factory=list)
    _allocatable_listeners: list[AllocatableListener] = field(default_factory=list)
    _channel: grpclib.client.Channel | None = None
    _polls: int = 0
    _allocatable_supported: bool = True
    _allocatable_failed: bool = False
    """The last GetAllocatableResources call failed: the next waits for its turn."""
    _allocatable_asked: float = -math.inf
    _lists_changed: float = -math.inf
    """When a resource's list last changed (`lists_changed`, on `clock`)."""
    _backoff: Backoff = field(default_factory=Backoff)
    _polled: asyncio.Event = field(default_factory=asyncio.Event)
    _wanted: asyncio.Event = field(default_factory=asyncio.Event)
    _settle: Settle = field(default_factory=Settle)
    _incomplete: int = 0

    def __post_init__(self) -> None:
        self._backoff = Backoff(initial=self.interval * 2, maximum=max(MAX_BACKOFF, self.interval))
        self._settle = Settle(self.timings)
        self.log = self.log.bind(component="podresources", socket=self.socket)
        self.metrics.add_pod_resources()

    def subscribe(self, listener: Callable[[Holdings], None]) -> Callable[[], None]:
        """Call `listener` with every new answer (and at once with the last one, if any)."""
        self._listeners.append(listener)
        if self.holdings is not None:
            listener(self.holdings)

        def cancel() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return cancel

    def lists_changed(self) -> None:
        """A resource's list changed (what the kubelet may hand out): GetAllocatableResources
        is asked again at the next poll, and at the one after where that one came within
        `Timings.allocation_settle` of the change (the kubelet may not have taken it yet), so
        `/devices`' `kubeletAllocatable` lags the kubelet by a poll or two, not 12."""
        self._lists_changed = self.clock()

    def subscribe_allocatable(self, listener: AllocatableListener) -> Callable[[], None]:
        """Call `listener` with every GetAllocatableResources answer and the `clock` time
        it was asked at."""
        self._allocatable_listeners.append(listener)

        def cancel() -> None:
            with contextlib.suppress(ValueError):
                self._allocatable_listeners.remove(listener)

        return cancel

    def kubelet_restarted(self) -> None:
        """The kubelet restarted: for `Timings.restart_settle` s its answers end no holding,
        and none shown before it whose ID its checkpoint lists until the file no longer
        does (or its pod is shown again, or the ID allocated again: `Settle`)."""
        self._settle.restarted(self.clock(), self.holdings)

    def nudge(self, write: Callable[[], bool]) -> None:
        """How to make the kubelet write its checkpoint (`Unlisted.nudge`)."""
        if self.unlisted is not None:
            self.unlisted.nudge = write

    @property
    def shown(self) -> Holdings | None:
        """The holdings as last published, with each ID an Allocate handed out since that no
        answer has shown yet held by an unlisted holder (`/devices`, `status`: a device
        allocated a moment ago is held, not free, until the next answer: hostile16 F1)."""
        holdings, unlisted = self.holdings, self.unlisted
        if holdings is None or unlisted is None or not unlisted.handed:
            return holdings
        return with_unlisted(holdings, unlisted.by_resource())

    @property
    def unshown(self) -> int:
        """Changes with the IDs handed out that no answer has shown (`/devices`' generation)."""
        return 0 if self.unlisted is None else hash(frozenset(self.unlisted.handed))

    @property
    def waiting(self) -> bool:
        """Holders shown before a kubelet restart and not since are carried (`Settle`)."""
        return self._settle.waiting

    def allocated(self, resource: str, ids: Sequence[str]) -> None:
        """An Allocate handed these IDs out: held until an answer shows them (`unlisted`);
        their holders before a kubelet restart are gone (`Settle`)."""
        if self.unlisted is not None:
            self.unlisted.allocated(resource, ids)
        self._settle.allocated(resource, ids)

    async def run(self) -> None:
        """Poll until cancelled."""
        try:
            while True:
                delay = await self.poll()
                await self._rest(delay * (1 + random.uniform(-JITTER, JITTER)))
        finally:
            self.close()

    async def _rest(self, delay: float) -> None:
        """Wait `delay` before the next poll, or `ASK_AGAIN_AFTER` once an answer is wanted
        (`answer_after`), unless backing off from the kubelet's rate limit."""
        loop = asyncio.get_running_loop()
        soonest = loop.time() + min(delay, ASK_AGAIN_AFTER)
        if self.status.state == "rate_limited":
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wanted.wait()
                    await asyncio.sleep(max(0.0, soonest - loop.time()))
        self._wanted.clear()

    @property
    def answering(self) -> bool:
        """Whether there is a PodResources to ask (not `absent` nor `unsupported`)."""
        return self.status.state not in ("absent", "unsupported")

    async def answer_after(self, after: float, timeout: float) -> bool:
        """Wait up to `timeout` for an answer asked after `after` (`clock`), the next poll
        hurried (`_rest`): a container start that joined a shared device (`release_join`).
        Its subscribers have heard it when this returns True."""
        try:
            async with asyncio.timeout(timeout):
                while self.holdings is None or self.holdings.asked_at <= after:
                    polled = self._polled
                    self._wanted.set()
                    await polled.wait()
        except TimeoutError:
            return False
        return True

    async def poll_soon(self, timeout: float) -> bool:
        """Wait up to `timeout` for the next poll to finish (whatever its result)."""
        polled = self._polled
        try:
            async with asyncio.timeout(timeout):
                await polled.wait()
        except TimeoutError:
            return False
        return True

    async def poll(self) -> float:
        """One round: List (and now and then GetAllocatableResources). Returns the delay
        before the next round."""
        try:
            return await self._poll()
        finally:
            polled, self._polled = self._polled, asyncio.Event()
            polled.set()

    async def _poll(self) -> float:
        if not _is_socket(self.socket):
            self.close()
            self._set_state("absent", "no socket (kubelet too old, or the directory not mounted)")
            return self.interval
        channel = self._open()
        asked_at = self.clock()
        try:
            response = await list_pod_resources(channel, CALL_TIMEOUT, self.offload)
        except GRPCError as exc:
            return self._refused(exc)
        except (
            OSError,
            ConnectionError,
            StreamTerminatedError,
            ProtocolError,
            TimeoutError,
        ) as exc:
            self.close()
            self._set_state("error", f"{type(exc).__name__}: {exc}".rstrip(": "))
            return self._backoff.next_delay()
        self._backoff.reset()
        if self.status.state != "ok" and self.status.last_ok is not None:
            self._settle.restarted(asked_at)  # unreachable, then back: maybe a new kubelet
        answer = holdings_from(response, asked_at, self.wall(), self.holdings)
        holdings, carried = await self._settled(answer)
        self.holdings = holdings
        if self.status.state != "ok":
            self.log.info("pod_resources_connected")
        self.status = PollerStatus("ok", None, holdings.answered_at)
        doubting = self._settle.doubting(asked_at)
        if carried and doubting:
            if carried != self._incomplete:
                self.log.warning(
                    "pod_resources_incomplete",
                    holders_missing=carried,
                    detail="an answer soon after a kubelet restart, or one lacking pods shown "
                    "before it whose devices its checkpoint lists: they are still taken as "
                    "holding their devices",
                )
            self._count("incomplete")
        else:
            self._count("ok")
        self._incomplete = carried if doubting else 0
        for listener in list(self._listeners):  # before any await: one consistent step
            listener(holdings)
        if self._allocatable_supported and (
            (not self.allocatable and not self._allocatable_failed)
            or self._polls % ALLOCATABLE_EVERY == 0
            or self._allocatable_asked < self._lists_changed + self.timings.allocation_settle
        ):
            await self._read_allocatable(channel)
        self._polls += 1
        return self.interval

    async def _settled(self, answer: Holdings) -> tuple[Holdings, int]:
        """The holdings to publish for `answer` (`Settle`, then the unlisted IDs), and how
        many holders it lacked that are carried."""
        unlisted, settle = self.unlisted, self._settle
        if unlisted is None:
            return settle.apply(answer, self.holdings, _listed)
        unlisted.shown(answer)
        waiting = settle.waiting
        if unlisted.wanted or waiting:
            await unlisted.refresh(answer.answered_at, waiting)  # (off the loop, if changed)
        holdings, carried = settle.apply(answer, self.holdings, unlisted.listed)
        if waiting and not settle.waiting:
            self.log.info(
                "kubelet_restart_settled",
                detail="every holder shown before the kubelet's restart is shown again or let go",
            )
        return with_unlisted(holdings, unlisted.by_resource()), carried

    async def _read_allocatable(self, channel: grpclib.client.Channel) -> None:
        self._allocatable_asked = asked_at = self.clock()
        try:
            allocatable = await allocatable_devices(channel, CALL_TIMEOUT, self.offload)
        except GRPCError as exc:
            if exc.status == Status.UNIMPLEMENTED:
                self._allocatable_supported = False
                self.log.info("pod_resources_allocatable_unsupported")
            self._allocatable_failed = True
            return
        except (OSError, ConnectionError, StreamTerminatedError, ProtocolError, TimeoutError):
            self._allocatable_failed = True
            return
        self.allocatable, self._allocatable_failed = allocatable, False
        for listener in list(self._allocatable_listeners):
            listener(allocatable, asked_at)

    def _refused(self, exc: GRPCError) -> float:
        if exc.status == Status.RESOURCE_EXHAUSTED:
            delay = self._backoff.next_delay()
            self._set_state("rate_limited", f"refused by the kubelet's rate limit: {exc.message}")
            self.log.info("pod_resources_backing_off", seconds=round(delay, 3))
            return delay
        if exc.status == Status.UNIMPLEMENTED:
            self._set_state(
                "unsupported",
                "the kubelet does not serve PodResources v1 List (Kubernetes 1.20 or newer has it)",
            )
            return max(self.interval, UNSUPPORTED_RETRY)
        self.close()
        self._set_state("error", f"{exc.status.name}: {exc.message}")
        return self._backoff.next_delay()

    def _set_state(self, state: PodResourcesResult, problem: str) -> None:
        previous = self.status
        self.status = PollerStatus(state, problem, previous.last_ok)
        self._count(state)
        if (previous.state, previous.problem) != (state, problem):
            self.log.warning("pod_resources_unavailable", state=state, reason=problem)

    def _count(self, result: PodResourcesResult) -> None:
        self.metrics.pod_resources_polls.labels(result).inc()
        self.metrics.pod_resources_up.set(1 if result in ("ok", "incomplete") else 0)

    def _open(self) -> grpclib.client.Channel:
        if self._channel is None:
            self._channel = grpclib.client.Channel(path=self.socket)
        return self._channel

    def close(self) -> None:
        """Close the connection to the kubelet (`run` does on its way out; whoever calls
        `poll` itself does when done). A later poll opens it again."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()


def _listed(_resource: str, _device_id: str) -> bool:
    return True  # (no checkpoint to ask: every ID is taken as listed)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
