"""`<stateDir>/release-state.json`: what the release trackers must keep across restarts.

Per resource, per device: `used` (the advertised IDs handed to containers whose end has not
been seen) and `owed` (the users are gone and no release has succeeded since); see
`release.py`. A file that cannot be read or does not have that shape is kept aside and marks
the state unknown: every device then counts as used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .atomic_files import write_atomic
from .files import Offload
from .logs import EventLogger

STATE_FILE = "release-state.json"
STATE_VERSION = 1


class ReleaseStateStore:
    """`<stateDir>/release-state.json`: per resource, per device, `used` and `owed`.

    One per host, shared by every resource (a restarted resource finds its entries here).
    Entries of resources not in the config are kept. Written atomically (`write_atomic`:
    temporary file, fsync, rename) through the host's offload.
    """

    def __init__(self, directory: str, log: EventLogger, offload: Offload) -> None:
        self.path = Path(directory) / STATE_FILE
        self._offload = offload
        self._log = log.bind(component="release-state", path=str(self.path))
        self._data: dict[str, dict[str, dict[str, Any]]] = {}
        self.unknown = False
        """The file could not be read: every device counts as used."""
        self._version = 0
        self._written = 0
        self._lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self.write_failures = 0

    def load(self) -> None:
        """Read the file (blocking: call it in a thread). Missing: nothing was used."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self._unreadable(f"cannot read: {exc}")
            return
        try:
            document = json.loads(raw)
            if document.get("version") != STATE_VERSION:
                raise ValueError(f"version {document.get('version')!r}, not {STATE_VERSION}")
            self._data = {
                _text(name): {_text(device): _entry(entry) for device, entry in devices.items()}
                for name, devices in document["resources"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(STATE_FILE + ".unreadable")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            self._unreadable(f"does not parse ({exc}); kept as {aside.name}")

    def _unreadable(self, why: str) -> None:
        self.unknown = True
        self._log.error(
            "release_state_unreadable",
            reason=why,
            consequence="every device counts as used: each is released once it is free",
        )

    def entries(self, resource: str) -> Mapping[str, dict[str, Any]]:
        return self._data.get(resource, {})

    def update(self, resource: str, entries: dict[str, dict[str, Any]]) -> None:
        if self._data.get(resource, {}) == entries:
            return
        if entries:
            self._data[resource] = entries
        else:
            self._data.pop(resource, None)
        self._version += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self.flush(), name="release-state")

    async def flush(self) -> None:
        """Write the file until it holds every change made so far (changes are written
        soon by themselves; PreStartContainer awaits this before it answers)."""
        async with self._lock:
            while self._written != self._version:
                version = self._version
                text = json.dumps(
                    {"version": STATE_VERSION, "resources": self._data}, sort_keys=True
                ).encode()
                try:
                    await self._offload.run(functools.partial(write_atomic, str(self.path), text))
                except OSError as exc:
                    self.write_failures += 1
                    self._log.error(
                        "release_state_write_failed",
                        reason=str(exc),
                        consequence="devices used now are not released if kdp-host restarts "
                        "before a write succeeds",
                    )
                    return
                self._written = version


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One device's entry of the state file, checked: {"used": [IDs], "owed": bool}."""
    used, owed = entry["used"], entry["owed"]
    if not isinstance(used, list) or not isinstance(owed, bool):
        raise TypeError(f"a device entry is not {{used: [...], owed: true|false}}: {entry!r}")
    return {"used": [_text(i) for i in used], "owed": owed}
