"""What a watching driver's scan is (`Scanner`) and what it hands the scan loop
(`scanning.py`): every device present (`ScanResult`), the directories its answer depends on
(`DirWatch`), what the loop listed last (`Listed`), what the watcher named since a scan
began (`Changes`), and the loop's settings."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from .. import rules
from ..devices import Device
from ..dir_signature import DirSignature, dir_signature
from ..identity import PathReach
from .base import DriverError, Skipped


@dataclass(frozen=True)
class Notice:
    """Something about a scan worth one log line when it starts or stops being true (a
    directory that cannot be read, no device matching)."""

    event: str
    fields: tuple[tuple[str, str], ...] = ()
    level: Literal["info", "warning"] = "warning"


@dataclass(frozen=True)
class ScanResult:
    """What one scan found."""

    devices: Mapping[str, Device]
    """Every device present, by ID (never changed later: the loop may publish it as is)."""
    skipped: tuple[Skipped, ...] = ()
    places: Mapping[str, str] | None = None
    """Where each device sits (sysfs: its directory), for scanners whose devices can move: a
    device that moved did not lose the nodes it had elsewhere. None: devices never move."""
    notices: tuple[Notice, ...] = ()
    reached: Mapping[str, PathReach] | None = None
    """What the scan learnt the host paths of its devices reach (glob: each device's
    canonical path), handed on once with the list (`Notifier.update`), so the ownership index
    does not look at them again."""


@dataclass(frozen=True)
class Listed:
    """What the loop listed last, handed to the next scan (read-only, replaced, never
    changed: a scan thread may read it while the loop merges)."""

    devices: Mapping[str, Device] = field(default_factory=dict)
    """Every device listed, present or vanished (Unhealthy)."""
    places: Mapping[str, str] = field(default_factory=dict)
    """The place of each device present in the last scan (see `ScanResult.places`)."""


class ScanGuard:
    """The bounds of one scan, checked by the scanner as it walks: the loop abandons a scan
    that timed out (its thread then stops at its next entry instead of running on), and
    the paths it may match are limited (`rules.MAX_MATCHED_PATHS`)."""

    def __init__(self, max_matched: int = rules.MAX_MATCHED_PATHS) -> None:
        self.max_matched = max_matched
        self.matched = 0
        self.abandoned = False
        """Set by the loop (another thread) when it stopped waiting for this scan."""

    def abandon(self) -> None:
        self.abandoned = True

    def entry(self) -> None:
        """Before looking at the next directory entry: stop if the scan was abandoned."""
        if self.abandoned:
            raise DriverError("abandoned", "scan abandoned after its timeout")

    def match(self, pattern: str, count: int = 1) -> None:
        """More paths (or directories on the way) matched by `pattern`: stop at the limit."""
        self.matched += count
        if self.matched > self.max_matched:
            raise DriverError(
                "too_many_paths",
                f"pattern {pattern!r} matched more than {self.max_matched} paths"
                " (directories on the way included; symlinks that fan out?)",
            )


class DirWatch:
    """The directories one scan depends on, each signed before the scan looked into it,
    the scan's `guard`, and when it read the paths it can say it read (`read_at`).

    The loop signs the directories it watches before the scan starts; a scanner calls
    `watch` for every directory that decides its answer, before listing it where it can
    (glob) or after reading where it cannot know them earlier (sysfs node directories).
    """

    def __init__(
        self,
        watched: Iterable[str] = (),
        guard: ScanGuard | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.signatures: dict[str, DirSignature | None] = {
            directory: dir_signature(directory) for directory in watched
        }
        self.wanted: set[str] = set()
        self.guard = guard if guard is not None else ScanGuard()
        self.clock = clock
        """The loop's count of wake-ups (`Changes.now`; None: not counted, as in
        `kdp-host check`)."""
        self.read_at: dict[str, int] = {}
        """Path -> `clock()` just before the scan first read it, for paths whose change
        the answer then fully reflects (what a scan told that path alone would find): a
        change the watcher named by then needs no scan of its own (`Changes.settle`). A
        scanner may note none (every change named during it makes one more scan)."""

    def watch(self, directory: str) -> None:
        if directory not in self.wanted:
            self.wanted.add(directory)
            if directory not in self.signatures:
                self.signatures[directory] = dir_signature(directory)


class Scanner(Protocol):
    """A watching driver's own part: one look at the file system."""

    def scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        """Every device present now. Blocking (runs off the loop); reads `listed` only.

        `changed`: the paths the watcher named as changed since the last successful scan
        (an entry created, removed or changed in a watched directory), or None when
        anything may have changed (the first scan, a safety-net rescan, a watch that could
        not say what changed, a failed or stuck scan before). A scanner may look again only
        at what those paths can affect and reuse the rest of its last answer (O(changed)),
        or ignore them. Raises DriverError or OSError."""
        ...


