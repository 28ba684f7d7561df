"""`<stateDir>/release-state.json`: what the release trackers must keep across restarts.

Per resource, per device: `used` (the advertised IDs handed to containers whose end has not
been seen) and `owed` (the users are gone and no release has succeeded since); see
`release.py`. A file that cannot be read or does not have that shape is kept aside and marks
the state unknown: every device then counts as used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .files import Offload
from .logs import EventLogger
from .state_file import StateFile, text

STATE_FILE = "release-state.json"
STATE_VERSION = 1


class ReleaseStateStore:
    """`<stateDir>/release-state.json`: per resource, per device, `used` and `owed`.

    One per host, shared by every resource (a restarted resource finds its entries here).
    Entries of resources not in the config are kept. Read and written by `StateFile`
    (atomically, through the host's offload).
    """

    def __init__(self, directory: str, log: EventLogger, offload: Offload) -> None:
        self._file = StateFile(
            directory,
            STATE_FILE,
            "release_state",
            STATE_VERSION,
            log,
            offload,
            consequence="every device counts as used: each is released once it is free",
            if_unwritten="devices used now are not released if kdp-host restarts "
            "before a write succeeds",
        )
        self.path = self._file.path
        self._data: dict[str, dict[str, dict[str, Any]]] = {}

    @property
    def unknown(self) -> bool:
        """The file could not be read: every device counts as used."""
        return self._file.unknown

    @property
    def write_failures(self) -> int:
        return self._file.write_failures

    @property
    def file(self) -> StateFile:
        return self._file

    def load(self) -> None:
        """Read the file (blocking: call it in a thread). Missing: nothing was used."""
        self._data = self._file.load(_parse) or {}

    def pending(self, resource: str, device: str) -> bool:
        """Whether the device's release is still due: used by a container whose end has not
        been seen, or owed (`ownership_bookings.ReleasePending`: its booking stays)."""
        return device in self._data.get(resource, {})

    def entries(self, resource: str) -> Mapping[str, dict[str, Any]]:
        return self._data.get(resource, {})

    def update(self, resource: str, entries: dict[str, dict[str, Any]]) -> None:
        if self._data.get(resource, {}) == entries:
            return
        if entries:
            self._data[resource] = entries
        else:
            self._data.pop(resource, None)
        self._file.changed(lambda: {"resources": self._data})

    async def flush(self) -> None:
        """Write the file until it holds every change made so far (changes are written
        soon by themselves; PreStartContainer awaits this before it answers, at most
        `state_file.WRITE_LIMIT`)."""
        await self._file.written()


def _parse(document: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        text(name): {text(device): _entry(entry) for device, entry in devices.items()}
        for name, devices in document["resources"].items()
    }


def _entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One device's entry of the state file, checked: {"used": [IDs], "owed": bool}."""
    used, owed = entry["used"], entry["owed"]
    if not isinstance(used, list) or not isinstance(owed, bool):
        raise TypeError(f"a device entry is not {{used: [...], owed: true|false}}: {entry!r}")
    return {"used": [text(i) for i in used], "owed": owed}
