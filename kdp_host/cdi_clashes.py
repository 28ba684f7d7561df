"""The names of a resource's CDI spec file that other spec files define too (`cdi_dirs`).

CDI drops a name two files of one dir define, and of two dirs the runtime's order decides:
while another file (a vendor's spec of the kind, a stale copy, a config-management push)
defines a name of the resource's, its device is held Unhealthy (`cdi.CdiSpecWriter`), so no
Allocate hands it out under a name that resolves nowhere or to another node.

The dirs are looked at (`cdi_dirs.look_at_spec_dirs`, one look at a time) when the writer
starts, at each verify, when the held names change, and at once when a spec file (`.json` or
`.yaml`: `cdi_files.is_spec_file`) of the
spec dir or of a runtime dir above it (`cdi_resolution.follow_above`'s watch) is made,
changed or removed (`heard`: looks coalesced over `debounce`; each parses only the files that
changed, `cdi_files.SpecFiles`). Without the event, another file was seen at the verify
(10 s): meanwhile the device was Healthy and handed out (hostile27 F4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from .cdi_dirs import SpecDirRecord, look_at_spec_dirs
from .cdi_files import SpecFiles
from .cdi_pins import HeldNames
from .files import Offload
from .logs import EventLogger


@dataclass
class SpecClashes:
    """What other spec files define of a resource's names (`names`), looked at again on
    request (`check`) and on each change heard in the dirs (`heard`, while `follow` runs)."""

    path: str
    """The resource's own spec file."""
    kind: str
    resource: str
    lease: float
    spec_dirs: SpecDirRecord | None
    offload: Offload
    log: EventLogger
    changed: Callable[[], None]
    """Told when `names` changed."""
    debounce: float
    names: frozenset[str] = field(default=frozenset(), init=False)
    """Names of the file that another file defines too."""
    _known: SpecFiles = field(default_factory=SpecFiles, init=False, repr=False)
    _looking: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _due: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def heard(self) -> None:
        """A spec file of the dirs changed: look again (`follow`). Cheap: on the loop."""
        self._due.set()

    async def follow(
        self, resolvable: Callable[[], frozenset[str]], held: Callable[[], HeldNames]
    ) -> None:
        """Look again at each change heard, a burst once, until cancelled."""
        while True:
            await self._due.wait()
            await asyncio.sleep(self.debounce)
            self._due.clear()  # (a change from here on has the next look)
            await self.check(resolvable(), held())

    async def check(self, resolvable: frozenset[str], held: HeldNames) -> None:
        """Remove stale kdp-host files of the kind; hold the names another file defines too
        (in the spec dir, and in the others a host on `stateDir` wrote in: `cdi_dirs`)."""
        async with self._looking:  # (each look's finding applied in turn)
            found = await look_at_spec_dirs(
                self.path, self.kind, resolvable, self.lease, self.spec_dirs,
                self.resource, self._known, self.offload, self.log, held,
            )  # fmt: skip
            if found is None:
                return
            clashing = frozenset().union(*found.clashes.values())
            if clashing == self.names:
                return
            for other, both in found.clashes.items():
                self.log.error("cdi_spec_clash", path=self.path, other=other, names=len(both))
            if not clashing:
                self.log.info("cdi_spec_clash_cleared", path=self.path)
            self.names = clashing
            self.changed()
