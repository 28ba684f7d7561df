"""When the kubelet's checkpoint is booked, and which of its entries: one rule, two moments.

The kubelet's checkpoint (`kubelet_checkpoint`) is its own record of who holds what. Every
entry of it is booked (`take_handed`: the host paths its answer handed out, held for its
IDs until the kubelet shows the pod gone or drops the entry, by the rules of any checkpoint
booking: a resource no runtime serves is retired, its IDs unlisted until an answer shows
them, `unlisted`), whatever `ownership.json` says (a union with what it holds), whenever
kdp-host may begin to advertise a node a pod was handed under a name it did not serve:

- at start (`book_handed`), before any resource publishes: every resource's entries, with
  the bookings kept or lost (a stale `ownership.json` restored from a backup looks kept; a
  resource renamed or removed while kdp-host was down, or another plugin's, holds nodes the
  config may reach now);
- when a reload or a node label change starts a resource or changes one (`book_before`,
  which the started runtimes wait for, so no first list goes out before it): the entries of
  every resource name but those the host served before and serves after (their entries are
  its own Allocates', booked already). A resource added by a reload may be one another
  plugin served (a migration from generic-device-plugin: its pods hold the nodes under that
  plugin's IDs), and a changed one may reach nodes another plugin's pods hold.

Each is one read off the loop, bounded by `READ_TIMEOUT`; a checkpoint that lists only
entries of the skipped names is not checked further (no checksum paid for a reload of a
host that is the only plugin). A missing, unreadable or bad file is logged, never fatal.

A name a reload adds is fenced (its first list and Allocates wait for a read begun after the
kubelet called), and the file is followed while the host runs (another plugin's pods booked
within milliseconds of their admission): `checkpoint_reads`.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

from .cdi_lookup import CdiNames
from .checkpoint_handed import read_handed
from .files import Offload
from .kubelet_checkpoint import (
    CHECKPOINT_FILE,
    READ_TIMEOUT,
    EntryOf,
    Gained,
    Handed,
    HandedClaims,
    as_recorded,
)
from .logs import EventLogger
from .recorded_bookings import Record, Recorded, book_recorded
from .rules import HELD_SHOWN, SKIPPED_SHOWN

if TYPE_CHECKING:
    from .config import Config

CDI_UNRESOLVED: Final = (
    "the nodes this name hands out are not known: a kdp-host device that reaches one may be "
    "handed to another pod; the name is looked up again whenever a spec file in "
    "cdiRuntimeDirs changes (booked then)"
)
WITHOUT_CHECKPOINT: Final = (
    "what the kubelet handed out is not known: an ID a pod holds without a booking (the "
    "state directory was lost) is booked from PodResources with what the ID names now"
)


class HandedBookings(Protocol):
    """Where what the kubelet handed out is booked (`OwnershipIndex.take_handed`)."""

    def take_handed(self, handed: Iterable[HandedClaims]) -> Gained: ...

    def serve(self, resources: Iterable[str]) -> None: ...

    def handed_out(self) -> dict[str, set[str]]: ...

    async def quiet(self) -> None: ...

    def tell_unplaced(self, unplaced: Callable[[str], None]) -> None: ...


class Unlisted(Protocol):
    """Told the (resource, ID) pairs a reload's read booked (`unlisted.Unlisted`: held
    until an answer shows them)."""

    nudge: Callable[[], bool] | None
    """Makes the kubelet write its checkpoint (a list sent again), when the host set it."""

    def take(self, keys: Iterable[tuple[str, str]]) -> None: ...


class Poller(Protocol):
    """The host's PodResources poller (`podresources.PodResourcesPoller`)."""

    @property
    def unlisted(self) -> Unlisted | None: ...


