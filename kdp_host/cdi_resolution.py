"""Which spec files win over a resource's own in the runtime's CDI dirs (hostile20 F2).

The runtime reads its dirs in order (`cdiRuntimeDirs`, containerd's and CRI-O's
`cdi_spec_dirs`): a name defined in a later dir's file wins over an earlier one's (a name two
files of one dir define resolves nowhere). In a rolling update that moves `specDir`, the other
live host's file, left to it (`cdi_dirs`), may lie in a later dir than this host's spec dir and
define the names it hands out, from its own list: the runtime resolves them through that file.
An Allocate answer of this host must then wait for that file to say what was handed out
(`cdi_disk.SpecOnDisk.holds`), which it does once the other host takes the hand-out up from
`handed-out.json` (`handed_peers`).

`follow_above` keeps `SpecOnDisk.above` current: the dirs after the spec dir in the runtime's order
are watched (their spec files, `.json` and `.yaml`), and what wins there is the one rule of
`cdi_files` (a file parsed again only when it changed). A spec dir that is the runtime's last (the
default, `/var/run/cdi`) has no dir above: nothing is watched, nothing read. Not one of the
runtime's dirs: every one of them is above. Nothing is read per Allocate.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

from .cdi_disk import SpecOnDisk
from .cdi_files import SpecFiles, is_spec_file, winning
from .files import Offload
from .logs import EventLogger
from .watch import Watcher


def _same_dir(a: str, b: str) -> bool:
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def dirs_above(spec_dir: str, order: Sequence[str]) -> tuple[str, ...]:
    """The runtime's dirs (in `order`, lowest priority first) whose files win over one in
    `spec_dir`: those after its last place in `order` (all of them when it is not there), the
    spec dir itself named again aside. Blocking."""
    at = max((i for i, d in enumerate(order) if _same_dir(d, spec_dir)), default=-1)
    return tuple(d for d in order[at + 1 :] if not _same_dir(d, spec_dir))


def winning_entries(
    above: Sequence[str], kind: str, known: SpecFiles
) -> dict[str, frozenset[str] | None]:
    """Each name the spec files of the dirs `above` (lowest priority first) define for `kind`,
    with the host paths of the winning entry (None where the runtime drops it: two files of
    one dir define it): `cdi_files.winning`. Blocking."""
    return winning(above, known, (kind,)).entries(kind)


async def follow_above(
    spec_dir: str,
    order: Sequence[str],
    kind: str,
    disk: SpecOnDisk,
    watcher: Watcher | None,
    offload: Offload,
    log: EventLogger,
    interval: float,
    changed: Callable[[], None] = lambda: None,
) -> None:
    """Keep `disk.above` what the dirs above `spec_dir` define for `kind`, until cancelled:
    read again at each change the watch tells (`disk.pending` from the event until then),
    and every `interval` s without a watcher or after a failed read (meanwhile pending).
    `changed` is told of each change too (the writer's clash check, `cdi_clashes`)."""
    above = await offload.run(lambda: dirs_above(spec_dir, order))
    if not above:
        return
    woken, known = asyncio.Event(), SpecFiles()

    def on_event(name: str | None) -> None:
        if name is None or is_spec_file(name):
            disk.pending = True
            woken.set()
            changed()

    subscriptions = [] if watcher is None else [watcher.subscribe(d, on_event) for d in above]
    log.info("cdi_dirs_above_followed", spec_dir=spec_dir, dirs=",".join(above))
    failed = False
    try:
        disk.pending = True
        woken.set()
        while True:
            try:
                wait = interval if watcher is None or failed else None
                await asyncio.wait_for(woken.wait(), wait)
            except TimeoutError:
                pass
            woken.clear()
            try:
                won, failed = await offload.run(lambda: winning_entries(above, kind, known)), False
            except Exception as exc:  # (a dir that cannot be listed is skipped: a bug)
                log.exception("cdi_dirs_above_unread", spec_dir=spec_dir, reason=str(exc))
                won, failed = dict.fromkeys(disk.above), True  # (fails closed: read again)
            disk.seen_above(won, failed or woken.is_set())
    finally:
        for subscription in subscriptions:
            subscription.cancel()
