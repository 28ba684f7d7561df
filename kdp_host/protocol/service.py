"""The DevicePlugin gRPC service of one resource.

Each ListAndWatch message is the complete device list, sent as the bytes
`ListAndWatchEncoder` (`lists.py`) built once per snapshot. The server's codec (`codec.py`)
sends those bytes as they are and runs the Allocate and GetPreferredAllocation messages
through `wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import grpclib
import grpclib.server
from grpclib.const import Status

from ..allocation import AllocationBuilder, AllocationError, HookFailed
from ..api.v1beta1 import (
    AllocateRequest,
    AllocateResponse,
    ContainerAllocateResponse,
    DevicePluginBase,
    DevicePluginOptions,
    Empty,
    ListAndWatchResponse,
    PreferredAllocationRequest,
    PreferredAllocationResponse,
    PreStartContainerRequest,
    PreStartContainerResponse,
)
from ..config import ResourceConfig
from ..device_table import DeviceTable
from ..devices import Snapshot
from ..files import Offload
from ..handed_out import HandedOut
from ..identity import Identity, not_a_node
from ..logs import EventLogger
from ..metric_histograms import Observer
from ..metric_series import CounterSeries
from ..metrics import Metrics
from ..ownership_claims import Unresolvable
from ..ownership_fence import Unfenced
from ..ownership_shared import PlaceOwned
from ..preferred_need import PreferredNeed
from ..rules import named_ids
from ..start_budget import StartBudget
from .answers import AnswerPlan, AnswerPlans, plan_answer
from .codec import EncodedMessage, ReceivedBytes
from .kept import Bookings, CdiWritten, Fence, keep
from .lists import ListAndWatchEncoder, Wakes
from .pre_start import PRE_START_CONTAINER, PreStartServing
from .preferred_serving import PREFERRED_ALLOCATION, PreferredServing
from .refusal import refusal

if TYPE_CHECKING:  # made where the config chooses them (`features`)
    from ..hooks import AllocateHook, PreStartHook
    from ..release import ReleaseTracker

LIST_AND_WATCH = "/v1beta1.DevicePlugin/ListAndWatch"


class DevicePluginService(DevicePluginBase):
    """The generated DevicePlugin service, with ListAndWatch served by a handler of its own
    (`__mapping__`, grpclib's servable protocol): `device_lists` driven under `aclosing`."""

    def __init__(
        self,
        config: ResourceConfig,
        table: DeviceTable,
        encoder: ListAndWatchEncoder,
        metrics: Metrics,
        log: EventLogger,
        *,
        on_stream_lost: Callable[[], None] | None = None,
        on_listed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        pre_start: PreStartHook | None = None,
        allocate_hook: AllocateHook | None = None,
        release: ReleaseTracker | None = None,
        bookings: Bookings | None = None,
        handed: HandedOut | None = None,
        allocated: Callable[[str, Sequence[str]], None] | None = None,
        fence: Fence | None = None,
        cdi_written: CdiWritten | None = None,
        preferred: PreferredNeed | None = None,
        offload: Offload | None = None,
        place_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._place_refused = place_refused  # (`answer_checks.NeedsWatch.answer_refused`)
        self._allocated = allocated  # told each Allocate's IDs (`PodResourcesPoller`)
        self._fence = fence  # (the first list and Allocate answers wait for it)
        self._table = table
        self._encoder = encoder
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._on_stream_lost = on_stream_lost
        self._on_listed = on_listed  # told after each list sent (the first one counts)
        self._builder = AllocationBuilder(config)
        self._plans = AnswerPlans(self._builder)
        self._pre_start = pre_start
        self._allocate_hook = allocate_hook
        self._release = release
        self._bookings = bookings
        self._handed = handed  # what each Allocate handed out (preStart, CDI, release)
        self._cdi_written = cdi_written  # (an answer waits for its CDI entries: `cdi_disk`)
        self._closing = False
        self._wakes = Wakes()  # of the open streams
        self._open_streams = 0
        self._drained: asyncio.Future[None] | None = None  # (`end_streams`: streams ended)
        self._pre_start_required = pre_start is not None or release is not None
        self._pre_start_serving = PreStartServing(release, pre_start, log)
        self._preferred = preferred or PreferredNeed(config, table)  # (the resource's follows)
        self._preferred_serving = PreferredServing(  # (large requests read off the loop)
            config, table, self._preferred, metrics, log, clock, offload
        )

    # The series every call records, looked up once, at first use (a histogram's series
    # appear with its first observation): a lookup costs what a call's bookkeeping does.

    @functools.cached_property
    def _allocated_ok(self) -> CounterSeries:
        return self._metrics.allocations.labels(self._config.name, "ok")

    @functools.cached_property
    def _allocate_seconds(self) -> Observer:
        return self._metrics.allocate_seconds.labels(self._config.name)

    def resend(self) -> bool:
        """The list again on each open stream (`Wakes.resend`); False: none is open."""
        return self._open_streams > 0 and not self._closing and self._wakes.resend()

    async def end_streams(self, timeout: float = 0.5) -> None:
        """End every ListAndWatch stream with a clean end-of-stream and wait until sent."""
        self._closing = True
        self._wakes.close()
        if self._open_streams:
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._drained}, timeout=timeout)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """The generated handlers, except ListAndWatch (`_serve_list_and_watch`),
        PreStartContainer (`PreStartServing.serve`: it reads the call's deadline) and
        GetPreferredAllocation (`PreferredServing.serve`: it reads its request's bytes)."""
        mapping = super().__mapping__()
        for route, serve, request in (
            (LIST_AND_WATCH, self._serve_list_and_watch, None),
            (PRE_START_CONTAINER, self._pre_start_serving.serve, None),
            (PREFERRED_ALLOCATION, self._preferred_serving.serve, ReceivedBytes),
        ):
            generated = mapping[route]
            request_type = request or generated.request_type
            mapping[route] = grpclib.const.Handler(
                serve, generated.cardinality, request_type, generated.reply_type
            )
        return mapping

    @property
    def options(self) -> DevicePluginOptions:
        """The options, the same for every list (GetPreferredAllocation where the config
        can make it matter: `PreferredNeed`; a list change never calls for a registration)."""
        return DevicePluginOptions(
            pre_start_required=self._pre_start_required,
            get_preferred_allocation_available=self._preferred.announced,
        )

    async def get_device_plugin_options(self, message: Empty) -> DevicePluginOptions:
        return self.options

    async def _serve_list_and_watch(self, stream: grpclib.server.Stream[Empty, Any]) -> None:
        """Drive `device_lists` under aclosing (its `finally` runs when the client cancels).
        When the lists end (the host closes the server) the trailers are sent here, so
        `end_streams` knows the client got a clean end-of-stream before the connection
        closes. When the client ends the last open stream (the kubelet drops a client it
        replaced, docs/kubelet-contract.md §9), `on_stream_lost` tells the resource to
        register again; a second client (a debugging tool) closing its stream does not."""
        await stream.recv_message()
        self._open_streams += 1
        try:
            async with contextlib.aclosing(self.device_lists()) as lists:
                async for encoded in lists:
                    await stream.send_message(encoded)
                    if self._on_listed is not None:
                        self._on_listed()
            await stream.send_trailing_metadata()
        finally:
            self._open_streams -= 1
            if self._open_streams == 0:
                if self._drained is not None and not self._drained.done():
                    self._drained.set_result(None)
                if not self._closing and self._on_stream_lost is not None:
                    self._on_stream_lost()

    async def device_lists(self) -> AsyncGenerator[EncodedMessage, None]:
        """The ListAndWatchResponse of every table version, until the host ends the streams."""
        name = self._config.name
        streams = self._metrics.list_and_watch_streams.labels(name)
        updates = self._metrics.list_and_watch_updates.labels(name)
        streams.inc()
        self._log.info("list_and_watch_opened")
        # The stream waits on one event, set by the table's listener and by end_streams: no
        # task of its own, and a new version wakes it in the loop turn that publishes it.
        wake = asyncio.Event()
        stop_listening = self._table.add_listener(lambda _snapshot: wake.set())
        try:
            if self._fence is not None:  # (the kubelet's checkpoint read again first)
                await self._fence.listing()  # (no list sent again until it is: `resend`)
            self._wakes.events.add(wake)
            table = self._table
            snapshot = table.snapshot
            while not self._closing:
                resends = self._wakes.resends
                data = await self._encoder.encode(snapshot)
                yield EncodedMessage(ListAndWatchResponse, data)
                updates.inc()
                while table.snapshot.version <= snapshot.version and self._wakes.quiet(resends):
                    wake.clear()
                    await wake.wait()
                snapshot = table.snapshot
        finally:
            stop_listening()
            self._wakes.events.discard(wake)
            streams.dec()
            by_peer = not self._closing
            self._log.info("list_and_watch_closed", by="kubelet" if by_peer else "plugin")

    async def get_preferred_allocation(
        self, message: PreferredAllocationRequest
    ) -> PreferredAllocationResponse:
        """A call without its bytes (served: `PreferredServing.serve`)."""
        return await self._preferred_serving.answer(message)

    async def allocate(self, message: AllocateRequest) -> AllocateResponse:
        started = self._clock()
        name = self._config.name
        if self._fence is not None:  # (raises the refusal while the checkpoint is unread)
            await self._fence.allocating()
        snapshot = self._table.snapshot
        requests = tuple(tuple(request.devices_ids) for request in message.container_requests)
        try:
            if not requests:
                raise AllocationError(f"{name}: Allocate request has no container requests")
            plan = self._plans.plan(snapshot, requests)  # (made at its first Allocate)
            if self._handed is not None:
                self._handed.record.check_room(name, snapshot, plan.booked)
        except AllocationError as exc:
            raise self._refused(str(exc)) from None
        if self._allocate_hook is not None:
            responses = list(plan.responses)
            await self._add_hook_extras(snapshot, message, responses)
            plan = plan_answer(self._builder, snapshot, requests, responses)
        booked = list(plan.booked)
        real, reached = await self._hand_real_paths(plan)
        bookings = self._bookings
        fence = nullcontext() if bookings is None else bookings.fenced(name, booked, reached, real)
        try:  # (another host running on stateDir: under its lock, `ownership_fence`)
            async with fence:
                if bookings is not None:  # the kubelet booked these IDs: kept before it hears
                    places, names = plan.handed.places, plan.handed.cdi_names  # so (`book`)
                    handed = plan.handed_as(reached)
                    await bookings.book(name, booked, places, names, wait=False, handed_as=handed)
                if self._release is not None:  # (an ID asked again: its earlier user is gone)
                    self._release.asked(booked)
                await self._kept(snapshot, requests, reached, len(requests))
        except PlaceOwned as exc:
            self._place_refused()
            raise self._refused(str(exc)) from None
        except Unfenced as exc:
            raise self._refused(f"{name}: {exc}", unsaved=len(requests)) from None
        if self._allocated is not None:
            self._allocated(name, booked)
        if self._release is not None:  # used from now, as the record keeps it
            for ids in requests:
                self._release.taken(ids)
        self._allocated_ok.inc(len(requests))
        self._allocate_seconds.observe(self._clock() - started)
        return AllocateResponse(container_responses=plan.answer(real))

    async def _kept(
        self, snap: Snapshot, asked: Sequence[Sequence[str]], reached: dict[str, Identity], n: int
    ) -> None:
        """Record the answer and wait for its CDI entries (`kept.keep`); refused (UNAVAILABLE)
        when either is not on disk within the limit."""
        name, ids = self._config.name, [i for request in asked for i in request]
        why = await keep(self._handed, self._bookings, name, snap, ids, reached)
        if why is None and self._cdi_written is not None:
            why = await self._cdi_written(snap, asked)  # (`cdi_disk`)
        if why is None:
            return
        raise self._refused(f"{name}: cannot allocate {named_ids(ids)}: {why}", unsaved=n)

    def _refused(self, reason: str, *, unsaved: int = 0) -> grpclib.GRPCError:
        """Count and log a refused Allocate; the error it is answered with: INVALID_ARGUMENT,
        or UNAVAILABLE for `unsaved` container requests whose answer is not kept on disk."""
        result = "unsaved" if unsaved else "invalid"
        self._metrics.allocations.labels(self._config.name, result).inc(unsaved or 1)
        if unsaved:
            self._log.error("allocate_refused", reason=reason, result=result)
            return refusal(Status.UNAVAILABLE, reason)
        self._log.warning("allocate_refused", reason=reason)
        return refusal(Status.INVALID_ARGUMENT, reason)

    async def _hand_real_paths(
        self, plan: AnswerPlan
    ) -> tuple[dict[str, str], dict[str, Identity]]:
        """Hand out every host path of the answer (DeviceSpecs, mounts, its CDI names' nodes:
        hostile15 F4) as the real path it reaches, checked to name what it reaches and, for a
        device's own path, what was claimed (`handed_reals`): a link re-pointed after the
        Allocate does not change what the container gets (`AnswerPlan.answer`). Refused
        (INVALID_ARGUMENT) when a path cannot be resolved so, a directory it mounts holds what
        another device owns (`PlaceOwned`), a node is linked below a pod's tree, or a
        DeviceSpec reaches no node. The real path of each, and what each reached."""
        if not plan.paths or self._bookings is None:
            return {}, {}
        name = self._config.name
        try:
            real, reached = await self._bookings.hand_out_reaching(
                name, plan.booked, plan.paths, plan.read_only
            )
            if why := not_a_node(plan.nodes, reached):  # (hostile16 F6)
                raise Unresolvable(why)
        except (Unresolvable, PlaceOwned) as exc:
            self._place_refused()  # (what it hands out: the needs look again)
            raise self._refused(f"{name}: cannot allocate: {exc}") from None
        return real, reached  # (what each reached: `handed_out.Handed.reached`)

    async def _add_hook_extras(
        self,
        snapshot: Snapshot,
        message: AllocateRequest,
        responses: list[ContainerAllocateResponse],
    ) -> None:
        """Run allocate.command for every container request at once, and rebuild each
        response with its output (the responses checked before are replaced)."""
        hook = self._allocate_hook
        assert hook is not None
        try:
            async with asyncio.TaskGroup() as group:
                runs = [
                    group.create_task(hook.response(self._builder, snapshot, request.devices_ids))
                    for request in message.container_requests
                ]
        except* (HookFailed, AllocationError) as failures:
            first = failures.exceptions[0]
            name, count = self._config.name, len(message.container_requests)
            if isinstance(first, HookFailed):
                self._metrics.allocations.labels(name, "hook_failed").inc(count)
                raise refusal(first.status, str(first)) from None
            # the devices' own env could not be given to the command (it did not run)
            raise self._refused(str(first)) from None
        responses[:] = [run.result() for run in runs]

    async def pre_start_container(
        self, message: PreStartContainerRequest
    ) -> PreStartContainerResponse:
        """A call without its stream (served: `PreStartServing.serve`): 30 s from now."""
        budget = StartBudget.of_call(None)
        return await self._pre_start_serving.answer(message.devices_ids, budget)
