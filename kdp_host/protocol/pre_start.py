"""PreStartContainer of one resource: the owed releases of the container's devices, then
`preStart.command`, within the call's one budget (`start_budget.StartBudget`): the deadline
the kubelet sent with the call (docs/kubelet-contract.md §8), read from grpclib's stream."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpclib
import grpclib.server

from ..allocation import HookFailed
from ..api.v1beta1 import PreStartContainerRequest, PreStartContainerResponse
from ..logs import EventLogger
from ..start_budget import StartBudget
from .refusal import refusal

if TYPE_CHECKING:  # made where the config chooses them (`features`)
    from ..hooks import PreStartHook
    from ..release import ReleaseTracker

PRE_START_CONTAINER = "/v1beta1.DevicePlugin/PreStartContainer"


@dataclass
class PreStartServing:
    """Answers a resource's PreStartContainer calls (only asked for when it has a release or
    a preStart: `options.pre_start_required`)."""

    release: ReleaseTracker | None
    pre_start: PreStartHook | None
    log: EventLogger
    clock: Callable[[], float] = time.monotonic

    async def serve(
        self, stream: grpclib.server.Stream[PreStartContainerRequest, PreStartContainerResponse]
    ) -> None:
        """The handler: the call's budget from the deadline it came with (grpclib's
        `Stream.deadline`; none: the kubelet's documented 30 s)."""
        request = await stream.recv_message()
        assert request is not None
        deadline = stream.deadline
        remaining = None if deadline is None else deadline.time_remaining()
        budget = StartBudget.of_call(remaining, self.clock)
        await stream.send_message(await self.answer(request.devices_ids, budget))

    async def answer(
        self, device_ids: Sequence[str], budget: StartBudget
    ) -> PreStartContainerResponse:
        """Wait for the owed releases of the container's devices (kept in time for the
        preStart's timeout), then run preStart.command; a HookFailed is the call's status."""
        try:
            if self.release is not None:
                timeout = None if self.pre_start is None else self.pre_start.config.timeout
                try:
                    await self.release.before_start(device_ids, budget.then(timeout))
                except HookFailed as exc:  # (preStart logs its own)
                    ids = ",".join(device_ids)
                    self.log.warning(
                        "pre_start_refused", devices=ids, result=exc.result, error=str(exc)
                    )
                    raise
            if self.pre_start is not None:
                await self.pre_start.run(device_ids, budget)
        except HookFailed as exc:
            raise refusal(exc.status, str(exc)) from None
        return PreStartContainerResponse()
