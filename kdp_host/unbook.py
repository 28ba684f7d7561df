"""`kdp-host unbook`: drop bookings from `<stateDir>/ownership.json` while kdp-host is stopped
(and the uses `handed-out.json` keeps under their IDs, which a start would book again).

With PodResources polling off nothing shows that the pod holding a booked ID has ended, so a
booking lives until the kubelet allocates that ID again (`ownership.py`). This is the one other
way to end it: the operator, who knows the pod is gone, drops it. A running kdp-host keeps its
bookings in memory and would write them back, so the command refuses while a kdp-host runs on
the state directory (it holds `<stateDir>/kdp-host.lock`, `state_lock`), whatever its config.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError, load_config
from .files import DaemonThreads
from .logs import get_logger
from .ownership_document import bookings_document, ownership_file, read_saved
from .state_lock import StateDirBusy, exclusive

if TYPE_CHECKING:
    from .handed_entries import Handed

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


async def drop_bookings(state_dir: str, resource: str, ids: Sequence[str]) -> list[str]:
    """Drop the bookings of `resource` (those of `ids` only, when given), holding the state
    directory alone; returns the IDs dropped. Raises StateDirBusy while a kdp-host runs on
    it, OSError when the file cannot be written."""
    with exclusive(state_dir, get_logger()):
        return await _drop(state_dir, resource, ids)


async def _drop(state_dir: str, resource: str, ids: Sequence[str]) -> list[str]:
    offload = DaemonThreads()
    state = ownership_file(state_dir, get_logger(), offload)
    saved = await offload.run(lambda: state.load(read_saved)) or []
    keep = [b for b in saved if b[0].resource != resource or (ids and b[0].device not in ids)]
    dropped = sorted(b[0].device for b in saved if b not in keep)
    if dropped:
        state.changed(lambda: bookings_document(keep))
        await state.flush()
        if state.write_failures:
            raise OSError(f"cannot write {state.path}")
    return sorted({*dropped, *await _forget_handed(state_dir, resource, ids, offload)})


async def _forget_handed(
    state_dir: str, resource: str, ids: Sequence[str], offload: DaemonThreads
) -> list[str]:
    """The uses `handed-out.json` keeps under those IDs (every ID of `resource` without
    `ids`) lose them, and a device's entry with no ID left goes: a start books an ID that
    only the record keeps (`recorded_bookings`), so an ID dropped here alone would come back.
    A record that cannot be read is left as it is (a start withholds what it cannot tell)."""
    from .handed_entries import uses  # (only when unbook runs: every command's parser
    from .handed_out import HandedRecord  # imports this module)

    record = HandedRecord(state_dir, get_logger(), offload)
    await offload.run(record.load)
    if record.file is None or record.file.unknown:
        return []
    forgotten: set[str] = set()
    for device_id in record.devices(resource):
        entry = record.entry(resource, device_id)
        mine = {i for use in uses(entry) for i in use.ids} if entry is not None else set()
        if found := {i for i in mine if not ids or i in ids}:
            forgotten |= found
            record.change(resource, device_id, functools.partial(_without, found))
    if forgotten:
        record.let_go(lambda _name, _id: True, resource)  # (entries with no ID left)
        await record.file.flush()
        if record.file.write_failures:
            raise OSError(f"cannot write {record.file.path}")
    return sorted(forgotten)


def _without(ids: set[str], handed: Handed) -> Handed:
    """`handed` with no use under `ids`."""
    earlier = tuple(replace(use, ids=use.ids - ids) for use in handed.earlier)
    return replace(handed, ids=handed.ids - ids, earlier=earlier)


UNBOOK_HELP = (
    "Drop the bookings of a resource whose pods are gone (kdp-host stopped; needed only with "
    "PodResources polling off)."
)


def cmd_unbook(args: argparse.Namespace) -> int:
    """Exit 2: invalid config; 1: kdp-host runs, nothing to drop, or the write failed."""
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        print(f"kdp-host: invalid config {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        dropped = asyncio.run(drop_bookings(config.state_dir, args.resource, args.id))
    except StateDirBusy as exc:
        print(
            f"kdp-host: {exc}: stop it first (a running host keeps its bookings and writes "
            "them back)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except OSError as exc:
        print(f"kdp-host: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not dropped:
        print(f"kdp-host: no booking of {args.resource} to drop", file=sys.stderr)
        return EXIT_FAILED
    print(f"dropped the bookings of {args.resource}: {', '.join(dropped)}")
    return EXIT_OK


def add_unbook_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("resource", help="the resource name, e.g. example.com/fpga")
    parser.add_argument(
        "id", nargs="*", help="the booked IDs to drop (default: every booking of the resource)"
    )
