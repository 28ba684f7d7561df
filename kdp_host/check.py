"""`kdp-host check`: every entry scanned once, as a run's driver would report it, and the
warnings about what the devices found reach (a node two devices reach, the root disk) and
about a list too long for one message to the kubelet."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Config
from .container_paths import OwnCollisions
from .device_table import DeviceTable
from .devices import HEALTHY, UNHEALTHY, Device
from .identity import identity_of
from .logs import get_logger, quote_text
from .node import NodeInfo, selects
from .rules import MAX_PRE_START_TIMEOUT

if TYPE_CHECKING:  # a module only one command uses is imported where it runs
    from .sysfs.rootdisk import RootDisk


@dataclass(frozen=True)
class CheckRow:
    """One line of `check`'s table: a resource and what its driver found."""

    resource: str
    driver: str
    text: str
    failed: bool = False
    """The driver's scan failed (the text is its error)."""
    device: Device | None = None


@dataclass
class Scan:
    """What `check` found: its rows, and the warnings of lists too large."""

    rows: list[CheckRow] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)
    """A warning per entry whose list (replicas counted) one ListAndWatch message cannot hold."""


async def scan_entries(config: Config, node: NodeInfo | None) -> Scan:
    """Scan every entry (or, for a node, the entries it serves). Each scan goes through the
    reporter a run's driver reports to (`DeviceReporter`), so what it leaves out (a node
    path `{paths}` cannot list) is left out here too, with the same `path_skipped` line."""
    from .drivers import DriverDeps, DriverError, failure_threshold, make_driver
    from .drivers.reporting import DeviceReporter
    from .metrics import Metrics
    from .watch import PollingWatcher

    log = get_logger()
    metrics = Metrics(process_collectors=False)
    scan = Scan()
    rows = scan.rows
    for resource in config.resources:
        kind = resource.driver.kind
        selected = True if node is None else selects(resource, node)
        if not selected:
            why = "selects by label: give --node-label" if selected is None else "another node's"
            rows.append(CheckRow(resource.name, kind, f"(not scanned: {why})"))
            continue
        deps = DriverDeps(log.bind(resource=resource.name), PollingWatcher(log))
        try:
            scanned = await make_driver(resource.driver, deps).scan()
        except DriverError as exc:
            rows.append(CheckRow(resource.name, kind, f"driver error: {quote_text(exc)}", True))
            continue
        table = DeviceTable(replicas=resource.replicas)
        DeviceReporter(
            table,
            resource=resource.name,
            log=deps.log,
            metrics=metrics,
            failure_threshold=failure_threshold(resource.driver),
            own_collisions=OwnCollisions.of(resource),
        ).update(scanned)
        devices = sorted(table.snapshot.devices, key=lambda d: d.id)
        if not devices:
            rows.append(CheckRow(resource.name, kind, "(no devices found now)"))
        rows.extend(
            CheckRow(resource.name, kind, device_cell(device), device=device) for device in devices
        )
        if (warning := too_large_warning(resource.name, table)) is not None:
            scan.too_large.append(warning)
    return scan


def too_large_warning(resource: str, table: DeviceTable) -> str | None:
    """A line if a run would advertise only part of the list: it is longer than one
    ListAndWatch message may be (`protocol.lists.list_overflow`, the rule a run follows)."""
    from .protocol.lists import entries_overflow
    from .rules import LIST_AND_WATCH_MAX_BYTES

    overflow = entries_overflow(table.snapshot.advertised)
    if overflow is None:
        return None
    return (
        f"warning: {resource}: the device list takes {overflow.size} bytes, more than one "
        f"message to the kubelet may hold ({LIST_AND_WATCH_MAX_BYTES}): only the first "
        f"{overflow.advertised} of its {overflow.entries} entries would be advertised "
        "(lower replicas, or split the devices over several resources)"
    )


def root_disk_warnings(rows: Iterable[CheckRow], root: RootDisk) -> list[str]:
    """A line for each device that would hand out the root filesystem's disk."""
    return [
        f"warning: {row.resource} hands out the root filesystem's disk: "
        f"{quote_text(node.host_path)}"
        for row in rows
        if row.device is not None
        for node in row.device.nodes
        if root.holds(node.host_path)
    ]


