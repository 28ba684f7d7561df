"""Reading devices out of a sysfs tree (plain file reads, no library, no udev database).

Everything here is synchronous file access meant to run off the event loop: the driver and
`kdp-host discover` call `SysfsReader.scan` through `read_off_loop`, one thread per scan,
with a timeout. Sysfs and the dev root are constructor arguments, so tests and containers
(which often mount the host's /sys and /dev elsewhere) point them anywhere.

Layout relied on, as the kernel makes it:
- `<sysfs>/bus/<bus>/devices/<name>` and `<sysfs>/class/<class>/<name>` are symlinks into
  `<sysfs>/devices/...`, the one real tree;
- a device's directory holds its attribute files, `driver` and `subsystem` links, and
  below it the devices the kernel created for it (USB interfaces, tty, drm, block...);
- every directory whose `uevent` holds `DEVNAME=` stands for a node the kernel created at
  `/dev/<DEVNAME>` (devtmpfs).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from ..logs import quote_text
from ..rules import name_text_problem
from .model import (
    OPTIONAL_ATTRIBUTES,
    PCI,
    PCI_ATTRIBUTES,
    USB,
    USB_ATTRIBUTES,
    USB_DEVICE_NAME,
    USB_INTERFACE_ATTRIBUTES,
    VFIO_CONTAINER_NODE,
    VFIO_PCI_DRIVER,
    NodeInfo,
    SysfsDevice,
    SysfsScan,
    UsbInterface,
    is_device_boundary,
    usb_bus_node,
    vfio_group_problem,
)

READ_LIMIT = 64 * 1024
"""Bytes read from one attribute file at most (the kernel's attributes fit in a page)."""
MAX_WALK_DEPTH = 8
"""How deep below a device its nodes are searched (tty sits 4 levels below a USB device)."""
MAX_WALK_DIRS = 4096
"""Directories visited below one device at most: a bound against odd or hostile trees."""
DEFAULT_SCAN_TIMEOUT = 10.0
ATTRIBUTE_GROUPS = frozenset(
    {"power", "msi_irqs", "queue", "mq", "holders", "slaves", "trace", "integrity", "statistics"}
)
"""Subdirectories of devices that hold attributes only, never a device: not walked."""

T = TypeVar("T")


class ScanTimeout(Exception):
    """A sysfs read did not finish in time (a hung attribute, a stuck file system)."""


@dataclass
class _ScanState:
    """Caches of one scan (NUMA nodes of parent directories)."""

    numa_of_dir: dict[str, int | None] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(sysfs path, why) of names left out (see SysfsScan.skipped)."""


@dataclass(frozen=True)
class _CachedAttributes:
    attributes: dict[str, str]
    errors: dict[str, str]
    interface_classes: tuple[tuple[str, tuple[str | None, str | None, str | None]], ...]


class SysfsReader:
    """Reads devices; not thread-safe: one scan at a time per reader.

    Attribute values of USB and PCI devices are kept from one scan to the next while the
    device's `uevent` reads the same (a USB device's changes with every enumeration, a PCI
    device's with its IDs and driver), so a rescan reads one attribute file per unchanged
    device, plus its nodes.
    """

    def __init__(self, sysfs_root: str = "/sys", dev_root: str = "/dev") -> None:
        self.sysfs_root = os.path.normpath(sysfs_root)
        self.dev_root = os.path.normpath(dev_root)
        self._cache: dict[tuple[str, ...], _CachedAttributes] = {}
        self._next_cache: dict[tuple[str, ...], _CachedAttributes] = {}

    # ------------------------------------------------------------------ listing

    def scan(
        self,
        buses: Iterable[str] = (USB, PCI),
        classes: Iterable[str] = (),
        extra_attributes: Iterable[str] = (),
    ) -> SysfsScan:
        """Every device of the given buses and classes, with attributes and nodes."""
        state = _ScanState()
        self._next_cache = {}
        extra = tuple(dict.fromkeys(extra_attributes))
        devices: list[SysfsDevice] = []
        problems: list[str] = []
        for bus in dict.fromkeys(buses):
            found, problem = self._list(f"bus/{bus}/devices", bus, extra, state)
            devices.extend(found)
            if problem:
                problems.append(problem)
        for klass in dict.fromkeys(classes):
            found, problem = self._list(f"class/{klass}", f"class/{klass}", extra, state)
            devices.extend(found)
            if problem:
                problems.append(problem)
        self._cache, self._next_cache = self._next_cache, {}
        watch = {self.dev_root}
        for device in devices:
            for node in device.nodes:
                watch.add(os.path.dirname(os.path.join(self.dev_root, node.devname)))
        return SysfsScan(tuple(devices), tuple(problems), frozenset(watch), tuple(state.skipped))

    def _list(
        self, relative: str, source: str, extra: tuple[str, ...], state: _ScanState
    ) -> tuple[list[SysfsDevice], str | None]:
        directory = os.path.join(self.sysfs_root, relative)
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            return [], f"{source}: cannot list {directory}: {exc.strerror or exc}"
        devices = []
        for name in names:
            if source == USB and USB_DEVICE_NAME.fullmatch(name) is None:
                continue  # an interface (`1-1:1.0`), listed under its device
            if (why := name_text_problem(name)) is not None:
                state.skipped.append((os.path.join(directory, name), f"device name {why}"))
                continue
            device = self.read_device(source, name, os.path.join(directory, name), extra, state)
            if device is not None:
                devices.append(device)
        return devices, None

    # ------------------------------------------------------------------ one device

    def read_device(
        self,
        source: str,
        name: str,
        link: str,
        extra: tuple[str, ...] = (),
        state: _ScanState | None = None,
    ) -> SysfsDevice | None:
        """The device behind `link` (a bus or class entry), or None if it vanished."""
        state = state or _ScanState()
        path = _resolve_entry(link)
        if path is None:
            return None
        wanted: tuple[str, ...]
        if source == USB:
            wanted = USB_ATTRIBUTES
        elif source == PCI:
            wanted = (*PCI_ATTRIBUTES, "numa_node")
        else:
            wanted = ()
        uevent_text = self._read_quiet(os.path.join(path, "uevent")) or ""
        uevent = parse_uevent(uevent_text)
        key = (path, uevent_text, *wanted, "", *extra)
        cached = self._cache.get(key)
        if cached is None:
            read: dict[str, str] = {}
            errors: dict[str, str] = {}
            for attribute in dict.fromkeys((*wanted, *extra)):
                self._read_attribute(path, attribute, read, errors)
            interface_classes = self._usb_interface_classes(path, name) if source == USB else ()
            cached = _CachedAttributes(read, errors, interface_classes)
        if not cached.errors and source in (USB, PCI):
            # Their uevent names the device (USB: PRODUCT, BUSNUM, DEVNUM, new with every
            # enumeration; PCI: PCI_ID, PCI_SUBSYS_ID, DRIVER); a class device's does not.
            self._next_cache[key] = cached
        attributes = dict(cached.attributes)
        errors = dict(cached.errors)
        driver = _link_name(os.path.join(path, "driver"))
        iommu_group = _link_name(os.path.join(path, "iommu_group"))
        if iommu_group is not None and (why := vfio_group_problem(iommu_group)) is not None:
            errors["iommu_group"] = f"{quote_text(iommu_group)} {why}: no vfio node"
            state.skipped.append((os.path.join(path, "iommu_group"), errors["iommu_group"]))
            iommu_group = None
        nodes = self._nodes_beneath(path, uevent_text)
        interfaces: tuple[UsbInterface, ...] = ()
        if source == USB:
            interfaces = tuple(
                UsbInterface(
                    entry, *classes, driver=_link_name(os.path.join(path, entry, "driver"))
                )
                for entry, classes in cached.interface_classes
            )
            if not any(node.subsystem == USB for node in nodes):
                derived = usb_bus_node(attributes.get("busnum", ""), attributes.get("devnum", ""))
                if derived is not None:
                    nodes = (*nodes, self._node(derived, USB, None, None))
        if source == PCI and driver == VFIO_PCI_DRIVER and iommu_group is not None:
            nodes = (
                *nodes,
                self._node(f"vfio/{iommu_group}", "vfio", None, None),
                self._node(VFIO_CONTAINER_NODE, "vfio", None, None),
            )
        numa = self._numa(path, attributes.pop("numa_node", None) if source == PCI else None)
        if numa is None:
            numa = self._numa_of_parents(path, state)
        return SysfsDevice(
            source=source,
            name=name,
            path=path,
            attributes=attributes,
            errors=errors,
            driver=driver,
            numa=numa,
            iommu_group=iommu_group,
            nodes=nodes,
            interfaces=interfaces,
            uevent=uevent,
        )

    def _read_attribute(
        self, directory: str, attribute: str, into: dict[str, str], errors: dict[str, str]
    ) -> None:
        if attribute.startswith("/") or ".." in attribute.split("/"):
            errors[attribute] = "not a path below the device"
            return
        try:
            text = read_text(os.path.join(directory, attribute))
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.ENOENT or (
                exc.errno == errno.ENODATA and attribute in OPTIONAL_ATTRIBUTES
            ):
                return
            errors[attribute] = exc.strerror or str(exc)
            return
        into[attribute] = text

    def _read_quiet(self, path: str) -> str | None:
        try:
            return read_text(path)
        except OSError:
            return None

    def _usb_interface_classes(
        self, path: str, name: str
    ) -> tuple[tuple[str, tuple[str | None, str | None, str | None]], ...]:
        prefix = name + ":"
        try:
            entries = sorted(e for e in os.listdir(path) if e.startswith(prefix))
        except OSError:
            return ()
        found = []
        for entry in entries:
            values: dict[str, str] = {}
            for attribute in USB_INTERFACE_ATTRIBUTES:
                self._read_attribute(os.path.join(path, entry), attribute, values, {})
            classes = tuple(values.get(a) for a in USB_INTERFACE_ATTRIBUTES)
            found.append((entry, (classes[0], classes[1], classes[2])))
        return tuple(found)

    def _node(
        self, devname: str, subsystem: str, devnum: str | None, sysfs_path: str | None
    ) -> NodeInfo:
        present = os.path.exists(os.path.join(self.dev_root, devname))
        return NodeInfo(devname, subsystem, present, devnum, sysfs_path)

    def _nodes_beneath(self, path: str, uevent_text: str) -> tuple[NodeInfo, ...]:
        """Every node announced at or below `path`, not crossing into other devices.

        Only a directory with a `dev` attribute stands for a node (the kernel adds `dev`
        exactly when the device has a device number): only those uevents are read.
        """
        nodes: list[NodeInfo] = []
        stack = [(path, 0)]
        visited = 0
        while stack and visited < MAX_WALK_DIRS:
            directory, depth = stack.pop()
            visited += 1
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            children = []
            has_dev = False
            for entry in entries:
                name = entry.name
                if name == "dev":
                    has_dev = True
                elif (
                    depth < MAX_WALK_DEPTH
                    and name not in ATTRIBUTE_GROUPS
                    and not is_device_boundary(name)
                    and _is_real_dir(entry)
                ):
                    children.append(entry.path)
            if has_dev:
                node = self._node_of(directory, uevent_text if directory == path else None)
                if node is not None:
                    nodes.append(node)
            stack.extend((child, depth + 1) for child in sorted(children, reverse=True))
        nodes.sort(key=lambda n: (n.subsystem == USB, n.devname))
        return tuple(nodes)

    def _node_of(self, directory: str, text: str | None = None) -> NodeInfo | None:
        if text is None:
            text = self._read_quiet(os.path.join(directory, "uevent"))
        if not text or "DEVNAME=" not in text:
            return None
        uevent = parse_uevent(text)
        devname = uevent.get("DEVNAME", "")
        if not devname or devname.startswith("/") or ".." in devname.split("/"):
            return None
        devnum = None
        if "MAJOR" in uevent and "MINOR" in uevent:
            devnum = f"{uevent['MAJOR']}:{uevent['MINOR']}"
        subsystem = _link_name(os.path.join(directory, "subsystem")) or ""
        return self._node(devname, subsystem, devnum, directory)

    # ------------------------------------------------------------------ NUMA

    @staticmethod
    def _numa(path: str, text: str | None) -> int | None:
        if text is None:
            return None
        try:
            node = int(text)
        except ValueError:
            return None
        return node if node >= 0 else None

    def _numa_of_parents(self, path: str, state: _ScanState) -> int | None:
        """The NUMA node of the nearest parent that has one (a USB device's host controller)."""
        top = os.path.join(self.sysfs_root, "devices")
        directory = os.path.dirname(path)
        seen: list[str] = []
        result: int | None = None
        while directory.startswith(top + "/"):
            if directory in state.numa_of_dir:
                result = state.numa_of_dir[directory]
                break
            seen.append(directory)
            try:
                text: str | None = read_text(os.path.join(directory, "numa_node"))
            except OSError:
                text = None
            if text is not None:
                result = self._numa(directory, text)
                break
            directory = os.path.dirname(directory)
        for directory in seen:
            state.numa_of_dir[directory] = result
        return result


def enclosing_device(path: str, candidates: Container[str]) -> str | None:
    """The outermost of `candidates` (device directories) whose node walk reaches the
    directory `path`, so that its nodes are already that device's; None when none does.

    The walk's own rule read upwards: it never enters another bus device (`path` itself
    being one means it is a device of its own) and goes MAX_WALK_DEPTH levels deep.
    """
    if is_device_boundary(os.path.basename(path)):
        return None
    found = None
    directory = path
    for _ in range(MAX_WALK_DEPTH):
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
        if directory in candidates:
            found = directory
        name = os.path.basename(directory)
        if name in ATTRIBUTE_GROUPS or is_device_boundary(name):
            break
    return found


def read_text(path: str) -> str:
    """An attribute file's text without its trailing newline; at most READ_LIMIT bytes.

    Opened non-blocking, so a FIFO or a tty planted in a tree cannot hold the thread.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        data = os.read(fd, READ_LIMIT)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").rstrip("\n").strip()


def _resolve_entry(link: str) -> str | None:
    """The real directory of a bus or class entry, or None if it vanished.

    The kernel makes these entries relative symlinks into the real tree, which holds no
    symlinked directory: one readlink resolves them (`os.path.realpath` would lstat every
    component, several times the cost over a thousand devices).
    """
    try:
        target = os.readlink(link)
    except OSError:
        return os.path.realpath(link) if os.path.isdir(link) else None
    path = os.path.normpath(os.path.join(os.path.dirname(link), target))
    if os.path.islink(path) or not os.path.isdir(path):
        real = os.path.realpath(link)
        return real if os.path.isdir(real) else None
    return path


def parse_uevent(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def _link_name(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


async def read_off_loop(function: Callable[[], T], timeout: float, what: str) -> T:
    """Run a blocking read in a daemon thread of its own and wait at most `timeout`.

    Not `asyncio.to_thread`: a read stuck in the kernel (a hung sysfs attribute) cannot be
    cancelled, and a stuck worker of the default executor would hold up the process's exit.
    A daemon thread is simply left behind; the caller sees ScanTimeout and decides.
    """
    future = start_off_loop(function, what)
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)
    except TimeoutError:
        raise ScanTimeout(f"{what}: no answer within {timeout:g}s") from None


def start_off_loop(function: Callable[[], T], what: str) -> asyncio.Future[T]:
    """Start `function` in a daemon thread; its result or exception lands in the future
    (which stays pending while the thread is stuck: callers can refuse to start another)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def answer(result: T | None, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while the read was stuck
            loop.call_soon_threadsafe(deliver, result, error)

    def work() -> None:
        try:
            result = function()
        except BaseException as exc:  # delivered to the waiting coroutine
            answer(None, exc)
        else:
            answer(result, None)

    thread = threading.Thread(target=work, name=f"kdp-read-{what}", daemon=True)
    thread.start()
    return future
