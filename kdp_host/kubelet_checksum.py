"""The checksum the kubelet's device manager writes in `kubelet_internal_checkpoint`
(`checkpointmanager/checksum`): FNV-32a over the `go-spew` rendering (`%#v`, keys sorted) of
the `Data` object as Go holds it after reading the JSON.

One function for both sides: kdp-host checks the kubelet's file with it
(`kubelet_checkpoint`), and the kubelet simulator writes its file with it
(`simulator.checkpoint`), so what the simulator writes is read as the real kubelet's is.
`spew_data` writes the rendering for the object's one shape (checked against files the
kubelet wrote, tests/test_kubelet_checkpoint.py).

Pure Python: FNV-32a costs about 0.3 µs per byte of the rendering (10,000 registered
devices: about 30 ms; with 1,000 pod entries besides: about 110 ms, measured on a loaded
2-core machine), so a writer on an event loop computes it off the loop.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any, Final

NIL: Final = "<nil>"


def checksum(data: Mapping[str, Any]) -> int:
    """The kubelet's checksum of a checkpoint's `Data` (as read from JSON; each entry's
    `AllocResp` base64 text or null)."""
    return fnv32a(spew_data(data).encode())


def fnv32a(blob: bytes) -> int:
    value = 0x811C9DC5
    for byte in blob:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def spew_data(data: Mapping[str, Any]) -> str:
    """`spew` `%#v` of the kubelet's `checkpointData` holding `data` (Go's view of the JSON:
    null or missing is a nil slice or map, `[]`/`{}` an empty one). Types are written for
    struct fields and the top value only, not for elements of a slice or map."""
    entries = data.get("PodDeviceEntries")
    listed = NIL if entries is None else "[" + " ".join(_spew_entry(e) for e in entries) + "]"
    registered = data.get("RegisteredDevices")
    return (
        "(checkpoint.checkpointData){PodDeviceEntries:([]checkpoint.PodDevicesEntry)"
        f"{listed} RegisteredDevices:(map[string][]string){_spew_map(registered, str)}}}"
    )


def _spew_entry(entry: Mapping[str, Any]) -> str:
    value = entry.get("AllocResp")
    raw = None if value is None else base64.b64decode(value, validate=True)
    answer = NIL if raw is None else "[" + " ".join(str(b) for b in raw) + "]"
    return (
        f"{{PodUID:(string){entry.get('PodUID', '')} "
        f"ContainerName:(string){entry.get('ContainerName', '')} "
        f"ResourceName:(string){entry.get('ResourceName', '')} "
        f"DeviceIDs:(checkpoint.DevicesPerNUMA){_spew_map(entry.get('DeviceIDs'), int)} "
        f"AllocResp:([]uint8){answer}}}"
    )


def _spew_map(value: Mapping[str, Any] | None, order: Callable[[str], Any]) -> str:
    if value is None:
        return NIL
    items = sorted((order(key), ids) for key, ids in value.items())
    return "map[" + " ".join(f"{key}:{_spew_ids(ids)}" for key, ids in items) + "]"


def _spew_ids(ids: list[str] | None) -> str:
    return NIL if ids is None else "[" + " ".join(ids) + "]"
