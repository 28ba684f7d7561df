"""Reading devices out of a sysfs tree (plain file reads, no library, no udev database).

Everything here is synchronous file access meant to run off the event loop: the driver and
`kdp-host discover` call `SysfsReader.scan` through the host's offload (`files.Offload`),
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

import contextlib
import errno
import os
import stat
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

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
MAX_UNPLACED = 256
"""Nodes no listed device has that an update places one by one at most; more: a full read."""
MAX_DEV_DIRS = 1024
"""Directories below the dev root watched at most."""
MAX_DEV_DEPTH = 4
DEV_SKIPPED = frozenset({"pts", "shm", "mqueue", "hugepages", "disk", "char", "block", "serial"})
"""Directories at the top of the dev root that hold no kernel-made node: other mounts
(ptys, shared memory) and the link farms udev keeps."""
DEFAULT_SCAN_TIMEOUT = 10.0
ATTRIBUTE_GROUPS = frozenset(
    {"power", "msi_irqs", "queue", "mq", "holders", "slaves", "trace", "integrity", "statistics"}
)
"""Subdirectories of devices that hold attributes only, never a device: not walked."""


@dataclass
class _ScanState:
    """Caches of one scan (NUMA nodes of parent directories)."""

    numa_of_dir: dict[str, int | None] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(sysfs path, why) of names left out (see SysfsScan.skipped)."""


