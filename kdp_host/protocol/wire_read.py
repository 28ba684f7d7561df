"""Reading the two requests on the kubelet's hot paths (Allocate, GetPreferredAllocation), by
hand: their fields are the numbers `wire.HANDLED_FIELDS` lists.

A GetPreferredAllocation request names every free device of the resource (a probe of 60,000
devices: ~0.5 MB), so its repeated strings are read in one loop over the message
(`_scalars`): an ASCII message (every ID ASCII, every length below 128) is decoded to text
once and each ID sliced from it, with no call per field (~0.1 us an ID; a generator of fields
and a decode per ID took ~0.45 us).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from ..api.v1beta1 import (
    AllocateRequest,
    ContainerAllocateRequest,
    ContainerPreferredAllocationRequest,
    PreferredAllocationRequest,
)
from .wire import field_number

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not a valid encoding of the expected message."""


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


def _fields(data: bytes) -> Iterable[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of every field: bytes for length-delimited, int for
    varint; fixed-width fields are skipped over as unknown fields must be."""
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(data, pos)
            if pos + length > end:
                raise WireError("truncated field")
            yield number, wire_type, data[pos : pos + length]
            pos += length
        elif wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
            yield number, wire_type, value
        elif (pos := _after_fixed(wire_type, pos)) > end:
            raise WireError("truncated field")


def _scalars(data: bytes, strings: Mapping[int, list[str]]) -> dict[int, int]:
    """Read a message of strings and varints: each length-delimited field whose number is a
    key of `strings` is appended (as text) to its list, other ones skipped; returns the last
    varint of each number (what `_fields` yields, in one loop: the hot path of a long list).
    """
    varints: dict[int, int] = {}
    text = data.decode("ascii") if data.isascii() else None  # (one slice of it per string)
    appends = {number: found.append for number, found in strings.items()}
    wanted = appends.get
    pos, end = 0, len(data)
    while pos < end:
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == _LENGTH_DELIMITED:
            if pos < end and data[pos] < 0x80:
                length = data[pos]
                pos += 1
            else:
                length, pos = _read_varint(data, pos)
            stop = pos + length
            if stop > end:
                raise WireError("truncated field")
            found = wanted(number)
            if found is None:
                pass
            elif text is None:
                found(_text(data[pos:stop]))
            else:
                found(text[pos:stop])
                last = end - 1  # (the rest of the field's run: a repeated field is one run)
                while stop < last and data[stop] == key < 0x80 and data[stop + 1] < 0x80:
                    pos = stop + 2
                    stop = pos + data[stop + 1]
                    if stop > end:
                        raise WireError("truncated field")
                    found(text[pos:stop])
            pos = stop
        elif wire_type == _VARINT:
            varints[number], pos = _read_varint(data, pos)
        elif (pos := _after_fixed(wire_type, pos)) > end:
            raise WireError("truncated field")
    return varints


def _after_fixed(wire_type: int, pos: int) -> int:
    """Where a fixed-width field's value ends (skipped, as unknown fields must be); any
    other wire type but the two read is an error."""
    if wire_type == _FIXED64:
        return pos + 8
    if wire_type == _FIXED32:
        return pos + 4
    raise WireError(f"unsupported wire type {wire_type}")


def _length_delimited(data: bytes, number: int) -> Iterator[bytes]:
    """The values of field `number` when it is length-delimited (strings, messages)."""
    for n, wire_type, value in _fields(data):
        if n == number and wire_type == _LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            yield value


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"invalid UTF-8 in a string field: {exc}") from None


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


_ALLOCATE_REQUESTS = field_number("AllocateRequest", "container_requests")
_ALLOCATE_IDS = field_number("ContainerAllocateRequest", "devices_ids")
_PREFERRED_REQUESTS = field_number("PreferredAllocationRequest", "container_requests")
_CPAR = "ContainerPreferredAllocationRequest"
_AVAILABLE = field_number(_CPAR, "available_deviceIDs")
_MUST_INCLUDE = field_number(_CPAR, "must_include_deviceIDs")
_SIZE = field_number(_CPAR, "allocation_size")


def decode_allocate_request(data: bytes) -> AllocateRequest:
    requests = []
    for request in _length_delimited(data, _ALLOCATE_REQUESTS):
        ids: list[str] = []
        _scalars(request, {_ALLOCATE_IDS: ids})
        requests.append(ContainerAllocateRequest(devices_ids=ids))
    return AllocateRequest(container_requests=requests)


def decode_preferred_allocation_request(data: bytes) -> PreferredAllocationRequest:
    requests = []
    for request in _length_delimited(data, _PREFERRED_REQUESTS):
        available: list[str] = []
        must_include: list[str] = []
        varints = _scalars(request, {_AVAILABLE: available, _MUST_INCLUDE: must_include})
        requests.append(
            ContainerPreferredAllocationRequest(
                available_deviceIDs=available,
                must_include_deviceIDs=must_include,
                allocation_size=_int32(varints.get(_SIZE, 0)),
            )
        )
    return PreferredAllocationRequest(container_requests=requests)


DECODERS: Final[Mapping[type, Callable[[bytes], object]]] = {
    AllocateRequest: decode_allocate_request,
    PreferredAllocationRequest: decode_preferred_allocation_request,
}
"""Message type -> its hand-written decoder."""
