"""The runtime's CDI dirs followed while the host runs: a spec file that comes, changes or
goes after an answer's CDI names were looked up has them looked up again (hostile27 F3).

Another plugin's answer in the kubelet's checkpoint is booked by the host paths its CDI
names resolve to (`cdi_lookup`); a name that resolved nowhere (its plugin writes its spec
file after the pod was admitted, or the file was unreadable) holds nothing until a file
defines it, and a definition that changes may name another node than the one booked. So
each of `cdiRuntimeDirs` is watched (its spec files' names, as `cdi_resolution` watches the
dirs above a spec dir), from the first read of the checkpoint that looked up a name of a
kind this host does not write; at a change the files whose signature changed are parsed again
(`CdiNames.changed_kinds`, off the loop), and only when that changes a kind a looked-up name
is of, the checkpoint's entries with CDI names of the names not served are booked again
(`book_again`: new bookings, and bookings widened by the paths they lack: a node once
booked stays booked while its pod may hold it). The dir of a wildcard node path such a
name uses is followed too (`CdiNames.wildcard_dirs`): a node made there later that the
wildcard matches is booked when it comes (hostile28 G9). Changes that come during a look
are coalesced into the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from .cdi_files import is_spec_file
from .cdi_lookup import CdiNames
from .files import Offload
from .logs import EventLogger
from .watch import Subscription, Watcher

BookAgain = Callable[[frozenset[str]], Awaitable[None]]
"""Books the checkpoint's entries with CDI names of every name but the given ones."""


class CdiSpecLooks:
    """One look at a time at the runtime's CDI dirs, each change after it began coalesced
    into the next (`follow`; `cancel` ends it)."""

    def __init__(
        self,
        cdi: CdiNames,
        offload: Offload,
        book_again: BookAgain,
        served: Callable[[], Collection[str]],
        log: EventLogger,
    ) -> None:
        self._cdi, self._offload, self._book_again, self._served = cdi, offload, book_again, served
        self._log = log
        self._due = False
        self._task: asyncio.Task[None] | None = None
        self._subscriptions: list[Subscription] = []
        self._wildcards: dict[str, Subscription] = {}
        self._watcher: Watcher | None = None
        self.looks = 0
        """Looks that found a kind a looked-up name is of changed (tests)."""

    def follow(self, watcher: Watcher) -> None:
        """Watch every dir once a name of another's kind was looked up (`wanted`)."""
        self._watcher = watcher
        self.wanted()

    def wanted(self) -> None:
        """After a read of the checkpoint: once it looked a name of another's kind up, every
        dir is watched and looked at once (a file changed since that read). Not before: a
        host no other plugin's CDI answer concerns watches nothing (a dir that is not there
        would be tried again twice a second)."""
        if self._watcher is None or not self._cdi.wants():
            return
        self._follow_wildcards()
        if self._subscriptions:
            return
        self._subscriptions = [self._watcher.subscribe(d, self._heard) for d in self._cdi.dirs]
        self._heard(None)

    def _follow_wildcards(self) -> None:
        """Watch the dirs of the wildcard node paths the names looked up use (kept while
        the host runs: a few dirs): a node made or removed there has the names looked up
        again, so a node a wildcard matches later is booked (hostile28 G9). A dir newly
        watched is looked at once more: a node made there between the names' look-up and
        the watch is heard by nothing else."""
        if self._watcher is None:
            return
        new = self._cdi.wildcard_dirs() - self._wildcards.keys()
        for directory in new:
            subscription = self._watcher.subscribe(directory, self._heard_node, entries=True)
            self._wildcards[directory] = subscription
        if new:
            self._heard_node(None)

    def cancel(self) -> None:
        self._watcher = None
        for subscription in (*self._subscriptions, *self._wildcards.values()):
            subscription.cancel()
        self._subscriptions, self._wildcards = [], {}
        if self._task is not None:
            self._task.cancel()

    def _heard(self, name: str | None) -> None:
        if name is None or is_spec_file(name):
            self._heard_node(name)

    def _heard_node(self, name: str | None) -> None:
        self._due = True
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._look(), name="cdi-specs")

    async def _look(self) -> None:
        try:
            while self._due:
                self._due = False
                if await self._offload.run(self._cdi.changed_kinds):
                    self.looks += 1
                    await self._book_again(frozenset(self._served()))
                self._follow_wildcards()
        except Exception as exc:  # (a bug: said, and the next change looks again)
            self._log.exception("cdi_specs_look_failed", reason=str(exc))
        finally:
            self._task = None