async def book_handed(
    index: HandedBookings,
    config: Config,
    offload: Offload,
    log: EventLogger,
    record: Record | None = None,
    cdi: CdiNames | None = None,
) -> list[Recorded]:
    """At start, before any resource publishes: book every entry of the checkpoint in the
    kubelet's device-plugin directory (read off the loop, once; CDI names resolved through
    `cdi`), beside the bookings of `ownership.json`, with what its paths reached when
    `record` (`handed-out.json`) says this host handed them out (`as_recorded`;
    `take_handed` marks a node gone now whose number no booking knew as unknown, bookings
    lost or stale alike). A missing, unreadable
    or bad checkpoint is logged, and the start goes on without it. A number unknown of one
    of `config`'s resources may be any of theirs (`OwnershipIndex.serve`). Then the uses of
    `config`'s resources only `record` keeps (`recorded_bookings`): what it booked of them."""
    served = {r.name for r in config.resources}
    index.serve(served)
    if cdi is not None:  # (its own answers' names: its spec files were removed at its stop)
        cdi.own_kinds = frozenset(r.allocate.cdi.kind for r in config.resources if r.allocate.cdi)
    entry_of = None if record is None else record.entry
    directory = config.kubelet.socket_dir
    await book_entries(index, directory, offload, log, recorded=entry_of, cdi=cdi)
    return [] if record is None else await book_recorded(index, record, served, offload, log)


def book_before(
    index: HandedBookings,
    socket_dir: str,
    served: Collection[str],
    offload: Offload,
    log: EventLogger,
    poller: Poller | None = None,
    cdi: CdiNames | None = None,
) -> asyncio.Task[None]:
    """A reload (or a node label change) starts or changes resources: a task that books the
    checkpoint's entries of every resource but the `served` ones (served before it and
    after: their entries are this host's own), read off the loop, their IDs unlisted (the
    `poller`'s, when PodResources polling is on); the started runtimes wait for it
    (`Supervisor.start`). It never fails: a bad checkpoint is logged as at start."""

    async def book() -> None:
        await book_others(index, socket_dir, served, offload, log, poller, cdi)

    return asyncio.create_task(book(), name="kubelet-checkpoint")


async def book_others(
    index: HandedBookings,
    socket_dir: str,
    served: Collection[str],
    offload: Offload,
    log: EventLogger,
    poller: Poller | None = None,
    cdi: CdiNames | None = None,
    again: bool = False,
) -> bool:
    """Book the checkpoint's entries of every name but `served`'s with an ID not booked yet,
    read off the loop, their IDs unlisted (`book_before`, and the host following the file
    while it runs: `CheckpointReads.follow`); whether the file could be used. `again` (a
    spec file changed: `cdi_spec_looks`): only the entries with CDI names, booked or not
    (a booking widened by the paths it lacks), and those of `served` names too where an ID
    is not booked (not this host's answer: the plugin that served the name before)."""
    skip = frozenset(served)
    if again:
        handed = await book_entries(index, socket_dir, offload, log, new=True, cdi=cdi, again=skip)
    else:
        handed = await book_entries(index, socket_dir, offload, log, skip, True, cdi=cdi)
    unlist(poller, handed)
    return handed is not None


def unlist(poller: Poller | None, handed: list[HandedClaims] | None) -> None:
    """The booked IDs unlisted (held until an answer shows them), when polling is on."""
    unlisted = None if poller is None else poller.unlisted
    if unlisted is not None and handed:
        unlisted.take((h.handed.resource, i) for h in handed for i in h.handed.ids)


