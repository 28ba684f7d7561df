"""What the kubelet handed out: its device manager's checkpoint, its format and what is booked.

The kubelet keeps `kubelet_internal_checkpoint` in its device-plugin directory (the one
kdp-host serves its sockets in) and rewrites it at every allocation: one entry per (pod,
container, resource) with the device IDs it got and the plugin's Allocate answer for that
container, as protobuf bytes (`ContainerAllocateResponse`). A container's runtime set-up is
made from that answer, and a restarted container gets the same answer again, so its host
paths are what the pod holds, whatever the IDs mean now.

It is the kubelet's own record of who holds what: every entry is booked (`take_handed`),
with what `ownership.json` holds, when kdp-host starts and before a reload starts a
resource (`checkpoint_bookings`, which reads it off the loop: `checkpoint_handed`): a
probe that renamed its IDs while kdp-host was down, a resource renamed, or another plugin's
pod (a migration from generic-device-plugin) then cannot make the node a pod holds go out
under another ID. The file is the kubelet's, not an API: anything missing, unreadable, of
another shape, or with a checksum that does not match is a `CheckpointError` (the caller
logs it and goes on without it).

The checksum is the kubelet's (`kubelet_checksum.checksum`: FNV-32a over the `go-spew`
rendering of the `Data` object), the one the kubelet simulator writes too.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .api.v1beta1 import ContainerAllocateResponse
from .cdi_files import NodeNumber
from .cdi_rules import cdi_annotation_names, is_cdi_annotation_key
from .devices import physical_id
from .handed_entries import Handed as HandedUse
from .handed_entries import uses
from .kubelet_checksum import checksum
from .ownership_claims import NOTHING, Claim, Owner

if TYPE_CHECKING:
    from .ownership_bookings import Ledger

CHECKPOINT_FILE: Final = "kubelet_internal_checkpoint"
READ_TIMEOUT: Final = 10.0
"""Seconds the start waits for the checkpoint to be read (a hung file system)."""
MAX_CHECKPOINT_BYTES: Final = 64 << 20
"""A larger file is not read (the kubelet's holds a few KiB per pod)."""


class CheckpointError(ValueError):
    """The checkpoint cannot be used (why, in words)."""


@dataclass(frozen=True)
class Handed:
    """One container's allocation of one resource, as the kubelet kept it."""

    resource: str
    ids: tuple[str, ...]
    """The device IDs the container got (sorted)."""
    paths: tuple[str, ...]
    """The host paths its answer handed out: DeviceSpec host paths, then mount sources."""
    cdi_names: tuple[str, ...] = ()
    """The CDI device names its answer carried: `cdi_devices`, then those of its
    `cdi.k8s.io/...` annotations (their host paths are in `paths` where `read_handed`
    resolved them: `cdi_lookup`)."""
    nodes: int = 0
    """How many of `paths` (the first) are device nodes: DeviceSpec host paths, then those
    of its CDI names' deviceNodes."""
    unresolved: tuple[tuple[str, str], ...] = ()
    """Its CDI names that resolved nowhere, each with why (their nodes are not known)."""
    numbered: tuple[NodeNumber, ...] = ()
    """The nodes its CDI names give by number (claimed by it: `checkpoint_handed`)."""


@dataclass(frozen=True)
class HandedClaims:
    """A `Handed` with the claims of its host paths (`ownership_claims.claim_of`)."""

    handed: Handed
    claims: tuple[Claim, ...]


Gained = list[tuple[Owner, tuple[Claim, ...]]]
"""Bookings made or widened, each with the claims it gained."""


def take_handed(
    ledger: Ledger,
    handed: Iterable[HandedClaims],
    now: float,
    numbers: bool = False,
) -> Gained:
    """Book what the kubelet kept of its pods' answers (read at start, before any resource
    publishes, and before a reload starts one: `checkpoint_bookings`): the claims of every
    host path a container was handed, as places of each of its IDs (shared by them:
    `Booking.group`), so no device reaching one is advertised under another ID while the
    pod may hold it, whatever the IDs mean now (each is booked as its own device: which
    device it is now is not known). A booking kept in the file is widened
    by the handed claims it lacks; an ID another running host has booked is left to it. An
    answer's CDI names count as its DeviceSpecs and mounts do, by the host paths
    `read_handed` resolved them to (a name that resolves nowhere books nothing: said by the
    caller, booked once a spec file defines it; an ID booked with what else the answer
    handed out is `Ledger.unresolved`: PodResources adds its device's claims, as it books
    an ID without a booking). `numbers` (PodResources shows when a booking
    ends): an answer's node gone now makes its IDs' bookings `number_unknown` where no
    booking knew what it was: one booked from the checkpoint alone (bookings lost, or a stale
    `ownership.json` that lacks it), or kept so (unplugged while kdp-host was down: the
    kernel may give its number to a node found later, which its pod's container reaches).
    An ID without a booking is booked all the same (a pod that ended: its entry stays until
    the kubelet's next allocation, and PodResources ends the booking; or one a stale
    `ownership.json` lacks)."""
    gained: Gained = []
    for entry in handed:
        ids, claims = entry.handed.ids, entry.claims
        if not claims:
            continue
        group = ids if len(ids) > 1 else ()
        nodes = claims[: entry.handed.nodes] if numbers else ()
        gone = {path for key, path, _ in nodes if key[0] == NOTHING}
        for kubelet_id in ids:
            owner = Owner(entry.handed.resource, kubelet_id)
            before = ledger.bookings.get(owner)
            if before is None and owner not in ledger.foreign_owners:
                unknown = bool(gone - _known(claims))  # (a number the record kept is known)
                ledger.record(owner, kubelet_id, (), now, claims, unknown)
                gained.append((owner, claims))
            elif before is not None:
                held = (*before.claims, *before.places, *before.shared)
                kept = {claim[0] for claim in held}
                missing = tuple(claim for claim in claims if claim[0] not in kept)
                places = before.places + missing
                unknown = bool(gone - _known(held))
                ledger.record(
                    owner, before.device, before.claims, now, places, unknown, before.shared
                )
                if missing:
                    gained.append((owner, missing))
            else:
                continue
            ledger.bookings[owner].group = group
            if entry.handed.unresolved:  # (what the name stood for: its device's, if ours)
                ledger.unresolved.add(owner)
    return gained


EntryOf = Callable[[str, str], "HandedUse | None"]
"""(resource, device ID) -> the device's entry of `handed-out.json` (`HandedRecord.entry`)."""


def as_recorded(handed: Iterable[HandedClaims], entry_of: EntryOf) -> list[HandedClaims]:
    """`handed`, each entry's claims widened by what each of its host paths reached when an
    Allocate of this host handed its IDs' device out (`handed-out.json`, every use it keeps:
    `HandedUse.reached`), where that is not what the path reaches now (renamed, replaced,
    gone while kdp-host was down). The record is what an answer waits for; `ownership.json`
    is not (a write that fails or stalls past the limit answers all the same, the booking
    held in memory): killed before that write lands, the restart books the pod's IDs from
    the checkpoint's paths, so the identities come from the record (issue 17, N1)."""
    out: list[HandedClaims] = []
    for entry in handed:
        paths, have = set(entry.handed.paths), {claim[0] for claim in entry.claims}
        extra: list[Claim] = []
        resource = entry.handed.resource
        for device_id in dict.fromkeys(map(physical_id, entry.handed.ids)):
            recorded = entry_of(resource, device_id)
            for use in uses(recorded) if recorded is not None else ():
                for path, identity in sorted(use.reached.items()):
                    if path in paths and identity not in have:
                        have.add(identity)
                        extra.append((identity, path, path))
        out.append(HandedClaims(entry.handed, (*entry.claims, *extra)) if extra else entry)
    return out


def _known(claims: Iterable[Claim]) -> set[str]:
    """The paths (host and real) of claims that say what they reached: a node by its number
    (held by it), or what has no number."""
    return {p for key, path, real in claims if key[0] != NOTHING for p in (path, real)}


def parse_checkpoint(
    blob: bytes, resources: Collection[str] | None = None, skip: Collection[str] = ()
) -> list[Handed]:
    """The allocations of `resources` (None: all) but those of `skip` in a checkpoint,
    checked: its shape, the kubelet's checksum, each answer. A checkpoint with none of them
    is not checked further (the checksum costs about 0.2 µs per byte of its rendering: what
    nothing is booked from is not paid for). Raises CheckpointError."""
    data, expected, entries = _entries_of(blob)
    wanted = [
        e
        for e in entries
        if (resources is None or e["ResourceName"] in resources) and e["ResourceName"] not in skip
    ]
    if not wanted:
        return []
    _checksum_checked(data, expected)
    answers: dict[str, Answer] = {}
    return [_handed(entry, answers) for entry in wanted]


def listed_ids(blob: bytes) -> frozenset[tuple[str, str]]:
    """Every (resource, device ID) a checkpoint lists, checked as `parse_checkpoint` checks
    it (`unlisted`: an ID the kubelet dropped from it was freed). Raises CheckpointError."""
    return frozenset((h.resource, i) for h in parse_checkpoint(blob) for i in h.ids)


def vouched_ids(blob: bytes) -> frozenset[tuple[str, str]]:
    """Every (resource, device ID) a checkpoint lists, its shape and the kubelet's checksum
    checked also when it lists none, no answer decoded: what ends a booking made from it
    alone (`ownership_learnt`). Raises CheckpointError."""
    data, expected, entries = _entries_of(blob)
    _checksum_checked(data, expected)
    return frozenset(
        (entry["ResourceName"], device_id)
        for entry in entries
        for ids in (entry.get("DeviceIDs") or {}).values()
        for device_id in ids
    )


def _entries_of(blob: bytes) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """A checkpoint's `Data`, `Checksum` and entries, of the kubelet's shape (`_check`)."""
    try:
        document = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"is not JSON ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("Data"), dict):
        raise CheckpointError("has no Data object")
    data = document["Data"]
    expected = document.get("Checksum")
    if not isinstance(expected, int) or isinstance(expected, bool):
        raise CheckpointError("has no numeric Checksum")
    entries = data.get("PodDeviceEntries")
    if entries is not None and not isinstance(entries, list):
        raise CheckpointError("PodDeviceEntries is not a list")
    for entry in entries or ():
        _check(entry)
    return data, expected, entries or []


def _checksum_checked(data: dict[str, Any], expected: int) -> None:
    registered = data.get("RegisteredDevices")
    if registered is not None and not _ids_by(registered, _text):
        raise CheckpointError("RegisteredDevices is not a map of ID lists")
    actual = checksum(data)
    if actual != expected:
        raise CheckpointError(
            f"checksum {expected} does not match its data ({actual}): written in part, or "
            "changed by hand"
        )


def _check(entry: Any) -> None:
    """An entry has the kubelet's shape (its answer is decoded only when wanted)."""
    if not isinstance(entry, dict):
        raise CheckpointError(f"an entry is not an object: {entry!r:.80}")
    texts = [entry.setdefault(name, "") for name in ("PodUID", "ContainerName", "ResourceName")]
    if not all(isinstance(text, str) for text in texts):
        raise CheckpointError(f"an entry's PodUID, ContainerName, ResourceName: {entry!r:.120}")
    by_numa = entry.get("DeviceIDs")
    if isinstance(by_numa, list):
        raise CheckpointError("an entry's DeviceIDs is a list (the format before Kubernetes 1.20)")
    if by_numa is not None and not _ids_by(by_numa, _int64):
        raise CheckpointError(f"an entry's DeviceIDs is not a map of ID lists: {by_numa!r:.80}")
    _answer_bytes(entry.get("AllocResp"))


Answer = tuple[tuple[str, ...], tuple[str, ...], int]
"""What an Allocate answer hands out: `Handed.paths`, `cdi_names`, `nodes`."""


def _handed(entry: dict[str, Any], answers: dict[str, Answer]) -> Handed:
    """A checked entry, its answer decoded (once for the same answer of many entries: the
    pods of one device whose entries the kubelet kept)."""
    by_numa = entry.get("DeviceIDs") or {}
    ids = sorted({i for listed in by_numa.values() for i in listed or ()})
    text = entry.get("AllocResp") or ""
    found = answers.get(text)
    if found is None:
        try:
            answer = ContainerAllocateResponse.parse(_answer_bytes(text) or b"")
        except Exception as exc:  # (betterproto2 raises several kinds on bad bytes)
            raise CheckpointError(
                f"an entry's AllocResp is no ContainerAllocateResponse ({exc})"
            ) from None
        nodes = [spec.host_path for spec in answer.devices if spec.host_path]
        paths = (*nodes, *(mount.host_path for mount in answer.mounts if mount.host_path))
        names = tuple(device.name for device in answer.cdi_devices)
        for key, value in sorted(answer.annotations.items()):  # (the runtime reads them too)
            if is_cdi_annotation_key(key):
                names += tuple(cdi_annotation_names(value))
        names = tuple(dict.fromkeys(names))
        found = answers[text] = (paths, names, len(nodes))
    return Handed(entry["ResourceName"], tuple(ids), *found)


def _answer_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CheckpointError("an entry's AllocResp is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError(f"an entry's AllocResp is not base64 ({exc})") from None


def _int64(key: str) -> bool:
    """Whether a key is a NUMA node number as Go reads it (`strconv.ParseInt`)."""
    try:
        return -(1 << 63) <= int(key) < (1 << 63) and key.strip() == key and "_" not in key
    except ValueError:
        return False


def _text(key: str) -> bool:
    return True


def _ids_by(value: Any, key_ok: Callable[[str], bool]) -> bool:
    """Whether `value` is a JSON object of ID lists (or nulls) whose keys pass `key_ok`."""
    if not isinstance(value, dict):
        return False
    for key, listed in value.items():
        if not key_ok(key):
            return False
        if listed is not None and not (
            isinstance(listed, list) and all(isinstance(i, str) for i in listed)
        ):
            return False
    return True
