"""``kubelet_internal_checkpoint``: the device manager's file next to the plugin sockets
(docs/kubelet-contract.md §10).

The checksum is the real kubelet's (``kubelet_checksum.checksum``: FNV-32a over the go-spew
rendering of ``Data``), so kdp-host reads the simulator's file as it reads the kubelet's. It
costs about 0.3 µs per byte of that rendering (10,000 registered devices: about 30 ms), and
the file is rewritten after every ListAndWatch message: it is computed with the write, off
the event loop. The file is replaced atomically but not fsync'ed
(docs/kubelet-contract.md §13).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdp_host.api.v1beta1 import ContainerAllocateResponse
from kdp_host.kubelet_checksum import checksum

from .log import log_event
from .records import Allocation


def checkpoint_checksum(data: Mapping[str, Any]) -> int:
    """The kubelet's checksum of the checkpoint's ``Data`` object (as read from JSON)."""
    return checksum(data)


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class CheckpointEncoder:
    """Builds the canonical JSON of ``Data`` (its checksum is taken of it as read back,
    :func:`file_text`). Each resource's sorted healthy-ID list is encoded once
    per device-list change (the device manager replaces a resource's set, never changes it in
    place): the file is rewritten after every ListAndWatch message, and re-encoding every
    resource each time would cost O(all devices) per message."""

    def __init__(self) -> None:
        self._registered: dict[str, tuple[Collection[str], str]] = {}

    def data_text(
        self, allocations: Iterable[Allocation], healthy: Mapping[str, Collection[str]]
    ) -> str:
        entries = [
            {
                "PodUID": alloc.pod_uid,
                "ContainerName": alloc.container,
                "ResourceName": alloc.resource,
                "DeviceIDs": {str(node): list(ids) for node, ids in alloc.devices_per_numa.items()},
                "AllocResp": base64.b64encode(bytes(alloc.response)).decode("ascii"),
            }
            for alloc in allocations
        ]
        registered = []
        for name in sorted(healthy):
            ids = healthy[name]
            cached = self._registered.get(name)
            if cached is None or cached[0] is not ids:
                cached = (ids, _canonical(sorted(ids)))
                self._registered[name] = cached
            registered.append(f"{_canonical(name)}:{cached[1]}")
        for name in self._registered.keys() - healthy.keys():
            del self._registered[name]
        # Go marshals the nil slice of an empty podDevices as null.
        pod_entries = _canonical(entries or None)
        return (
            f'{{"PodDeviceEntries":{pod_entries},"RegisteredDevices":{{{",".join(registered)}}}}}'
        )


def file_text(data_text: str) -> bytes:
    """The whole file for the canonical ``Data`` text (blocking: the checksum is slow on a
    large checkpoint, see the module docstring)."""
    summed = checkpoint_checksum(json.loads(data_text))
    return f'{{"Data":{data_text},"Checksum":{summed}}}'.encode()


@dataclass(frozen=True, slots=True)
class CheckpointContents:
    """What the simulated kubelet's checkpoint holds."""

    allocations: list[Allocation]
    registered: list[str]  # resources with an entry in RegisteredDevices


def parse_checkpoint(raw: bytes) -> CheckpointContents:
    """Raises ValueError (also for a checksum mismatch), KeyError or TypeError."""
    document = json.loads(raw)
    data = document["Data"]
    if checkpoint_checksum(data) != document["Checksum"]:
        raise ValueError("checkpoint is corrupted")
    allocations = []
    for entry in data.get("PodDeviceEntries") or []:
        per_numa = {int(k): tuple(v) for k, v in (entry["DeviceIDs"] or {}).items()}
        ids: list[str] = []
        for node_ids in per_numa.values():
            ids.extend(i for i in node_ids if i not in ids)
        allocations.append(
            Allocation(
                pod_uid=entry["PodUID"],
                container=entry["ContainerName"],
                resource=entry["ResourceName"],
                device_ids=tuple(ids),
                devices_per_numa=per_numa,
                response=ContainerAllocateResponse.parse(base64.b64decode(entry["AllocResp"])),
            )
        )
    return CheckpointContents(allocations, list(data.get("RegisteredDevices") or {}))


def _atomic_write(path: Path, data_text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(file_text(data_text))
    os.replace(tmp, path)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class CheckpointFile:
    """Serialized writes off the event loop; a write covers every request made before it
    started, so a burst of requests costs one or two writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._requested = 0
        self._written = 0

    async def write(self, data_text: Callable[[], str]) -> None:
        """``data_text`` is called when the write starts (the latest state is written)."""
        self._requested += 1
        wanted = self._requested
        async with self._lock:
            if self._written >= wanted:
                return
            covered = self._requested
            text = data_text()
            try:
                await asyncio.to_thread(_atomic_write, self.path, text)
            except OSError as exc:
                log_event(logging.ERROR, "checkpoint_write_failed", path=self.path, error=exc)
            self._written = covered

    async def read_json(self) -> dict[str, Any] | None:
        """The file as JSON, after every write requested so far has landed."""
        async with self._lock:
            raw = await asyncio.to_thread(_read_bytes, self.path)
        if raw is None:
            return None
        document: dict[str, Any] = json.loads(raw)
        return document

    async def load(self) -> CheckpointContents | None:
        """What a starting kubelet restores; None if there is no usable file."""
        raw = await asyncio.to_thread(_read_bytes, self.path)
        if raw is None:
            return None
        try:
            return parse_checkpoint(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log_event(logging.ERROR, "checkpoint_read_failed", path=self.path, error=exc)
            return None