@runtime_checkable
class LoopScanner(Protocol):
    """A scanner that can take in what the watcher named on the event loop: a look at the
    named paths alone, no thread hop (a hot-plug; issue 19)."""

    def named_on_loop(self) -> bool:
        """Whether its last answer is one that a look at named paths can update."""
        ...

    def scan_on_loop(
        self, listed: Listed, dirs: DirWatch, changed: frozenset[str]
    ) -> ScanResult | None:
        """`scan` told `changed`, on the event loop: an lstat of each named path and the
        real path of its directory, no link followed; None where it cannot answer so (a
        link, a path its last answer does not cover: the scan off the loop answers). Run
        only where every watched directory waits on nothing but this machine
        (`DriverDeps.local`). Raises DriverError or OSError."""
        ...


class Changes:
    """What the watcher named since the last scan began, added on the loop and taken by the
    scan's thread as it begins to read: a change named before a scan begins is one that scan
    reads, so it needs no scan of its own (the kernel makes several events per hot-plug; the
    thread hop alone gives the next ones time to come). Every wake-up is counted (`count`,
    the clock of `DirWatch.read_at`), and each name keeps the count of its last wake-up: a
    change named while a scan runs, for a path the scan read after that (a device's second
    node, read with its first), needs no scan either (`settle`); one named after the path
    was read makes one more scan, however many."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()  # (the loop adds, a scan's thread takes)
        self._names: dict[str, int] | None = None
        """The paths named, with the count of each one's last wake-up (None: unknown, look
        at everything; so is the first scan)."""
        self.count = 0
        """Wake-ups so far: a path named, or everything to look at again."""
        self.full = 0
        """Scans begun told to look at everything (`take` answered None)."""

    def add(self, path: str | None) -> None:
        """A wake-up: `path` named, or (None) anything may have changed. Past `limit`
        names (a flood of events) the next scan looks at everything instead."""
        with self._lock:
            self.count += 1
            names = self._names
            if names is not None:
                if path is None or len(names) >= self._limit:
                    self._names = None
                else:
                    names[path] = self.count

    def forget(self) -> None:
        """What was named is not known to be read (a scan failed, or still hangs): the next
        scan looks at everything. No wake-up."""
        with self._lock:
            self._names = None

    def now(self) -> int:
        """`count` now (read by a scan's thread: a wake-up counted by then came before)."""
        return self.count

    def take(self, incremental: bool) -> frozenset[str] | None:
        """As a scan begins: what it is told changed (None: everything, always unless
        `incremental`); what is named from now on is for the next scan."""
        with self._lock:
            names = self._names if incremental else None
            self._names = {}
            self.full += names is None
        return frozenset(names) if names is not None else None

    def settle(self, read_at: Mapping[str, int]) -> bool:
        """Once a scan is back, with when it read what (`DirWatch.read_at`): forget the
        names it read after their last wake-up (its answer holds that change); whether
        nothing is left for another scan (no wake-up since it began, or all so read)."""
        with self._lock:
            names = self._names
            if names is None:
                return False
            for path in [p for p, at in names.items() if read_at.get(p, -1) >= at]:
                del names[path]
            return not names


def on_loop(
    scanner: Scanner, local: Callable[[Collection[str]], bool] | None, watched: frozenset[str]
) -> bool:
    """Whether `scanner` may look at what the watcher named on the loop: a `LoopScanner`
    whose last answer such a look can update, every watched directory local (`local`:
    `DriverDeps.local`, no lookup there can hang)."""
    return (
        local is not None
        and bool(watched)
        and isinstance(scanner, LoopScanner)
        and scanner.named_on_loop()
        and local(watched)
    )


def scan_failed(exc: OSError) -> DriverError:
    """The DriverError of a scan that met an OSError (on the loop or off it)."""
    return DriverError("io", f"scan failed: {exc}")


def scan_on_loop(
    scanner: Scanner, listed: Listed, watched: frozenset[str], guard: ScanGuard, changes: Changes
) -> tuple[frozenset[str] | None, tuple[ScanResult, DirWatch] | None]:
    """A look at what the watcher named, on the loop (`LoopScanner.scan_on_loop`, where
    `on_loop`), with no thread hop: a hot-plug's lstat or two (issue 19). What it took
    (None: everything, not looked at here) and its answer with its `DirWatch`; no answer
    leaves what it took to the scan off the loop. Raises DriverError."""
    assert isinstance(scanner, LoopScanner)
    changed = changes.take(True)
    if changed is None:
        return None, None
    dirs = DirWatch(watched, guard, changes.now)
    try:
        result = scanner.scan_on_loop(listed, dirs, changed)
    except OSError as exc:
        changes.forget()
        raise scan_failed(exc) from None
    except DriverError:
        changes.forget()
        raise
    return changed, None if result is None else (result, dirs)


async def wait_for_change(
    wake: asyncio.Event, next_expiry: float | None, clock: Callable[[], float]
) -> bool:
    """Wait for a wake-up (a watched change, the safety net) or the next grace expiry,
    whichever comes first: True when woken, also by a wake-up set in the turn the expiry's
    timeout fired (the loop clears the event next: "not woken" would lose it)."""
    if next_expiry is None:
        await wake.wait()
        return True
    try:
        async with asyncio.timeout(max(0.0, next_expiry - clock())):
            await wake.wait()
    except TimeoutError:
        return wake.is_set()
    return True


SCAN_SPACING = 0.02
"""Seconds per scan of a resource once its burst is spent (see SCAN_BURST): changes that keep
coming (a loop creating and removing files) then wait, and all that came meanwhile make one
scan of the names involved: a flood costs a bounded rate of scans, not one per event
(hostile4 H7)."""
SCAN_BURST = 16
"""Scans of a resource that may start back to back, one more each SCAN_SPACING up to this
many (a token bucket). A hot-plug is a handful of changes in quick succession (a device's
nodes, a remove and a re-add): each is scanned at once; only a flood waits."""


@dataclass(frozen=True)
class ScanSettings:
    """How often and how long a driver scans, and its limits."""

    rescan_interval: float
    grace_period: float
    scan_timeout: float
    full_rescan_every: int | None = None
    """Safety-net rescans run at least every this many intervals even when no watched
    directory changed (None: the watched directories decide everything)."""
    max_matched_paths: int = rules.MAX_MATCHED_PATHS
    spacing: float = SCAN_SPACING
    """Seconds per scan once the burst is spent (see SCAN_SPACING)."""
    burst: int = SCAN_BURST
    """Scans that may start back to back (see SCAN_BURST)."""
    ids_name_nodes: bool = False
    """A device's ID names its one node itself (glob paths: by device number), so its node
    at another path under the same ID (renamed, or another node for the number left) is
    the same node, not a lost one (`grace.Tracker`)."""
    entries: bool = False
    """The answer depends only on which entries the watched directories hold (sysfs: a
    node is there or not), not on their attributes or contents: the watcher does not wake
    the loop for those (`Subscription.entries`: devtmpfs makes a node, then udev sets its
    mode; a file made, written and closed; each is one change, one scan)."""
