"""What an Allocate answer leaves behind before it goes out: the IDs the kubelet booked
(`Bookings`, the ownership index: `<stateDir>/ownership.json`) and the devices as the answer
hands them out (`handed_out`: `<stateDir>/handed-out.json`).

Both files are written at once (two writes through the offload, each fsynced, started as
each changes: an answer waits for the slower, not for the sum) and the answer waits for both,
at most `state_file.WRITE_LIMIT`. They fail differently: a booking not written holds in
memory and comes back at a restart from the kubelet's checkpoint, so the answer goes out
(with an error line, and `/readyz` says so); a record not written would leave a restart
not knowing what the pod got, so the answer is refused (fail closed, issue 17).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from ..devices import Snapshot
from ..handed_out import HandedOut
from ..identity import Identity

CdiWritten = Callable[[Snapshot, Sequence[Sequence[str]]], Awaitable[str | None]]
"""Until the CDI spec file on disk holds what an answer's CDI names hand out (None), else why
not: the answer is refused (`cdi_disk`, the runtime's `cdi_written`)."""


class Fence(Protocol):
    """What a resource's first list and its Allocate answers wait for: the kubelet's
    checkpoint read again (`checkpoint_reads.CheckpointReads`); `allocating` raises the
    GRPCError that refuses the Allocate while the file cannot be read."""

    async def listing(self) -> None: ...

    async def allocating(self) -> None: ...


class Bookings(Protocol):
    """Where an answered Allocate's IDs are recorded as booked (`OwnershipIndex`), with the
    host paths and CDI names each answer hands out besides its devices (raises `PlaceOwned`
    when one is another device's)."""

    async def book(
        self,
        resource: str,
        ids: Iterable[str],
        places: Mapping[str, Collection[str]] | None = None,
        cdi_names: Mapping[str, Collection[str]] | None = None,
        *,
        wait: bool = True,
        handed_as: Mapping[str, Collection[Identity]] | None = None,
    ) -> None: ...

    async def bookings_written(self) -> None: ...

    async def hand_out_reaching(
        self,
        resource: str,
        ids: Iterable[str],
        paths: Collection[str],
        read_only: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, str], dict[str, Identity]]: ...

    def is_booked(self, resource: str, advertised_id: str) -> bool: ...

    def fenced(
        self, resource: str, ids: Collection[str], reached: Mapping[str, Identity],
        real: Mapping[str, str],
    ) -> AbstractAsyncContextManager[None]: ...  # fmt: skip

    def drops(self) -> int: ...


async def keep(
    handed: HandedOut | None,
    bookings: Bookings | None,
    resource: str,
    snapshot: Snapshot,
    ids: list[str],
    reached: Mapping[str, Identity],
) -> str | None:
    """Record that the answer hands `ids` out as `snapshot` lists them (their host paths
    reaching `reached`), the entries no longer booked let go first, and wait until both
    files hold it (the bookings were recorded by `Bookings.book`, unwritten). None once
    `handed-out.json` holds the record, else why not (the answer is refused)."""
    if handed is not None:
        if bookings is None:
            handed.answered(snapshot, ids)
        else:
            booked = functools.partial(bookings.is_booked, resource)
            handed.answered(snapshot, ids, booked, bookings.drops(), reached)
    # Both writes are on their way already (each file's writer starts at its change): the
    # answer waits for one, then for what is left of the other.
    why = None if handed is None else await handed.record.written()
    if bookings is not None:
        await bookings.bookings_written()
    if why is None:
        return None
    return (
        f"{why}; a device is handed out only once its record is kept (a kdp-host restart must "
        "find what the pod got): refused until stateDir can be written"
    )
