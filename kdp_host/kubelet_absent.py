"""A resource this instance serves, registered and with healthy devices, that the kubelet does
not serve at all: its PodResources `GetAllocatableResources` (docs/kubelet-contract.md §15:
every healthy device of every resource with an endpoint) lists no device of the name.

The kubelet has then no endpoint for the name that has a healthy device, while this instance
believes it is registered: its client was replaced by another plugin's that has since gone
(generic-device-plugin registered last during a migration, then deleted; another kdp-host
instance killed without removing its socket, or one `peer_sockets` cannot tell by name), and
the kubelet does not end a replaced client's stream (docs/kubelet-contract.md §9). Two such
answers in a row (`ABSENT_ANSWERS`), each asked after this instance registered, make it serve
a fresh socket and register again, logged with why. Only a name with no device at all in the
answer counts: a name another live plugin serves with other IDs is its (this instance never
takes the name from a plugin that runs). Nor does an answer count while another live
instance of the resource registered after this one (`yields`: its socket, made since, takes
connections): the name is that instance's whatever it lists, and a rollout's new instance
whose config holds every device back for a while had the old one take the name back and
admit pods by the old config (hostile26 N1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

ABSENT_ANSWERS: Final = 2
"""Answers in a row that list no device of the resource before it registers again."""
ABSENT: Final = "absent_from_kubelet"
"""Registering again: the kubelet serves no device of the resource (the module's rules)."""


@dataclass
class AbsentCheck:
    """One resource's absence from the kubelet's allocatable devices (the module's rules)."""

    name: str
    wake: asyncio.Event
    """The serving loop's: set when the resource is to register again."""
    clock: Callable[[], float]
    """The clock of the answers' `asked_at` (the poller's)."""
    yields: Callable[[], str | None] = lambda: None
    """Another live instance of the resource that registered after this one, if any
    (`PeerSockets.newer_live`)."""
    _since: float | None = None
    """When the resource last registered (None: not since the last time it was due)."""
    _absent: int = 0
    due: bool = False

    def registered(self) -> None:
        self._since, self._absent, self.due = self.clock(), 0, False

    def taken(self) -> None:
        """The serving loop acted on `due`."""
        self._since, self._absent, self.due = None, 0, False

    def answer(
        self, allocatable: Mapping[str, frozenset[str]], asked_at: float, ready: bool,
        healthy: int,
    ) -> None:  # fmt: skip
        """A GetAllocatableResources answer asked at `asked_at`; `ready` and `healthy`:
        the resource registered with no problem (its stream not held, not lost) and its
        healthy devices now."""
        since = self._since
        if since is None or not ready or healthy == 0 or asked_at <= since:
            self._absent = 0
            return
        if allocatable.get(self.name) or self.yields() is not None:
            self._absent = 0
            return
        self._absent += 1
        if self._absent >= ABSENT_ANSWERS and not self.due:
            self.due = True
            self.wake.set()

    @property
    def absent(self) -> int:
        return self._absent
