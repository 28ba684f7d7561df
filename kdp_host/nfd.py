"""Node Feature Discovery labels: a feature file for NFD's `local` source.

With `nodeFeatures` set, kdp-host keeps one file listing, for every resource this node
serves, `<resource>.present=true|false` and `<resource>.count=<healthy devices>` (physical
devices, replicas not counted). NFD's worker turns each line into a node label at its next
rescan, so pods and other tools can select nodes by what kdp-host found, and kdp-host needs
no API access for it. The file is written atomically (a dot file, which NFD ignores, renamed
into place) only when its content changes, and removed when kdp-host stops: an uninstalled
plugin leaves no stale labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from .atomic_files import write_atomic
from .backoff import Backoff
from .devices import Snapshot
from .files import Offload
from .logs import EventLogger
from .rules import node_feature_labels

WRITE_DEBOUNCE = 0.1
"""Changes within this time (a burst of hot-plugs, a reload) make one write."""
MAX_FEATURE_FILE_BYTES = 64 * 1024
"""NFD ignores a feature file larger than this."""


def feature_file_text(counts: dict[str, int]) -> str:
    """The file's content for the given resources' healthy device counts."""
    lines = ["# Written by kdp-host for Node Feature Discovery (local source). Do not edit."]
    for resource in sorted(counts):
        present, count = node_feature_labels(resource)
        lines += [
            f"{present}={'true' if counts[resource] else 'false'}",
            f"{count}={counts[resource]}",
        ]
    return "\n".join(lines) + "\n"


class NodeFeatureFile:
    """Keeps the feature file in step with the resources' device lists."""

    def __init__(self, path: str, log: EventLogger, offload: Offload) -> None:
        self.path = path
        self._offload = offload
        self._log = log.bind(component="node-features", path=path)
        self._counts: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._written: str | None = None
        self._retry = Backoff(initial=1.0, maximum=60.0)

    def update(self, resource: str, snapshot: Snapshot) -> None:
        """A resource's new device list (a DeviceTable listener, on the event loop)."""
        healthy = sum(1 for device in snapshot.devices if device.healthy)
        if self._counts.get(resource) != healthy:
            self._counts[resource] = healthy
            self._changed.set()

    def forget(self, resource: str) -> None:
        """The resource left this node's config (once its runtime stopped)."""
        if self._counts.pop(resource, None) is not None:
            self._changed.set()

    async def run(self) -> None:
        """Write on every change until cancelled, then remove the file."""
        try:
            while True:
                await self._changed.wait()
                await asyncio.sleep(WRITE_DEBOUNCE)
                self._changed.clear()
                await self._write(feature_file_text(self._counts))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # at shutdown: a small local unlink

    async def _write(self, text: str) -> None:
        if text == self._written:
            return
        data = text.encode()
        if len(data) > MAX_FEATURE_FILE_BYTES:
            self._log.error(
                "node_features_too_large",
                bytes=len(data),
                detail=f"NFD ignores feature files over {MAX_FEATURE_FILE_BYTES} bytes",
            )
        try:
            await self._offload.run(lambda: write_atomic(self.path, data))
        except OSError as exc:
            delay = self._retry.next_delay()
            self._log.error(
                "node_features_write_failed", reason=exc.strerror or str(exc), retry_in=delay
            )
            await asyncio.sleep(delay)
            self._changed.set()
            return
        self._retry.reset()
        self._written = text
        self._log.info("node_features_written", resources=len(self._counts))