def handed_warnings(rows: Iterable[CheckRow], config: Config, config_file: str) -> list[str]:
    """A line for each device a run would leave out for a path of its own: a node or mount
    of it whose real path no container may be handed (`unsafe_mount`: `config.handed`, the
    rule a run follows), else a node whose path reaches a directory, a FIFO or a socket
    (`not_a_node`: `ownership_claims.Claims.not_nodes`, the rule a run follows)."""
    from .config import never_handed
    from .identity import NOT_A_NODE, not_a_node_why
    from .mount_table import read_mounts
    from .ownership_claims import device_claims
    from .ownership_paths import read_only_paths

    rule, mounts = never_handed(config, config_file), read_mounts()
    found: list[str] = []
    for row in rows:
        device = row.device
        if device is None:
            continue
        paths = [*(n.seen for n in device.nodes), *(m.host_path for m in device.mounts)]
        read_only, later = read_only_paths(device), not device.healthy
        for path in paths:
            writable = path not in read_only
            if (why := rule.path_problem(path, mounts, later=later, writable=writable)) is not None:
                found.append(
                    f"warning: {row.resource}: device {quote_text(device.id)} would not be "
                    f"advertised (unsafe_mount): {quote_text(path)} {why}"
                )
                break
        else:
            if odd := device_claims(device).not_nodes:
                key, path, real = odd[0]
                shown = "" if real == path else f"(resolved: {quote_text(real)}) "
                found.append(
                    f"warning: {row.resource}: device {quote_text(device.id)} would not be "
                    f"advertised ({NOT_A_NODE}): {quote_text(path)} {shown}"
                    + not_a_node_why(key[0])
                )
    return found


def dev_root_warnings(rows: Iterable[CheckRow]) -> list[str]:
    """A line for each node a device names at one host path and kdp-host finds at another
    (`DeviceNode.seen_path`: a sysfs node below `devRoot`) where both can be read and are
    not the same node: `devRoot` is not the host's /dev, so the DeviceSpec hands out
    another node than the one found (a run claims both, the host path by place)."""
    found: list[str] = []
    for row in rows:
        device = row.device
        for node in () if device is None else device.nodes:
            if device is None or node.seen_path is None:
                continue
            try:
                seen, handed = os.stat(node.seen_path), os.stat(node.host_path)
            except (OSError, ValueError):
                continue  # (not both there: in a container, the host's /dev is not)
            if identity_of(seen) != identity_of(handed):
                found.append(
                    f"warning: {row.resource}: device {quote_text(device.id)}: "
                    f"{quote_text(node.seen_path)} (devRoot) and {quote_text(node.host_path)}, "
                    "the path its DeviceSpec names, are not the same node: is devRoot where "
                    "kdp-host sees the host's /dev?"
                )
    return found


def deadline_warnings(config: Config) -> list[str]:
    """A line for each resource whose `release.timeout` and `preStart.timeout` together do
    not fit in what a PreStartContainer call has (`MAX_PRE_START_TIMEOUT`): a start that
    waits for a release that long fails with kdp-host's error (`start_budget`), and the
    kubelet tries it again later."""
    found = []
    for resource in config.resources:
        release, pre_start = resource.release, resource.pre_start
        if release is None or pre_start is None:
            continue
        if (both := release.timeout + pre_start.timeout) > MAX_PRE_START_TIMEOUT:
            found.append(
                f"warning: {resource.name}: release.timeout ({release.timeout:g}s) and "
                f"preStart.timeout ({pre_start.timeout:g}s) take {both:g}s together, more than "
                f"the {MAX_PRE_START_TIMEOUT:g}s a container start has in the kubelet's "
                "PreStartContainer deadline: a start that waits for a release that long fails "
                "(kdp-host's error; the kubelet tries again with backoff)"
            )
    return found


