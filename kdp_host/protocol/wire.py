"""Protobuf wire encoding of the messages on the kubelet's hot paths, written out by hand.

betterproto2 is the project's message library, but its pure-Python codec is slow where the
kubelet waits: ~20 us per ListAndWatch device, ~115 us to encode a rich AllocateResponse,
~4.7 ms to parse a GetPreferredAllocation request offering 1,000 IDs. These few messages
have flat, fixed shapes, so this module writes and reads their bytes directly (10-100x
faster). The output is byte-identical to betterproto2's and the parsed messages are equal
to its own (tests/test_wire.py checks both, and against the official protobuf library).
Everything else still goes through betterproto2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..api.v1beta1 import (
    AllocateRequest,
    AllocateResponse,
    ContainerAllocateRequest,
    ContainerAllocateResponse,
    ContainerPreferredAllocationRequest,
    ListAndWatchResponse,
    PreferredAllocationRequest,
    PreferredAllocationResponse,
)

_SMALL_VARINTS = tuple(bytes((n,)) for n in range(128))
_TAG_1 = b"\x0a"  # field 1, length-delimited
_TAG_2 = b"\x12"  # field 2, length-delimited
_TAG_3 = b"\x1a"  # field 3, length-delimited
_TAG_4 = b"\x22"  # field 4, length-delimited
_TAG_5 = b"\x2a"  # field 5, length-delimited
_NUMA_ID_TAG = b"\x08"  # NUMANode.ID: field 1, varint
_TRUE_3 = b"\x18\x01"  # Mount.read_only: field 3, varint 1


class WireError(ValueError):
    """Bytes that are not a valid encoding of the expected message."""


def varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    value &= 0xFFFFFFFFFFFFFFFF  # int64: negative numbers take ten bytes, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string_field(tag: bytes, text: str) -> bytes:
    """A proto3 string field (omitted when empty, as proto3 does)."""
    if not text:
        return b""
    data = text.encode()
    return tag + varint(len(data)) + data


def string_field_always(tag: bytes, text: str) -> bytes:
    """A repeated-string element or a map key/value: written even when empty."""
    data = text.encode()
    return tag + varint(len(data)) + data


def message_field(tag: bytes, payload: bytes) -> bytes:
    """An embedded message (always written, even empty: it is present)."""
    return tag + varint(len(payload)) + payload


# ---------------------------------------------------------------- ListAndWatchResponse

HEALTH_FIELDS = {True: string_field(_TAG_2, "Healthy"), False: string_field(_TAG_2, "Unhealthy")}


def topology_field(numa: int) -> bytes:
    """Device.topology with one NUMA node (node 0 is an empty NUMANode, as proto3 does)."""
    node = _NUMA_ID_TAG + varint(numa) if numa else b""
    return message_field(_TAG_3, message_field(_TAG_1, node))


def encode_device_entry(entry_id: str, healthy: bool, topology: bytes) -> bytes:
    """One `devices` entry of a ListAndWatchResponse: tag, length, Device bytes.

    `topology` is `topology_field(numa)` (callers cache it per NUMA node), or b"" for none.
    """
    return message_field(_TAG_1, string_field(_TAG_1, entry_id) + HEALTH_FIELDS[healthy] + topology)


class PreEncodedListAndWatchResponse(ListAndWatchResponse):
    """A ListAndWatchResponse whose wire bytes were built ahead (grpclib only serializes it)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def SerializeToString(self) -> bytes:
        return self._data

    def __bytes__(self) -> bytes:
        return self._data


# ---------------------------------------------------------------- Allocate


def _map_entries(tag: bytes, entries: Mapping[str, str]) -> Iterable[bytes]:
    """Map entries are messages whose key and value are always written, even when empty."""
    for key, value in entries.items():
        yield message_field(
            tag, string_field_always(_TAG_1, key) + string_field_always(_TAG_2, value)
        )


def encode_container_allocate_response(response: ContainerAllocateResponse) -> bytes:
    parts = list(_map_entries(_TAG_1, response.envs))
    parts += [
        message_field(
            _TAG_2,
            string_field(_TAG_1, m.container_path)
            + string_field(_TAG_2, m.host_path)
            + (_TRUE_3 if m.read_only else b""),
        )
        for m in response.mounts
    ]
    parts += [
        message_field(
            _TAG_3,
            string_field(_TAG_1, d.container_path)
            + string_field(_TAG_2, d.host_path)
            + string_field(_TAG_3, d.permissions),
        )
        for d in response.devices
    ]
    parts += _map_entries(_TAG_4, response.annotations)
    parts += [message_field(_TAG_5, string_field(_TAG_1, c.name)) for c in response.cdi_devices]
    return b"".join(parts)


class FastAllocateResponse(AllocateResponse):
    """An AllocateResponse that serializes itself with `encode_container_allocate_response`."""

    def SerializeToString(self) -> bytes:
        return b"".join(
            message_field(_TAG_1, encode_container_allocate_response(c))
            for c in self.container_responses
        )

    def __bytes__(self) -> bytes:
        return self.SerializeToString()


class FastPreferredAllocationResponse(PreferredAllocationResponse):
    def SerializeToString(self) -> bytes:
        return b"".join(
            message_field(_TAG_1, b"".join(string_field_always(_TAG_1, i) for i in c.device_i_ds))
            for c in self.container_responses
        )

    def __bytes__(self) -> bytes:
        return self.SerializeToString()


# ---------------------------------------------------------------- decoding requests


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint too long")


def _fields(data: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) of every field: bytes for length-delimited, int for
    varint; fixed-width fields are skipped over as unknown fields must be."""
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > end:
                raise WireError("truncated field")
            yield number, 2, data[pos : pos + length]
            pos += length
        elif wire_type == 0:
            value, pos = _read_varint(data, pos)
            yield number, 0, value
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise WireError("truncated field")


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"invalid UTF-8 in a string field: {exc}") from None


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def decode_allocate_request(data: bytes) -> AllocateRequest:
    requests = []
    for number, wire_type, value in _fields(data):
        if number == 1 and wire_type == 2:
            ids = [_text(v) for n, w, v in _fields(value) if n == 1 and w == 2]
            requests.append(ContainerAllocateRequest(devices_ids=ids))
    return AllocateRequest(container_requests=requests)


def decode_preferred_allocation_request(data: bytes) -> PreferredAllocationRequest:
    requests = []
    for number, wire_type, value in _fields(data):
        if number != 1 or wire_type != 2:
            continue
        available: list[str] = []
        must_include: list[str] = []
        size = 0
        for inner, inner_type, item in _fields(value):
            if inner == 1 and inner_type == 2:
                available.append(_text(item))
            elif inner == 2 and inner_type == 2:
                must_include.append(_text(item))
            elif inner == 3 and inner_type == 0:
                size = _int32(item)
        requests.append(
            ContainerPreferredAllocationRequest(
                available_deviceIDs=available,
                must_include_deviceIDs=must_include,
                allocation_size=size,
            )
        )
    return PreferredAllocationRequest(container_requests=requests)


class FastAllocateRequest(AllocateRequest):
    @classmethod
    def FromString(cls, data: bytes) -> AllocateRequest:  # type: ignore[override]
        return decode_allocate_request(data)


class FastPreferredAllocationRequest(PreferredAllocationRequest):
    @classmethod
    def FromString(cls, data: bytes) -> PreferredAllocationRequest:  # type: ignore[override]
        return decode_preferred_allocation_request(data)