async def book_entries(
    index: HandedBookings,
    directory: str,
    offload: Offload,
    log: EventLogger,
    skip: frozenset[str] = frozenset(),
    new: bool = False,
    only: frozenset[str] | None = None,
    consequence: str = WITHOUT_CHECKPOINT,
    recorded: EntryOf | None = None,
    cdi: CdiNames | None = None,
    again: frozenset[str] | None = None,
) -> list[HandedClaims] | None:
    """Read the checkpoint's entries (of `only`, None: all) but `skip`'s, book them (`new`:
    only those with an ID not booked yet, sorted out off the loop, so a reload's work on it
    is what the kubelet admitted since, not the whole file; `again`: only those with CDI
    names, booked or not, but those of `again`'s names only with an ID not booked), and log
    what was booked and each CDI name that resolves nowhere (`said_unresolved`); returns what
    was booked, None when the file cannot be used (logged with `consequence`)."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    known = index.handed_out() if new else None
    if again is not None and known is not None:
        known = {name: ids for name, ids in known.items() if name in again}
    work = functools.partial(_read, directory, skip, known, only, cdi, again is not None)
    try:
        handed = await asyncio.wait_for(offload.run(work), READ_TIMEOUT)
    except TimeoutError:
        log.warning(
            "kubelet_checkpoint_unusable",
            path=path,
            error=f"not read within {READ_TIMEOUT:g} s",
            consequence=consequence,
        )
        return None
    except Exception as exc:  # (the kubelet's file: whatever is wrong with it, never fatal)
        log.warning(
            "kubelet_checkpoint_unusable", path=path, error=str(exc), consequence=consequence
        )
        return None
    if handed is None:
        log.info("kubelet_checkpoint_absent", path=path)
        return []
    if recorded is not None:
        handed = as_recorded(handed, recorded)
    said_unresolved(handed, cdi, log)
    by_resource: dict[str, Gained] = {}
    for gained in index.take_handed(handed):
        by_resource.setdefault(gained[0].resource, []).append(gained)
    for resource, booked in by_resource.items():
        bound = log.bind(resource=resource)
        if len(booked) > SKIPPED_SHOWN:  # (one line: another plugin's thousands of entries)
            first = sorted(owner.device for owner, _ in booked)[:HELD_SHOWN]
            bound.info("kubelet_checkpoint_booked", count=len(booked), devices=",".join(first))
            continue
        for owner, claims in booked:
            paths = ",".join(path for _, path, _ in claims)
            bound.info("kubelet_checkpoint_booked", device=owner.device, paths=paths)
    return handed


def said_unresolved(handed: Iterable[HandedClaims], cdi: CdiNames | None, log: EventLogger) -> None:
    """Say each CDI name of an answer that resolves nowhere (once while it stays so, counted:
    `CdiNames.first_said`): the nodes its pod may hold are not known, so nothing holds them
    until a spec file defines it. So is each spec file the names were resolved without (the
    runtime skips it too: `CdiNames.newly_skipped`)."""
    for path, why in () if cdi is None else cdi.newly_skipped():
        log.warning("cdi_spec_file_skipped", path=path, reason=why)
    for entry in handed:
        handed_entry = entry.handed
        for name, why in handed_entry.unresolved:
            if cdi is None or cdi.first_said(handed_entry.resource, name, why):
                log.warning(
                    "kubelet_checkpoint_cdi_unresolved",
                    resource=handed_entry.resource,
                    name=name,
                    devices=",".join(handed_entry.ids),
                    reason=why,
                    consequence=CDI_UNRESOLVED,
                )


def _read(
    directory: str,
    skip: frozenset[str],
    booked: Mapping[str, set[str]] | None,
    only: frozenset[str] | None = None,
    cdi: CdiNames | None = None,
    again: bool = False,
) -> list[HandedClaims] | None:
    """`read_handed` of every resource of `only` (None: all) but `skip`'s (`again`: only the
    entries with CDI names), less the entries whose IDs are all `booked` (resource -> IDs, a
    copy; None: none left out). Blocking."""
    keep = _with_cdi_names if again else None
    handed = read_handed(directory, only, skip=skip, cdi=cdi, keep=keep)
    if handed is None or booked is None:
        return handed
    none: set[str] = set()
    return [h for h in handed if not booked.get(h.handed.resource, none).issuperset(h.handed.ids)]


def _with_cdi_names(handed: Handed) -> bool:
    return bool(handed.cdi_names)
