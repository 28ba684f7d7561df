"""An Allocate's bookings while its answer is on its way to the kubelet (issue 17).

An Allocate books its IDs before it answers (`ownership_allocate.BookingAllocations.book`),
then waits for `handed-out.json` and `ownership.json` (each up to `state_file.WRITE_LIMIT`,
one after the other), its CDI names on disk and, beside another host, the fence's lock. The
kubelet records the allocation only once the answer reaches it, so until then every
PodResources answer lacks the pod's IDs. A booking ends on an answer asked
`Timings.heard_after` after it was made that shows no pod holding it
(`Ledger.expire`): an answer slower than that (an `ownership.json` write stalled for its
limit, the process busy) lost its booking before the kubelet heard of it, and with it the
device's entry of `handed-out.json` (`HandedRecord.after_answers`), which a restart books the
pod's IDs by. Killed then, the restart booked them by what their paths reach now: a node
renamed while kdp-host was down was handed to a second pod.

So while an answer is on its way (`BookingAllocations.fenced`, the span the fence of hosts
sharing stateDir holds too) its bookings are not ended by any answer (`AnswersInFlight`),
and once it went out (or was refused) the wait counts from then (`Booking.since`). After a
sent answer its IDs are held besides by an unlisted holder until an answer shows them
(`unlisted.Unlisted.allocated`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from .ownership_booked import Booking
from .ownership_claims import Owner


class AnswersInFlight:
    """The owners booked by Allocates whose answers have not gone out yet (one index's)."""

    def __init__(self) -> None:
        self._owners: dict[Owner, int] = {}
        """Owner -> how many Allocates of it are being answered."""

    def __contains__(self, owner: object) -> bool:
        return owner in self._owners

    def __len__(self) -> int:
        return len(self._owners)

    def answering(
        self, resource: str, ids: Iterable[str], bookings: Mapping[Owner, Booking],
        clock: Callable[[], float], inner: AbstractAsyncContextManager[None] | None = None,
    ) -> Answering:  # fmt: skip
        """Around booking and keeping one answer of `ids` of `resource` (and `inner`: the
        fence of hosts sharing stateDir, entered within)."""
        owners = tuple(Owner(resource, kubelet_id) for kubelet_id in dict.fromkeys(ids))
        return Answering(self, owners, bookings, clock, inner)

    def begin(self, owners: Iterable[Owner]) -> None:
        for owner in owners:
            self._owners[owner] = self._owners.get(owner, 0) + 1

    def end(self, owners: Iterable[Owner], bookings: Mapping[Owner, Booking], now: float) -> None:
        """The answer went out (or was refused) at `now`: the kubelet may hold its IDs from
        then on, so a booking of them ends only on an answer asked `heard_after` later."""
        for owner in owners:
            left = self._owners.pop(owner, 0) - 1
            if left > 0:
                self._owners[owner] = left
            if (booking := bookings.get(owner)) is not None:
                booking.since = max(booking.since, now)


class Answering:
    """One answer on its way (`async with`, around `inner`; no generator: an Allocate's
    every call pays it)."""

    __slots__ = ("_bookings", "_clock", "_flight", "_inner", "_owners")

    def __init__(
        self, flight: AnswersInFlight, owners: tuple[Owner, ...],
        bookings: Mapping[Owner, Booking], clock: Callable[[], float],
        inner: AbstractAsyncContextManager[None] | None = None,
    ) -> None:  # fmt: skip
        self._flight, self._owners, self._bookings = flight, owners, bookings
        self._clock, self._inner = clock, inner

    async def __aenter__(self) -> None:
        self._flight.begin(self._owners)
        if self._inner is not None:
            try:
                await self._inner.__aenter__()
            except BaseException:
                self._flight.end(self._owners, self._bookings, self._clock())
                raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool | None:
        try:
            if self._inner is not None:
                return await self._inner.__aexit__(kind, error, trace)
            return None
        finally:
            self._flight.end(self._owners, self._bookings, self._clock())