@dataclass
class _Index:
    """Where a scan's devices and nodes are, for updating it (see SysfsReader.update)."""

    scan: SysfsScan
    by_path: dict[str, SysfsDevice]
    by_node: dict[str, set[str]]
    """Node name (relative to the dev root) -> the directories of the devices holding it."""
    known: dict[str, set[str]]
    """Source -> the kernel names of the scan's devices from it."""
    by_entry: dict[tuple[str, str], SysfsDevice]

    @classmethod
    def of(cls, scan: SysfsScan) -> _Index:
        index = cls(scan, {}, {}, {}, {})
        for device in scan.devices:
            index._add(device)
        return index

    def _add(self, device: SysfsDevice) -> None:
        self.by_path[device.path] = device
        self.known.setdefault(device.source, set()).add(device.name)
        self.by_entry[(device.source, device.name)] = device
        for node in device.nodes:
            self.by_node.setdefault(node.devname, set()).add(device.path)

    def _remove(self, device: SysfsDevice) -> None:
        if self.by_path.get(device.path) is device:
            del self.by_path[device.path]
        if self.by_entry.get((device.source, device.name)) is device:
            del self.by_entry[(device.source, device.name)]
            self.known.get(device.source, set()).discard(device.name)
        for node in device.nodes:
            holders = self.by_node.get(node.devname)
            if holders is not None:
                holders.discard(device.path)
                if not holders:
                    del self.by_node[node.devname]

    def moved_to(
        self, scan: SysfsScan, dropped: Iterable[SysfsDevice], fresh: Iterable[SysfsDevice]
    ) -> _Index:
        """This index changed in place to index `scan`, which has the devices of the last
        one but `dropped`, plus `fresh`: O(changed)."""
        for device in dropped:
            self._remove(device)
        for device in fresh:
            self._add(device)
        self.scan = scan
        return self


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
        self._index: _Index | None = None
        """Of the last scan this reader made or updated."""
        self._not_devices: dict[str, set[str]] = {}
        """Source -> names listed there that are no device (USB interfaces), since the last
        full scan."""

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
        self._not_devices = {}
        extra = tuple(dict.fromkeys(extra_attributes))
        devices: list[SysfsDevice] = []
        entries, problems, _ = self._entries(buses, classes, state)
        for source, name, link in entries:
            device = self.read_device(source, name, link, extra, state)
            if device is not None:
                devices.append(device)
        self._cache, self._next_cache = self._next_cache, {}
        watch = {self.dev_root, *self.dev_directories()}
        for device in devices:
            watch.update(self._node_dirs(device))
        result = SysfsScan(tuple(devices), tuple(problems), frozenset(watch), tuple(state.skipped))
        self._index = _Index.of(result)
        return result

    def update(
        self,
        previous: SysfsScan,
        changed: Iterable[str],
        buses: Iterable[str] = (USB, PCI),
        classes: Iterable[str] = (),
        extra_attributes: Iterable[str] = (),
    ) -> SysfsScan:
        """`previous` brought up to date after the nodes `changed` (names relative to the
        dev root) appeared, vanished or changed: O(changed), not O(devices).

        A node of a listed device: that device is read again (it may have gone). A node no
        listed device has: the bus and class lists are read for new devices (a hot-plug),
        and a node of none of them is placed through its device number
        (`<sysfs>/dev/char|block/MAJ:MIN`, else the class entry of its name) and read again
        with every listed device whose nodes it is among (a USB interface's late tty or
        input node). Unchanged devices are the same objects as in `previous`. What cannot
        be placed waits for the next full scan (the caller's safety net).
        """
        index = self._index if self._index is not None and self._index.scan is previous else None
        if index is None:
            index = _Index.of(previous)
        state = _ScanState()
        self._next_cache = {}
        extra = tuple(dict.fromkeys(extra_attributes))
        watch = set(previous.watch_dirs)
        dirty: set[str] = set()
        unplaced: list[str] = []
        for devname in self._node_names(changed, watch):
            owners = index.by_node.get(devname)
            if owners:
                dirty.update(owners)
            else:
                unplaced.append(devname)
        if len(unplaced) > MAX_UNPLACED:
            # A flood of nodes no listed device has: one full read costs less than placing
            # each (and bounds what a burst of unrelated nodes can cost).
            return self.scan(buses, classes, extra_attributes)
        fresh: list[SysfsDevice] = []
        added: list[SysfsDevice] = []
        listed: dict[str, set[str]] | None = None
        if unplaced:
            entries, _, listed = self._entries(buses, classes, state, index.known)
            for source, name, link in entries:
                device = self.read_device(source, name, link, extra, state)
                if device is not None:
                    added.append(device)
            new_nodes = {node.devname for device in added for node in device.nodes}
            for devname in unplaced:
                if devname not in new_nodes:
                    directory = self.node_directory(devname)
                    if directory is not None:
                        dirty.update(devices_reaching(directory, index.by_path))
        dropped: list[SysfsDevice] = []
        if listed is not None:
            for source, names in index.known.items():
                gone = names - listed.get(source, set())
                dropped.extend(index.by_entry[(source, name)] for name in gone)
        replaced: dict[str, SysfsDevice | None] = {device.path: None for device in dropped}
        for path in dirty:
            device = index.by_path[path]
            if path in replaced:
                continue
            dropped.append(device)
            link = self._entry_link(device.source, device.name)
            found = self.read_device(device.source, device.name, link, extra, state)
            if found is None or found.path != path:
                replaced[path] = None  # gone
                if found is not None:
                    added.append(found)  # another device under its name
            else:
                replaced[path] = found
                fresh.append(found)
        if replaced:
            devices = [replaced.get(device.path, device) for device in previous.devices]
        else:
            devices = list(previous.devices)
        devices.extend(added)
        fresh.extend(added)
        kept = tuple(filter(None, devices))  # (C speed: no device is falsy)
        for device in fresh:
            watch.update(self._node_dirs(device))
        self._next_cache = {}
        delta: dict[str, SysfsDevice | None] = {device.path: None for device in dropped}
        delta.update((device.path, device) for device in fresh)
        result = SysfsScan(
            kept,
            previous.problems,
            frozenset(watch),
            tuple(dict.fromkeys((*previous.skipped, *state.skipped))),
            delta,
        )
        self._index = index.moved_to(result, dropped, fresh)
        return result

    def _node_names(self, changed: Iterable[str], watch: set[str]) -> list[str]:
        """The names in `changed`, with a directory that appeared replaced by the names of
        what it holds (at most MAX_DEV_DEPTH deep), and added to `watch`."""
        names: list[str] = []
        pending = list(dict.fromkeys(changed))
        while pending:
            name = pending.pop()
            path = os.path.join(self.dev_root, name)
            if name.count("/") < MAX_DEV_DEPTH and os.path.isdir(path) and not os.path.islink(path):
                if path not in watch and len(watch) < MAX_DEV_DIRS:
                    watch.add(path)
                    with contextlib.suppress(OSError):
                        pending.extend(f"{name}/{entry}" for entry in os.listdir(path))
                continue
            names.append(name)
        return names

    def node_directory(self, devname: str) -> str | None:
        """The sysfs directory of the device whose node is `devname` (relative to the dev
        root): by its device number, else by the class entry of its name whose uevent
        names it; None when neither finds it."""
        path = os.path.join(self.dev_root, devname)
        try:
            info = os.stat(path)
        except OSError:
            return None
        if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            kind = "block" if stat.S_ISBLK(info.st_mode) else "char"
            number = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
            found = _resolve_entry(os.path.join(self.sysfs_root, "dev", kind, number))
            if found is not None:
                return found
        base = os.path.basename(devname)
        class_root = os.path.join(self.sysfs_root, "class")
        try:
            classes = sorted(os.listdir(class_root))
        except OSError:
            return None
        for klass in classes:
            entry = os.path.join(class_root, klass, base)
            if not os.path.lexists(entry):
                continue
            found = _resolve_entry(entry)
            if found is not None:
                node = self._node_of(found)
                if node is not None and node.devname == devname:
                    return found
        return None

    def dev_directories(self) -> set[str]:
        """The directories below the dev root where the kernel may create nodes (for
        inotify: a node appearing anywhere there is seen at once), at most MAX_DEV_DIRS,
        MAX_DEV_DEPTH deep; not the mounts and link farms others keep there (DEV_SKIPPED,
        `by-*`, hidden ones) and no symlinks."""
        found: set[str] = set()
        stack = [(self.dev_root, 0)]
        while stack and len(found) < MAX_DEV_DIRS:
            directory, depth = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if (
                    (depth == 0 and name in DEV_SKIPPED)
                    or name.startswith((".", "by-"))
                    or not _is_real_dir(entry)
                ):
                    continue
                found.add(entry.path)
                if depth + 1 < MAX_DEV_DEPTH:
                    stack.append((entry.path, depth + 1))
        return found

    def _node_dirs(self, device: SysfsDevice) -> set[str]:
        return {os.path.dirname(os.path.join(self.dev_root, node.devname)) for node in device.nodes}

    def _entry_link(self, source: str, name: str) -> str:
        relative = source if source.startswith("class/") else f"bus/{source}/devices"
        return os.path.join(self.sysfs_root, relative, name)

    def _entries(
        self,
        buses: Iterable[str],
        classes: Iterable[str],
        state: _ScanState,
        known: dict[str, set[str]] | None = None,
    ) -> tuple[list[tuple[str, str, str]], list[str], dict[str, set[str]]]:
        """(source, kernel name, entry) of every device listed under the buses and classes
        (with `known`: of those not in it), the sources that could not be listed, and the
        names listed of each source."""
        sources = [*dict.fromkeys(buses), *(f"class/{k}" for k in dict.fromkeys(classes))]
        entries: list[tuple[str, str, str]] = []
        problems: list[str] = []
        listed: dict[str, set[str]] = {}
        for source in sources:
            directory = os.path.dirname(self._entry_link(source, "x"))
            try:
                names = os.listdir(directory)
            except OSError as exc:
                problems.append(f"{source}: cannot list {directory}: {exc.strerror or exc}")
                continue
            listed[source] = set(names)
            ignored = self._not_devices.setdefault(source, set())
            if known is not None:
                names = list(listed[source] - known.get(source, set()) - ignored)
            for name in sorted(names):
                if source == USB and USB_DEVICE_NAME.fullmatch(name) is None:
                    ignored.add(name)
                    continue  # an interface (`1-1:1.0`), listed under its device
                if (why := name_text_problem(name)) is not None:
                    state.skipped.append((os.path.join(directory, name), f"device name {why}"))
                    continue
                entries.append((source, name, os.path.join(directory, name)))
        return entries, problems, listed

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


def devices_reaching(path: str, candidates: Container[str]) -> list[str]:
    """The `candidates` (device directories) whose node walk reaches the directory `path`,
    innermost first: `path` itself if it is one, then the devices above it up to the bus
    device it belongs to.

    The walk's own rule read upwards: it never enters another bus device (`path` itself
    being one means no device above reaches it) and goes MAX_WALK_DEPTH levels deep.
    """
    found = [path] if path in candidates else []
    if is_device_boundary(os.path.basename(path)):
        return found
    directory = path
    for _ in range(MAX_WALK_DEPTH):
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
        if directory in candidates:
            found.append(directory)
        name = os.path.basename(directory)
        if name in ATTRIBUTE_GROUPS or is_device_boundary(name):
            break
    return found


def enclosing_device(path: str, candidates: Container[str]) -> str | None:
    """The outermost of `candidates` other than `path` whose node walk reaches `path`, so
    that its nodes are already that device's; None when none does."""
    reaching = devices_reaching(path, candidates)
    outer = reaching[-1] if reaching else None
    return outer if outer != path else None


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
