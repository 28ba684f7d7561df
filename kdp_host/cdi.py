"""The CDI spec file of a resource with `allocate.cdi`: written, kept current, removed.

Allocate answers with CDI device names `<kind>=<name>`; the container runtime resolves
them through spec files in its CDI directories (`/etc/cdi`, `/var/run/cdi`). For each such
resource the host keeps one JSON spec there, named after the resource
(`kdp-host_vendor.example_fpga.json`): resource names are unique in a config and the
kubelet takes one plugin per resource, so two resources never share a file, and a restarted
host overwrites its own file instead of leaving a second one. A CDI kind belongs to one
resource (config check) and `allocation.cdi_device_name` is one-to-one, so every
`kind=name` the host publishes is unique.

What goes into the spec (each device: device nodes and mounts; the spec: the resource's
mounts) is what is true for a device whatever else the container got. Runtimes apply CDI
edits after the kubelet's env (CDI replaces a variable that is already set), so values that
depend on the whole allocation (`{ids}`, `{paths}`, `{count}`, per-device env that other
devices set differently, the resource-level env keys) stay in the Allocate response only:
a per-device copy would override the combined value.

Writes are atomic (temporary file in the same directory, then rename; the temporary name
does not end in .json, so CDI watchers ignore it), happen only when the content changed,
and are coalesced: a burst of device changes is written once. Rendering and file work run
through the host's offload (one call per read, write or removal).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .allocation import ALLOCATION_DEPENDENT_FIELDS, cdi_device_name, has_cdi_edits
from .config import CdiConfig, ResourceConfig, render_template, template_fields
from .devices import Device, DeviceTable, Snapshot
from .files import DaemonThreads, Offload
from .logs import EventLogger
from .rules import cdi_kind_problem
from .watch import Watcher

DEFAULT_SPEC_DIR = "/var/run/cdi"
FILE_PREFIX = "kdp-host_"
MAX_SLUG = 200
DEBOUNCE = 0.05
"""Seconds to let a burst of device changes settle before writing."""
RETRY_INTERVAL = 5.0
"""Seconds before retrying a failed write when nothing changed meanwhile."""
VERIFY = 10.0
"""Seconds between checks that the spec file on disk is still the one written (a safety net:
the spec dir is watched, so a change shows within milliseconds)."""
LEASE = 3 * VERIFY
"""An owner file not refreshed for this long belongs to an instance that is gone."""


def spec_dir(resource: ResourceConfig) -> str:
    cdi = resource.allocate.cdi
    return (cdi.spec_dir if cdi is not None else None) or DEFAULT_SPEC_DIR


def spec_file_name(resource_name: str) -> str:
    """`vendor.example/fpga` -> `kdp-host_vendor.example_fpga.json`.

    One-to-one: the domain part of a resource name cannot hold `_`, so the first `_` after
    the prefix always stands for the `/`. Very long names are cut and get a hash.
    """
    slug = resource_name.replace("/", "_")
    if len(slug) > MAX_SLUG:
        digest = hashlib.sha256(resource_name.encode()).hexdigest()[:12]
        slug = f"{slug[: MAX_SLUG - 13]}-{digest}"
    return f"{FILE_PREFIX}{slug}.json"


def spec_path(resource: ResourceConfig) -> str:
    return os.path.join(spec_dir(resource), spec_file_name(resource.name))


def owner_path(spec: str) -> str:
    """The owner file of a spec file: `.kdp-host_vendor.example_fpga.owner` next to it (a
    name CDI ignores: it reads only `.json` and `.yaml` files)."""
    directory, name = os.path.split(spec)
    return os.path.join(directory, f".{name.removesuffix('.json')}.owner")


def minimum_cdi_version(kind: str, additional_gids: bool = False) -> str:
    """The lowest cdiVersion that has every feature the spec uses.

    Older runtimes reject versions they do not know, so the spec declares the minimum,
    as CDI's own producer does: 0.5.0 for `hostPath` on device nodes (and device names
    starting with a digit), 0.6.0 when the class holds a `.`, 0.7.0 for `additionalGids`
    (`allocate.cdi.additionalGids`). A device node's `gid` and `fileMode` are older than 0.5.0.
    """
    if additional_gids:
        return "0.7.0"
    _, _, klass = kind.partition("/")
    return "0.6.0" if "." in klass else "0.5.0"


def build_spec(resource: ResourceConfig, snapshot: Snapshot) -> dict[str, Any] | None:
    """The spec for the snapshot's physical devices, or None when it would hold none.

    CDI rejects a spec without devices and a device without edits, so devices with neither
    a device node nor a mount are left out (Allocate gives them no CDI name either).
    """
    cdi = resource.allocate.cdi
    if cdi is None:
        return None
    allocate = resource.allocate
    shared_env = _consistent_device_env(snapshot.devices, allocate.env.keys())
    devices: list[dict[str, Any]] = []
    for device in snapshot.devices:
        if not has_cdi_edits(device):
            continue
        devices.append(
            {
                "name": cdi_device_name(device.id),  # one-to-one: no two entries share it
                "containerEdits": _device_edits(device, allocate.permissions, shared_env, cdi),
            }
        )
    if not devices:
        return None
    spec: dict[str, Any] = {
        "cdiVersion": minimum_cdi_version(cdi.kind, bool(cdi.additional_gids)),
        "kind": cdi.kind,
        "devices": devices,
    }
    values = {"resource": resource.name}
    env = [
        f"{key}={render_template(text, values)}"
        for key, text in allocate.env.items()
        if not template_fields(text) & ALLOCATION_DEPENDENT_FIELDS
    ]
    mounts: dict[str, dict[str, Any]] = {}
    for mount in allocate.mounts:
        mounts.setdefault(
            mount.container_path, _mount(mount.host_path, mount.container_path, mount.read_only)
        )
    edits: dict[str, Any] = {}
    if env:
        edits["env"] = env
    if cdi.additional_gids:
        edits["additionalGids"] = list(cdi.additional_gids)
    if mounts:
        edits["mounts"] = list(mounts.values())
    if edits:
        spec["containerEdits"] = edits
    return spec


def encode_spec(spec: Mapping[str, Any]) -> bytes:
    return (json.dumps(spec, indent=2) + "\n").encode()


def render_spec_file(resource: ResourceConfig, snapshot: Snapshot) -> bytes | None:
    spec = build_spec(resource, snapshot)
    return None if spec is None else encode_spec(spec)


def _consistent_device_env(devices: Iterable[Device], configured: Iterable[str]) -> frozenset[str]:
    """Per-device env keys that can go into the spec: not configured at resource level,
    and set to one value by every device that sets them."""
    values: dict[str, set[str]] = {}
    for device in devices:
        for key, value in device.env.items():
            values.setdefault(key, set()).add(value)
    blocked = set(configured)
    return frozenset(key for key, seen in values.items() if len(seen) == 1 and key not in blocked)


def _device_edits(
    device: Device, permissions: str, shared_env: frozenset[str], cdi: CdiConfig
) -> dict[str, Any]:
    edits: dict[str, Any] = {}
    nodes: dict[str, dict[str, Any]] = {}
    ownership: dict[str, Any] = {}
    if cdi.device_gid is not None:
        ownership["gid"] = cdi.device_gid
    if cdi.device_file_mode is not None:
        ownership["fileMode"] = int(cdi.device_file_mode, 8)
    for node in device.nodes:
        nodes.setdefault(
            node.container_path,
            {
                "path": node.container_path,
                "hostPath": node.host_path,
                "permissions": node.permissions or permissions,
                **ownership,
            },
        )
    if nodes:
        edits["deviceNodes"] = list(nodes.values())
    env = [f"{key}={value}" for key, value in sorted(device.env.items()) if key in shared_env]
    if env:
        edits["env"] = env
    mounts: dict[str, dict[str, Any]] = {}
    for mount in device.mounts:
        mounts.setdefault(
            mount.container_path, _mount(mount.host_path, mount.container_path, mount.read_only)
        )
    if mounts:
        edits["mounts"] = list(mounts.values())
    return edits


def _mount(host_path: str, container_path: str, read_only: bool) -> dict[str, Any]:
    return {
        "hostPath": host_path,
        "containerPath": container_path,
        "options": ["ro" if read_only else "rw", "bind"],
    }


@dataclass
class CdiSpecWriter:
    """Keeps one resource's CDI spec file equal to its device table, until cancelled.

    Runs as a task of the resource: waits for the driver's first list, writes, then wakes
    on every table change (coalescing bursts for `debounce` seconds) and rewrites when the
    content changed. Removes the file when cancelled (the resource stopped). Never raises:
    a failed write is logged, counted (`count_failure`), reported (`report`: the resource
    is then not ready) and retried.

    A device whose CDI name is not in the spec file on disk is held Unhealthy in the table
    (the runtime could not resolve the name Allocate would return): a new device until its
    spec is written, every device of a file that cannot be written.
    """

    resource: ResourceConfig
    table: DeviceTable
    log: EventLogger
    debounce: float = DEBOUNCE
    retry_interval: float = RETRY_INTERVAL
    verify_interval: float = VERIFY
    report: Callable[[str | None], None] = field(default=lambda reason: None)
    """Told a short reason (no path) while the file cannot be written, None once it is."""
    count_failure: Callable[[], None] = field(default=lambda: None)
    offload: Offload = field(default_factory=DaemonThreads)
    """Where rendering and file reads, writes and removals run (the host's)."""
    instance: str = field(default_factory=lambda: secrets.token_hex(4))
    """This host instance (its socket names carry it too): the owner of the file it writes."""
    watcher: Watcher | None = None
    """Watches the spec dir, so a file removed or replaced behind the writer's back is seen
    at once (without it, at the next verify)."""
    lease: float = LEASE
    path: str = field(init=False)
    owner_file: str = field(init=False)
    writes: int = field(default=0, init=False)
    """Files written."""
    failures: int = field(default=0, init=False)
    """Failed attempts to write or remove the file (retried)."""
    synced_version: int = field(default=-1, init=False)
    """Version of the last snapshot the file on disk reflects."""
    _on_disk: bytes | None = field(default=None, init=False, repr=False)
    _resolvable: frozenset[str] = field(default=frozenset(), init=False, repr=False)
    first_sync: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    """Set after the first attempt to write the driver's first list (success or not)."""
    _last_error: str | None = field(default=None, init=False, repr=False)
    _handed_over: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = spec_path(self.resource)
        self.owner_file = owner_path(self.path)
        if self.resource.allocate.cdi is not None:
            self.table.hold_unhealthy(self._unresolvable)

    def _unresolvable(self, device: Device) -> bool:
        return has_cdi_edits(device) and cdi_device_name(device.id) not in self._resolvable

    def _set_on_disk(self, content: bytes | None) -> None:
        """Remember what the file holds; devices it does not name are held Unhealthy."""
        self._on_disk = content
        cdi = self.resource.allocate.cdi
        names = spec_device_names(content, cdi.kind) if cdi is not None else frozenset()
        if names != self._resolvable:
            self._resolvable = names
            self.table.hold_unhealthy(self._unresolvable)

    async def run(self) -> None:
        cdi = self.resource.allocate.cdi
        if cdi is None:
            return
        if problem := cdi_kind_problem(cdi.kind):
            self.log.error("cdi_kind_invalid", kind=cdi.kind, reason=problem)
        changed_on_disk = asyncio.Event()
        names = {os.path.basename(self.path), os.path.basename(self.owner_file)}

        def on_event(name: str | None) -> None:
            if name is None or name in names:
                changed_on_disk.set()

        subscription = (
            None
            if self.watcher is None
            else self.watcher.subscribe(os.path.dirname(self.path), on_event)
        )
        try:
            self._set_on_disk(await self._read())
            await self.table.published.wait()
            await self._take_over()
            snapshot = self.table.snapshot
            while True:
                synced = await self._sync(snapshot)
                self.first_sync.set()
                timeout = self.retry_interval if not synced else self.verify_interval
                changed_on_disk.clear()
                newer = asyncio.ensure_future(self.table.wait_newer(snapshot.version))
                on_disk = asyncio.ensure_future(changed_on_disk.wait())
                try:
                    done, _ = await asyncio.wait(
                        {newer, on_disk}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    newer.cancel()
                    on_disk.cancel()
                if newer not in done:
                    # The file changed behind our back (another instance, an operator) or
                    # the verify interval passed: look at what is on disk now (the sync
                    # below restores it if it is ours); as the owner, refresh the lease.
                    self._set_on_disk(await self._read())
                    if on_disk not in done and await self._owner() == self.instance:
                        await self.offload.run(lambda: touch(self.owner_file))
                await asyncio.sleep(self.debounce)
                snapshot = self.table.snapshot
        finally:
            if subscription is not None:
                subscription.cancel()
            await self._remove()

    async def _owner(self) -> str | None:
        """The instance that owns the spec file now (None: nobody, or its lease ran out)."""
        return await self.offload.run(lambda: read_owner(self.owner_file, self.lease))

    async def _take_over(self) -> None:
        """The newest instance owns the file: during a rolling upgrade the new one takes it
        from the old one, which then neither writes nor removes it."""
        owner = f"{self.instance}\n".encode()
        try:
            await self.offload.run(lambda: write_atomic(self.owner_file, owner))
        except OSError as exc:
            self.log.warning("cdi_owner_write_failed", path=self.owner_file, reason=str(exc))

    async def _may_write(self) -> bool:
        """Whether this instance owns the file (taking it over when nobody does)."""
        owner = await self._owner()
        if owner is None:
            self.log.info("cdi_spec_taken_over", path=self.path, reason="no live owner")
            await self._take_over()
            return True
        if owner != self.instance and not self._handed_over:
            self.log.info("cdi_spec_handed_over", path=self.path, owner=owner)
        self._handed_over = owner != self.instance
        return not self._handed_over

    async def _sync(self, snapshot: Snapshot) -> bool:
        try:
            content = await self.offload.run(lambda: render_spec_file(self.resource, snapshot))
            if content != self._on_disk and await self._may_write():
                if content is None:
                    await self._unlink()
                    self.log.info("cdi_spec_removed", path=self.path, reason="no_devices")
                else:
                    await self.offload.run(lambda: write_atomic(self.path, content))
                    self.writes += 1
                    self.log.info("cdi_spec_written", path=self.path, version=snapshot.version)
                self._set_on_disk(content)
        except OSError as exc:
            self._failed(f"{type(exc).__name__}: {exc}", short=type(exc).__name__)
            return False
        except Exception:
            # A bug here must not take the resource down: its other devices are still served.
            self.log.exception("cdi_spec_write_failed", path=self.path)
            self._failed("internal error", short="internal error", logged=True)
            return False
        if self._last_error is not None:
            self.log.info("cdi_spec_recovered", path=self.path)
            self.report(None)
        self._last_error = None
        self.synced_version = snapshot.version
        return True

    def _failed(self, message: str, *, short: str, logged: bool = False) -> None:
        self.failures += 1
        self.count_failure()
        if message != self._last_error:
            if not logged:
                self.log.warning("cdi_spec_write_failed", path=self.path, reason=message)
            self.report(f"CDI spec file not written ({short})")
            self._last_error = message

    async def _remove(self) -> None:
        """Remove the file at stop, unless another instance owns it now (it serves the same
        resource: during a rolling upgrade the old instance must leave the new one's file)."""
        try:
            owner = await self._owner()
            if owner not in (None, self.instance):
                self.log.info("cdi_spec_left", path=self.path, owner=owner)
            else:
                if await self._unlink():
                    self.log.info("cdi_spec_removed", path=self.path, reason="resource_stopped")
                await self.offload.run(lambda: unlink(self.owner_file))
        except OSError as exc:
            self.failures += 1
            self.count_failure()
            self.log.warning("cdi_spec_remove_failed", path=self.path, reason=str(exc))
        self._on_disk = None

    async def _read(self) -> bytes | None:
        return await self.offload.run(lambda: read_or_none(self.path))

    async def _unlink(self) -> bool:
        return await self.offload.run(lambda: unlink(self.path))


def spec_device_names(content: bytes | None, kind: str) -> frozenset[str]:
    """The device names a spec file's content makes resolvable for `kind` (none when it
    is missing, unreadable, or of another kind)."""
    if content is None:
        return frozenset()
    try:
        spec = json.loads(content)
        if spec.get("kind") != kind:
            return frozenset()
        return frozenset(str(device["name"]) for device in spec["devices"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return frozenset()


def write_atomic(path: str, data: bytes) -> None:
    """Write `path` all at once: a temporary file next to it, fsync, then rename over it.
    Blocking: the writer runs it through its offload.

    Creates the directory when missing. Readers see the old content or the new one, never
    a partial file; the temporary name (`.<name>.<random>.tmp`) is ignored by CDI.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def read_or_none(path: str) -> bytes | None:
    """The file's content, None when it cannot be read (missing, unreadable, not a regular
    file: a FIFO put in its place never blocks the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def read_owner(path: str, lease: float, now: Callable[[], float] = time.time) -> str | None:
    """The instance named in an owner file, or None when it is missing, empty or its lease
    (the file's age) ran out."""
    try:
        with open(path, "rb") as f:
            age = now() - os.fstat(f.fileno()).st_mtime
            owner = f.read(256).decode("utf-8", "replace").strip()
    except OSError:
        return None
    return owner if owner and age <= lease else None


def touch(path: str) -> None:
    """Refresh a lease: the owner file's modification time."""
    with contextlib.suppress(OSError):
        os.utime(path)


def unlink(path: str) -> bool:
    """Remove `path`; False when it was not there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True