def unseen_source_warnings(config: Config, config_file: str) -> list[str]:
    """A line (with its line in the file) for each `allocate.mounts` source an answer would
    be refused for now (`answer_checks.mount_source_problems`, the rule a run watches by):
    one where nothing is in kdp-host's view (`identity.UNSEEN`) is valid in a config (the
    host may make it later), but a run advertises its resource's devices Unhealthy (and
    refuses its Allocates) while it is missing."""
    from pathlib import Path

    from .answer_checks import mount_source_problems
    from .config import never_handed
    from .config.kinds import Reader
    from .config.source import SourceError, read_config_source
    from .mount_table import read_mounts

    try:
        lines = read_config_source(Path(config_file)).lines
    except SourceError:
        lines = {}
    reader, rule, mounts = Reader(lines), never_handed(config, config_file), read_mounts()
    for index, resource in enumerate(config.resources):
        for number, path, why in mount_source_problems(resource, rule, mounts):
            key = ("resources", index, "allocate", "mounts", number, "hostPath")
            every = (
                f"every Allocate of {resource.name} is refused while it is missing (its "
                "devices are advertised Unhealthy meanwhile)"
            )
            reader.problem(key, f"{path} {why}: {every}")
    return [f"warning: {text}" for text in reader.problems]


def command_warnings(config: Config) -> list[str]:
    """A line for each command on a resource's allocation path (`allocate.command`,
    `preStart`) that cannot be started now (`answer_checks.command_problems`, the rule a run
    watches by): valid in a config (the program may be installed later), but a run
    advertises the resource's devices Unhealthy while it cannot."""
    from .answer_checks import command_problems

    return [
        f"warning: {resource.name}: {which} cannot be started ({why}): its devices are "
        "advertised Unhealthy (every Allocate or container start would fail) until it can"
        for resource in config.resources
        for which, why in command_problems(resource)
    ]


def overlap_warnings(rows: list[CheckRow], config: Config) -> list[str]:
    """One line per node or mount source two devices (or a resource's `allocate.mounts` and
    a device) would reach (docs: Reliability, one node, one advertised device)."""
    from .mount_table import read_mounts
    from .ownership_overlaps import overlap_warnings as warnings

    devices = [(row.resource, row.device) for row in rows if row.device is not None]
    mounts = {r.name: [m.host_path for m in r.allocate.mounts] for r in config.resources}
    return warnings(devices, mounts, quote_text, read_mounts())


def device_cell(device: Device, held: str | None = None) -> str:
    """A device in `check`'s table: ID and paths quoted, so nothing in them breaks the line;
    `held`: why a run would hold it back (`held_back`), shown instead of its health."""
    where = ", ".join(quote_text(node.host_path) for node in device.nodes) or "-"
    numa = "" if device.numa is None else f" numa={device.numa}"
    health = HEALTHY if device.healthy else UNHEALTHY
    if held is not None:
        health = f"held({held})"
    return f"{quote_text(device.id)} {health}{numa} {where}"


async def held_back(rows: list[CheckRow], config: Config, config_file: str) -> list[CheckRow]:
    """`rows` with each device a run would hold back shown so (hostile19 F8: the table said
    Healthy): the host's ownership index, made as a run makes it (paths resolved and the
    trees of claimed directories read through an offload, the directories followed) and fed
    as a run feeds it (each resource's list in config order, no booking), decides once it
    is settled, by the rules a run follows (`owned`, `shared`, `unsafe_mount`,
    `not_a_node`): a node of another device's number in a directory a device mounts holds
    one of them, as in a run (hostile21 F4). Nothing changes meanwhile: the watcher never
    polls, and a tree past a read's bounds is read no further (a run's safety net would)."""
    from .config import never_handed
    from .files import DaemonThreads
    from .metrics import Metrics
    from .ownership import OwnershipIndex
    from .watch import PollingWatcher

    log, offload = get_logger(), DaemonThreads()
    index = OwnershipIndex(Metrics(process_collectors=False), offload=offload, budget=None)
    index.never_handed = never_handed(config, config_file)
    index.watch(PollingWatcher(log, offload=offload))
    listed: dict[str, dict[str, Device]] = {}
    for row in rows:
        if row.device is not None:
            listed.setdefault(row.resource, {})[row.device.id] = row.device
    attached = [r for r in config.resources if r.name in listed]
    for resource in attached:
        table = DeviceTable(replicas=resource.replicas)
        index.attach(resource.name, table.publish, log.bind(resource=resource.name))
        index.publish(resource.name, listed[resource.name])
    await index.quiet(settled=True)
    held = {
        (resource.name, device_id): holding.reason
        for resource in attached
        for device_id, holding in index.held_now(resource.name).items()
    }
    return [
        CheckRow(row.resource, row.driver, device_cell(row.device, why), row.failed, row.device)
        if row.device is not None and (why := held.get((row.resource, row.device.id)))
        else row
        for row in rows
    ]
