"""The one scan loop of the drivers that watch directories (glob, glob groups, sysfs).

Such a driver is a `Scanner` (`scanner.py`): a blocking function that looks at the file
system once and returns every device it found (`ScanResult`), with the directories whose
changes could change that answer (`DirWatch.watch`). Everything else lives here, once:

- **the scan, off the loop**: through the host's offload (`DriverDeps.offload`), bounded by
  the scan timeout; a scan that hangs is waited for again next time, never started twice
  (threads would pile up on a hung file system);
- **watching**: every directory the last scan named is subscribed to on the host's watcher;
  a change wakes the loop at once (a hot-plug is seen in milliseconds; a scanner whose
  answer depends only on which entries are there is not woken by their attributes or
  contents changing: `ScanSettings.entries`); the changes named
  before the scan's thread begins to read are that scan's (`Changes`), those named while it
  reads make one scan after it, however many, unless the scan read each of their paths after
  it was named (`DirWatch.read_at`: a device's second node); a burst of `burst`
  scans may start back to back, then one per `spacing`: changes that keep coming are gathered
  meanwhile and make one scan of the names involved (a flood costs a bounded rate of scans;
  logged once per flood);
- **the safety net**: every `rescanInterval`, through the host's one `SafetyNet` (one timer
  and one thread hop for the checks of every resource due), a rescan runs unless no watched
  directory changed since the last scan that looked at everything began
  (`unchanged_since_scan`: one stat per directory; a scan told what the watcher named
  looks at those paths alone, so it cannot vouch for a change the watcher missed), also
  while changes keep the loop scanning; a scanner whose watched directories do not decide
  everything (sysfs: a device without nodes changes nothing in /dev) asks for a full rescan
  at least every `full_rescan_every` intervals. When nothing changed, the last list goes to
  the Notifier again as the same object (it does O(1) work for it) and the loop's task does
  not wake;
- **the grace period** (`grace.Tracker`, merged in bounded turns of the loop): a device
  that vanished stays listed, Unhealthy, for `gracePeriod`; a device still present that
  lost one of its nodes (not an optional one) is Unhealthy for the grace period, then
  listed without it (unless it comes back);
- **reporting**: complete lists to the Notifier, scan durations, failures; notices (an
  unreadable directory) are logged when they change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import time
from collections.abc import Mapping
from typing import Generic, TypeVar

from ..devices import Device
from ..dir_signature import DirSignature, dir_signature, inode_in
from ..safety_net import SafetyNet
from ..turns import TURN_BUDGET, Pace, in_turns
from ..watch import Subscription
from .base import DriverDeps, DriverError, Notifier
from .grace import MERGE_CHUNK, Tracker
from .rate_limit import RateLimit
from .scanner import (
    Changes,
    DirWatch,
    Listed,
    Notice,
    ScanGuard,
    Scanner,
    ScanResult,
    ScanSettings,
    on_loop,
    scan_failed,
    scan_on_loop,
    wait_for_change,
)

FAILURE_THRESHOLD = 3
"""Failed scans in a row (an I/O error, a scan that hangs) before every device is Unhealthy."""
MAX_NAMED_CHANGES = 4096
"""Changed paths remembered between two scans; past this (a flood of events) the next scan
looks at everything instead (bounded memory, and a full scan is cheaper by then)."""
RECENT_CHANGE = 2.0
"""A directory modified this recently (seconds) is rescanned even if its signature matches:
some file systems keep coarse timestamps, so a change right after a scan could hide."""


S = TypeVar("S", bound=Scanner)


class ScanLoop(Generic[S]):
    """A watching driver: `Driver.run` and `Driver.scan` for a `Scanner`."""

    def __init__(self, scanner: S, settings: ScanSettings, deps: DriverDeps) -> None:
        self.scanner = scanner
        self.settings = settings
        self._deps = deps
        self.tracker = Tracker(settings.grace_period, deps.clock, settings.ids_name_nodes)
        self._pending: asyncio.Future[tuple[ScanResult, DirWatch, bool]] | None = None
        self._pending_since = 0.0
        self._guard = ScanGuard(settings.max_matched_paths)
        """The bounds of the pending (or last) scan."""
        self._last: ScanResult | None = None
        self._wanted: frozenset[str] = frozenset()
        """The directories the last scan depends on."""
        self._signatures: Mapping[str, DirSignature | None] = {}
        """Of the directories of the last scan that looked at everything (told no names),
        taken before it looked: what the safety net compares with."""
        self._signed: Mapping[str, DirSignature | None] = {}
        """The last scan's signatures (full or not: `_subscribe`)."""
        self._subscribed_as: Mapping[str, DirSignature | None] = {}
        """The signatures `_subscribe` last looked at (each subscribed directory's inode)."""
        self._watched: frozenset[str] = frozenset()
        """The directories subscribed to now (set on the loop, read by the scan thread)."""
        self._subscriptions: dict[str, Subscription] = {}
        self._wake = asyncio.Event()
        self._changes = Changes(MAX_NAMED_CHANGES)
        """Paths the watcher named since the last scan began, and the wake-ups counted."""
        self._notices: tuple[Notice, ...] | None = None
        self._net = deps.safety_net if deps.safety_net is not None else SafetyNet(deps.offload)
        self._notifier: Notifier | None = None
        self._grace_running = False
        self._stepping = False
        """`run` is scanning or publishing (a safety-net answer then says nothing new)."""
        self._unchanged_runs = 0
        """Safety-net checks in a row that found nothing changed (for `full_rescan_every`)."""
        self._full_looked = 0
        """`Changes.full` when the last scan's outcome was taken in (`_last` set)."""
        self._check_compared = 0
        """`_full_looked` when the last safety-net check began: the scans that looked at
        everything whose outcome it compared with (set off the loop)."""
        spacing = self.settings.spacing
        self._bucket = (
            RateLimit(deps.clock, 1.0 / spacing, self.settings.burst) if spacing > 0 else None
        )
        """Scans that may start now without waiting: one more per `settings.spacing`, at
        most `settings.burst` (None: no spacing)."""
        self.spaced = 0
        """Wake-ups that waited for the spacing in the current flood (0: none is waiting)."""

    async def scan(self) -> list[Device]:
        """One scan, for `kdp-host check`: the devices present, by ID (what it left out is
        logged)."""
        result = await self.scan_once()
        for item in result.skipped:
            self._deps.log.warning(
                "path_skipped", reason=item.reason, path=item.subject, error=item.message
            )
        return sorted(result.devices.values(), key=lambda d: d.id)

    async def scan_once(self, *, incremental: bool = False) -> ScanResult:
        """One scan off the loop, bounded by the scan timeout; a scan still stuck from last
        time is waited for again rather than started twice. With `incremental`, the scanner
        is told which paths the watcher named since the last scan, looked at on the loop
        where it can (`scanner.on_loop`). Raises DriverError."""
        timeout, waited = self.settings.scan_timeout, ""
        taken: frozenset[str] | None = frozenset()
        local, watched = self._deps.local, self._watched
        if incremental and self._pending is None and on_loop(self.scanner, local, watched):
            taken, answer = self._scan_on_loop()
            if answer is not None:
                return answer
        if self._pending is not None and self._pending.done() and self._guard.abandoned:
            # A scan abandoned at its timeout that has stopped since: its outcome is stale.
            if not self._pending.cancelled():
                self._pending.exception()  # (retrieved: it was reported as the timeout)
            self._pending = None
            self._changes.forget()
        if self._pending is None:
            listed, watched = self.tracker.listed, self._watched
            guard = self._guard = ScanGuard(self.settings.max_matched_paths)
            work = functools.partial(self._scan_sync, listed, watched, incremental, guard, taken)
            self._pending = asyncio.ensure_future(self._deps.offload.run(work))
            self._pending_since = self._deps.clock()
        else:
            self._changes.forget()  # what the stuck scan saw is unknown: look at all next time
            age = self._deps.clock() - self._pending_since
            waited = f"; the scan started {age:.3g}s ago is still stuck"
        pending = self._pending
        try:
            async with asyncio.timeout(timeout):
                result, dirs, full = await asyncio.shield(pending)
        except TimeoutError:
            if not waited:  # a scan that comes back later wakes the loop to scan again
                pending.add_done_callback(lambda _: self._changed_all())
            self._guard.abandon()  # its thread stops at its next entry (a walk that runs on)
            raise DriverError(
                "timeout", f"scan did not finish within {timeout:g}s{waited} (a hung file system?)"
            ) from None
        except OSError as exc:
            self._pending = None
            self._changes.forget()
            raise scan_failed(exc) from None
        except DriverError as exc:
            self._pending = None
            self._changes.forget()
            if exc.reason == "abandoned":  # the scan given up at its timeout has stopped
                return await self.scan_once()
            raise
        self._pending = None
        self._took(dirs, full)
        return result

    def _took(self, dirs: DirWatch, full: bool) -> None:
        """A scan's answer is taken in (off the loop, or on it: `_scan_on_loop`): what it
        watched and signed."""
        self._wanted, self._signed = frozenset(dirs.wanted), dirs.signatures
        if full:  # (a scan of named paths vouches for nothing else: see the module docstring)
            self._signatures = dirs.signatures
        if self._changes.settle(dirs.read_at):
            self._wake.clear()  # every wake-up came before the scan read what it named

    def _scan_sync(
        self,
        listed: Listed,
        watched: frozenset[str],
        incremental: bool,
        guard: ScanGuard,
        taken: frozenset[str] | None = frozenset(),  # (left by a look on the loop)
    ) -> tuple[ScanResult, DirWatch, bool]:
        changed = self._changes.take(incremental)  # (as late as can be: see Changes)
        changed = None if changed is None or taken is None else changed | taken
        dirs = DirWatch(watched, guard, self._changes.now)
        return self.scanner.scan(listed, dirs, changed), dirs, changed is None

    def _scan_on_loop(self) -> tuple[frozenset[str] | None, ScanResult | None]:
        """`scanner.scan_on_loop`, its answer taken in (None: what it took is left to the
        scan off the loop). Raises DriverError."""
        guard = self._guard = ScanGuard(self.settings.max_matched_paths)
        changes, listed = self._changes, self.tracker.listed
        taken, answer = scan_on_loop(self.scanner, listed, self._watched, guard, changes)
        if answer is not None:
            self._took(answer[1], False)
        return taken, None if answer is None else answer[0]

    def unchanged_since_scan(self) -> bool:
        """Whether no watched directory changed since the last scan that looked at
        everything began (so a rescan would find the same). Blocking: one stat per
        directory."""
        self._check_compared = self._full_looked  # read before `_last`, which is set first
        signatures = self._signatures
        watched = self._watched
        if self._last is None or not watched <= signatures.keys():
            return False
        now_ns = time.time_ns()
        for directory in watched:
            current = dir_signature(directory)
            if current != signatures[directory]:
                return False
            if current is not None and now_ns - current[1] < RECENT_CHANGE * 1e9:
                return False
        return True

    async def step(
        self, notifier: Notifier, *, rescan: bool = True, incremental: bool = False
    ) -> float | None:
        """Scan (with `rescan` False: only merge the last scan again, for grace periods;
        with `incremental`, telling the scanner what the watcher named) and report; returns
        when the next grace period ends. What `run` does each time it wakes."""
        if rescan or self._last is None:
            started = self._deps.clock()
            try:
                self._last = await self.scan_once(incremental=incremental)
            except DriverError as exc:
                notifier.failure(exc)
                self._last = None
            self._full_looked = self._changes.full
            notifier.scanned(self._deps.clock() - started)
        result = self._last
        if result is None:
            return None
        self._subscribe()
        merging = self.tracker.merging(result, Pace(MERGE_CHUNK, TURN_BUDGET))
        devices, next_expiry = await in_turns(merging)  # (10,000 unplugged: in turns)
        notifier.update(devices, result.skipped, result.reached)
        if result.reached:  # handed on once: not kept with the last scan
            self._last = dataclasses.replace(result, reached=None)
        if result.notices != self._notices:
            log = self._deps.log
            for notice in result.notices:
                write = log.info if notice.level == "info" else log.warning
                write(notice.event, **dict(notice.fields))
            self._notices = result.notices
        return next_expiry

    def _subscribe(self) -> None:
        """Watch the directories of the last scan (and only those); one that is another
        directory since it was subscribed to (a link to it switched, hostile18 F12) anew."""
        subscriptions = self._subscriptions
        wanted = self._wanted
        before, signed = self._subscribed_as, self._signed
        if signed is not before:  # (a scan since: what it signed)
            self._subscribed_as = signed
            moved = [
                d
                for d in subscriptions.keys() & wanted
                if inode_in(before, d) != inode_in(signed, d)
            ]
            if moved:
                self._deps.watcher.rewatch(moved)
        for directory in wanted - subscriptions.keys():
            subscriptions[directory] = self._deps.watcher.subscribe(
                directory,
                functools.partial(self._changed, directory),
                entries=self.settings.entries,
            )
        for directory in subscriptions.keys() - wanted:
            subscriptions.pop(directory).cancel()
        self._watched = wanted

    def _changed(self, directory: str, name: str | None) -> None:
        self._changes.add(os.path.join(directory, name) if name is not None else None)
        self._wake.set()

    def _changed_all(self) -> None:
        """Wake the loop to look at everything."""
        self._changes.add(None)
        self._wake.set()

    async def run(self, notifier: Notifier) -> None:
        """Report complete lists until cancelled (see the module docstring)."""
        settings = self.settings
        wake = self._wake
        self._notifier = notifier
        leave = self._net.join(
            settings.rescan_interval,
            self.unchanged_since_scan,
            self._checked,
            timeout=settings.scan_timeout,
        )
        woken = True
        try:
            while True:
                self._stepping = True  # (a safety-net check now would only repeat the scan)
                try:
                    if woken:
                        await self._spacing()
                    wake.clear()
                    next_expiry = await self.step(notifier, rescan=woken, incremental=True)
                finally:
                    self._stepping = False
                self._grace_running = next_expiry is not None
                woken = await wait_for_change(wake, next_expiry, self._deps.clock)
        finally:
            leave()
            self._notifier = None
            for subscription in self._subscriptions.values():
                subscription.cancel()
            self._subscriptions.clear()
            self._watched = frozenset()

    async def _spacing(self) -> None:
        """Take a scan from the bucket, waiting until one is there; what the watcher names
        meanwhile joins the next scan. A flood is logged when the first wake-up waits, and
        its end with the next wake-up that does not."""
        bucket, log = self._bucket, self._deps.log
        if bucket is None:
            return
        wait = bucket.delay()
        if wait <= 0:
            if self.spaced:
                log.info("scans_spaced_ended", waited=self.spaced)
                self.spaced = 0
        else:
            if not self.spaced:
                log.info(
                    "scans_spaced",
                    spacing=self.settings.spacing,
                    action="changes come faster than scans: they are gathered, one scan "
                    "of the names involved per spacing",
                )
            self.spaced += 1
            await asyncio.sleep(wait)
        bucket.take()

    def _checked(self, unchanged: bool) -> None:
        """The safety net's answer (on the loop): rescan everything if a watched directory
        changed (or a full rescan is due), else hand the Notifier the same list again."""
        if self._notifier is None:
            return
        if not unchanged:
            if self._check_compared != self._changes.full:
                # The check compared with an older scan of everything than the latest: one
                # began after the check did, or was still running when it began (the first
                # scan: nothing to compare with yet). That scan read what the check saw, or
                # signed its directories before a change the next check then finds.
                # Rescanning now would read the same state twice.
                return
            # The watcher missed something, or only what it named was looked at since: look
            # at everything (also while the loop is scanning: changes that keep coming must
            # not keep the safety net off; a scan under way makes this the next one).
            self._unchanged_runs = 0
            self._changed_all()
            return
        if self._stepping:
            return  # the loop is looking or publishing now: the next check compares with that
        full_every = self.settings.full_rescan_every
        if full_every is not None and self._unchanged_runs >= full_every:
            self._unchanged_runs = 0
            self._changed_all()  # the watched directories do not decide everything
            return
        self._unchanged_runs += 1
        notifier, last = self._notifier, self._last
        if last is None or self._grace_running or self._wake.is_set():
            return  # the loop will look again and publish soon anyway
        # Nothing changed and no grace period runs: the merge would give the same list.
        notifier.update(self.tracker.listed.devices, last.skipped)
