"""Fake sysfs and /dev trees shaped like a real kernel's, built under a temporary directory.

Only what kdp-host reads is made, but made the kernel's way: one real tree under
`sys/devices`, `sys/bus/<bus>/devices/<name>` and `sys/class/<class>/<name>` as relative
symlinks into it, `subsystem`, `driver` and `iommu_group` links, attribute files with a
trailing newline, and a `uevent` with `DEVNAME` for every node, which is created (as a plain
file: tests run unprivileged) under the fake dev root.

    fake = FakeSysfs(tmp_path)
    hc = fake.usb_controller()                         # PCI xHCI with root hub usb1
    fake.usb_serial_adapter(hc, "1-1", devnum=2, serial="A10K4V2F")
    fake.pci_accelerator("0000:3b:00.0", numa_node=1)  # drm card1 + renderD128
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

FTDI = ("0403", "6001")
CH340 = ("1a86", "7523")
SILABS_CP210X = ("10c4", "ea60")


@dataclass(frozen=True)
class UsbController:
    pci: Path
    root_hub: Path
    busnum: int


def _relative_link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


class FakeSysfs:
    def __init__(self, base: Path) -> None:
        self.sys = base / "sys"
        self.dev = base / "dev"
        (self.sys / "devices").mkdir(parents=True, exist_ok=True)
        (self.sys / "bus").mkdir(exist_ok=True)
        (self.sys / "class").mkdir(exist_ok=True)
        self.dev.mkdir(parents=True, exist_ok=True)
        self._next_bus = 1

    # ------------------------------------------------------------------ building blocks

    def attributes(self, directory: Path, **values: object) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, value in values.items():
            if value is not None:
                (directory / name).write_text(f"{value}\n")

    def device_dir(self, directory: Path, bus: str | None = None, klass: str | None = None) -> Path:
        """A device directory with its `subsystem` link and its bus/class entry."""
        directory.mkdir(parents=True, exist_ok=True)
        if bus is not None:
            bus_dir = self.sys / "bus" / bus
            (bus_dir / "devices").mkdir(parents=True, exist_ok=True)
            _relative_link(directory / "subsystem", bus_dir)
            _relative_link(bus_dir / "devices" / directory.name, directory)
        if klass is not None:
            class_dir = self.sys / "class" / klass
            class_dir.mkdir(parents=True, exist_ok=True)
            _relative_link(directory / "subsystem", class_dir)
            _relative_link(class_dir / directory.name, directory)
        return directory

    def bind(self, directory: Path, bus: str, driver: str) -> None:
        driver_dir = self.sys / "bus" / bus / "drivers" / driver
        driver_dir.mkdir(parents=True, exist_ok=True)
        _relative_link(directory / "driver", driver_dir)

    def unbind(self, directory: Path) -> None:
        (directory / "driver").unlink(missing_ok=True)

    def node(
        self,
        directory: Path,
        devname: str,
        *,
        klass: str | None = None,
        bus: str | None = None,
        major: int = 188,
        minor: int = 0,
        devtype: str | None = None,
        create: bool = True,
    ) -> Path:
        """A directory that announces the node /dev/<devname> (and the node itself)."""
        self.device_dir(directory, bus=bus, klass=klass)
        lines = [f"MAJOR={major}", f"MINOR={minor}", f"DEVNAME={devname}"]
        if devtype:
            lines.append(f"DEVTYPE={devtype}")
        (directory / "uevent").write_text("\n".join(lines) + "\n")
        (directory / "dev").write_text(f"{major}:{minor}\n")
        kind = "block" if klass == "block" else "char"
        _relative_link(self.sys / "dev" / kind / f"{major}:{minor}", directory)
        if create:
            self.create_node(devname)
        return directory

    def create_node(self, devname: str) -> Path:
        path = self.dev / devname
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return path

    def remove_node(self, devname: str) -> None:
        (self.dev / devname).unlink(missing_ok=True)

    # ------------------------------------------------------------------ PCI

    def pci_device(
        self,
        address: str,
        vendor: str,
        device: str,
        *,
        pci_class: str = "0x000000",
        subsystem_vendor: str | None = None,
        subsystem_device: str | None = None,
        numa_node: int = -1,
        driver: str | None = None,
        iommu_group: int | str | None = None,
        parent: Path | None = None,
    ) -> Path:
        if parent is None:
            domain, bus = address.split(":")[:2]
            parent = self.sys / "devices" / f"pci{domain}:{bus}"
        path = self.device_dir(parent / address, bus="pci")
        self.attributes(
            path,
            vendor=f"0x{vendor}",
            device=f"0x{device}",
            subsystem_vendor=f"0x{subsystem_vendor or vendor}",
            subsystem_device=f"0x{subsystem_device or device}",
            numa_node=numa_node,
            revision="0x01",
        )
        (path / "class").write_text(f"{pci_class}\n")
        uevent = [f"PCI_CLASS={int(pci_class, 16):X}", f"PCI_SLOT_NAME={address}"]
        if driver:
            uevent.insert(0, f"DRIVER={driver}")
            self.bind(path, "pci", driver)
        (path / "uevent").write_text("\n".join(uevent) + "\n")
        if iommu_group is not None:
            group = self.sys / "kernel" / "iommu_groups" / str(iommu_group)
            (group / "devices").mkdir(parents=True, exist_ok=True)
            _relative_link(path / "iommu_group", group)
            _relative_link(group / "devices" / address, path)
        return path

    def pci_accelerator(
        self,
        address: str = "0000:3b:00.0",
        *,
        card: int = 1,
        numa_node: int = 1,
        parent: Path | None = None,
    ) -> Path:
        """A GPU-like accelerator bound to its driver, with drm card and render nodes."""
        path = self.pci_device(
            address,
            "8086",
            "56a0",
            pci_class="0x030000",
            numa_node=numa_node,
            driver="i915",
            parent=parent,
        )
        self.node(
            path / "drm" / f"card{card}", f"dri/card{card}", klass="drm", major=226, minor=card
        )
        render = 128 + card
        self.node(
            path / "drm" / f"renderD{render}",
            f"dri/renderD{render}",
            klass="drm",
            major=226,
            minor=render,
        )
        return path

    def pci_vfio(
        self,
        address: str = "0000:5e:00.0",
        *,
        group: int | str = 42,
        ids: tuple[str, str] = ("10de", "1eb8"),
        pci_class: str = "0x030200",
        vfio_dev: int = 0,
    ) -> Path:
        """A device bound to vfio-pci: /dev/vfio/<group> (+ /dev/vfio/vfio), and the iommufd
        character device `vfio/devices/vfio<vfio_dev>` the kernel adds below it."""
        path = self.pci_device(
            address,
            *ids,
            pci_class=pci_class,
            numa_node=0,
            driver="vfio-pci",
            iommu_group=group,
        )
        self.create_node(f"vfio/{group}")
        self.create_node("vfio/vfio")
        self.node(
            path / "vfio-dev" / f"vfio{vfio_dev}",
            f"vfio/devices/vfio{vfio_dev}",
            klass="vfio-dev",
            major=511,
            minor=vfio_dev,
        )
        return path

    def pci_nvme(self, address: str = "0000:01:00.0", *, index: int = 0) -> Path:
        """An NVMe drive: the controller's char node, the namespace's block node, a partition."""
        path = self.pci_device(
            address, "144d", "a808", pci_class="0x010802", numa_node=0, driver="nvme"
        )
        controller = self.node(
            path / "nvme" / f"nvme{index}", f"nvme{index}", klass="nvme", major=240, minor=index
        )
        disk = self.node(
            controller / f"nvme{index}n1",
            f"nvme{index}n1",
            klass="block",
            major=259,
            minor=0,
            devtype="disk",
        )
        self.node(
            disk / f"nvme{index}n1p1",
            f"nvme{index}n1p1",
            klass="block",
            major=259,
            minor=1,
            devtype="partition",
        )
        return path

    def virtio_disk(self, address: str, *, index: int, disk: str, partitions: int = 0) -> Path:
        """A virtio-blk disk as QEMU gives one: the PCI device (1af4:1001), the virtio
        device `virtio<index>` below it, and the disk's block node (and partitions)."""
        pci = self.pci_device(
            address, "1af4", "1001", pci_class="0x010000", driver="virtio-pci", numa_node=0
        )
        virtio = self.device_dir(pci / f"virtio{index}", bus="virtio")
        self.attributes(virtio, vendor="0x1af4", device="0x0002")
        self.bind(virtio, "virtio", "virtio_blk")
        block = self.node(
            virtio / "block" / disk,
            disk,
            klass="block",
            major=253,
            minor=16 * index,
            devtype="disk",
        )
        for number in range(1, partitions + 1):
            self.node(
                block / f"{disk}{number}",
                f"{disk}{number}",
                klass="block",
                major=253,
                minor=16 * index + number,
                devtype="partition",
            )
            (block / f"{disk}{number}" / "partition").write_text(f"{number}\n")
        return pci

    # ------------------------------------------------------------------ USB

    def usb_controller(self, address: str = "0000:00:14.0", *, numa_node: int = 0) -> UsbController:
        """A PCI xHCI controller and its root hub `usbN` (with the hub's node)."""
        busnum = self._next_bus
        self._next_bus += 1
        pci = self.pci_device(
            address, "8086", "a36d", pci_class="0x0c0330", numa_node=numa_node, driver="xhci_hcd"
        )
        hub = self._usb_device(
            pci / f"usb{busnum}",
            busnum,
            1,
            "1d6b",
            "0003",
            None,
            "Linux Foundation",
            "xHCI Host Controller",
            device_class="09",
        )
        self.usb_interface(hub, "1.0", "09", "hub")
        return UsbController(pci, hub, busnum)

    def _usb_device(
        self,
        path: Path,
        busnum: int,
        devnum: int,
        vendor: str,
        product: str,
        serial: str | None,
        manufacturer: str | None,
        product_name: str | None,
        device_class: str = "00",
        create_nodes: bool = True,
    ) -> Path:
        self.device_dir(path, bus="usb")
        self.attributes(
            path,
            idVendor=vendor,
            idProduct=product,
            serial=serial,
            manufacturer=manufacturer,
            product=product_name,
            busnum=busnum,
            devnum=devnum,
            bDeviceClass=device_class,
            speed=12,
        )
        devname = f"bus/usb/{busnum:03d}/{devnum:03d}"
        lines = [
            "MAJOR=189",
            f"MINOR={(busnum - 1) * 128 + devnum - 1}",
            f"DEVNAME={devname}",
            "DEVTYPE=usb_device",
            f"PRODUCT={int(vendor, 16):x}/{int(product, 16):x}/100",
            f"BUSNUM={busnum:03d}",
            f"DEVNUM={devnum:03d}",
        ]
        (path / "uevent").write_text("\n".join(lines) + "\n")
        (path / "dev").write_text(f"189:{(busnum - 1) * 128 + devnum - 1}\n")
        self.bind(path, "usb", "usb")
        if create_nodes:
            self.create_node(devname)
        return path

    def usb_device(
        self,
        controller: UsbController,
        port_path: str,
        *,
        devnum: int,
        vendor: str = "1a86",
        product: str = "7523",
        serial: str | None = None,
        manufacturer: str | None = None,
        product_name: str | None = None,
        create_nodes: bool = True,
    ) -> Path:
        """A USB device at `port_path` (`1-1`, or `1-1.2` behind the hub at `1-1`)."""
        parent = controller.root_hub
        bus_part, _, ports = port_path.partition("-")
        chain = ports.split(".")
        for depth in range(1, len(chain)):
            parent = parent / f"{bus_part}-{'.'.join(chain[:depth])}"
        return self._usb_device(
            parent / port_path,
            controller.busnum,
            devnum,
            vendor,
            product,
            serial,
            manufacturer,
            product_name,
            create_nodes=create_nodes,
        )

    def usb_interface(
        self, device: Path, number: str, interface_class: str, driver: str | None
    ) -> Path:
        path = self.device_dir(device / f"{device.name}:{number}", bus="usb")
        self.attributes(
            path,
            bInterfaceClass=interface_class,
            bInterfaceSubClass="00",
            bInterfaceProtocol="00",
            bInterfaceNumber="00",
        )
        (path / "uevent").write_text(
            "DEVTYPE=usb_interface\n" + (f"DRIVER={driver}\n" if driver else "")
        )
        if driver:
            self.bind(path, "usb", driver)
        return path

    def usb_serial_adapter(
        self,
        controller: UsbController,
        port_path: str,
        *,
        devnum: int,
        tty: str = "ttyUSB0",
        serial: str | None = "A10K4V2F",
        ids: tuple[str, str] = FTDI,
        manufacturer: str = "FTDI",
        product_name: str = "FT232R USB UART",
        create_nodes: bool = True,
    ) -> Path:
        """An FTDI-style adapter: device, interface bound to ftdi_sio, usb-serial port, tty.

        `create_nodes=False` builds only the sysfs side: the caller then creates the nodes
        (`nodes_of`), as devtmpfs does right after the kernel added the device."""
        device = self.usb_device(
            controller,
            port_path,
            devnum=devnum,
            vendor=ids[0],
            product=ids[1],
            serial=serial,
            manufacturer=manufacturer,
            product_name=product_name,
            create_nodes=create_nodes,
        )
        interface = self.usb_interface(device, "1.0", "ff", "ftdi_sio")
        port = self.device_dir(interface / tty, bus="usb-serial")
        (port / "uevent").write_text("DRIVER=ftdi_sio\n")
        minor = int("".join(c for c in tty if c.isdigit()) or 0)
        self.node(port / "tty" / tty, tty, klass="tty", major=188, minor=minor, create=create_nodes)
        return device

    def usb_acm_device(
        self,
        controller: UsbController,
        port_path: str,
        *,
        devnum: int,
        tty: str = "ttyACM0",
        ids: tuple[str, str] = SILABS_CP210X,
        serial: str | None = None,
        manufacturer: str | None = None,
        product_name: str | None = None,
    ) -> Path:
        """A CDC-ACM device (Zigbee and Z-Wave sticks): interface class 02, tty below it."""
        device = self.usb_device(
            controller,
            port_path,
            devnum=devnum,
            vendor=ids[0],
            product=ids[1],
            serial=serial,
            manufacturer=manufacturer,
            product_name=product_name,
        )
        interface = self.usb_interface(device, "1.0", "02", "cdc_acm")
        minor = int("".join(c for c in tty if c.isdigit()) or 0)
        self.node(interface / "tty" / tty, tty, klass="tty", major=166, minor=minor)
        return device

    # ------------------------------------------------------------------ hot-unplug

    @staticmethod
    def nodes_of(path: Path) -> list[str]:
        """The DEVNAME of every node announced at or below a device directory."""
        names = []
        for uevent in sorted(path.rglob("uevent")):
            for line in uevent.read_text().splitlines():
                if line.startswith("DEVNAME="):
                    names.append(line.partition("=")[2])
        return names

    def remove_device(self, path: Path, aside: Path | None = None) -> None:
        """Unplug: nodes go from the dev root, entries and links from sysfs, as the kernel does.
        `aside`: the device's directory is moved there rather than deleted, its inodes kept
        taken, as kernfs never gives a new device the inode of one gone (ext4 may, at once)."""
        for devname in self.nodes_of(path):
            self.remove_node(devname)
        for directory in [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
            for entry in (self.sys / "bus").glob(f"*/devices/{directory.name}"):
                if entry.is_symlink() and Path(os.path.realpath(entry)) == directory.resolve():
                    entry.unlink()
            for entry in (self.sys / "class").glob(f"*/{directory.name}"):
                if entry.is_symlink() and Path(os.path.realpath(entry)) == directory.resolve():
                    entry.unlink()
        if aside is None:
            shutil.rmtree(path)
        else:
            aside.mkdir(parents=True, exist_ok=True)
            path.rename(aside / f"{path.name}.{len(list(aside.iterdir()))}")


def standard_machine(fake: FakeSysfs) -> dict[str, Path]:
    """Every device kind the tests need, on one machine.

    - USB bus 1 on the controller at 0000:00:14.0 (NUMA 0):
      `1-1` FTDI serial adapter, serial A10K4V2F, ttyUSB0;
      `1-2` a CH340 without serial, ttyUSB1;
    - 0000:3b:00.0 accelerator (i915, NUMA 1) with dri/card1 and dri/renderD129;
    - 0000:5e:00.0 bound to vfio-pci, IOMMU group 42;
    - 0000:01:00.0 NVMe with nvme0, nvme0n1, nvme0n1p1.
    """
    controller = fake.usb_controller()
    ftdi = fake.usb_serial_adapter(controller, "1-1", devnum=2)
    ch340 = fake.usb_serial_adapter(
        controller,
        "1-2",
        devnum=3,
        tty="ttyUSB1",
        serial=None,
        ids=CH340,
        manufacturer="QinHeng Electronics",
        product_name="USB Serial",
    )
    return {
        "usb_controller": controller.pci,
        "root_hub": controller.root_hub,
        "ftdi": ftdi,
        "ch340": ch340,
        "accelerator": fake.pci_accelerator(),
        "vfio": fake.pci_vfio(),
        "nvme": fake.pci_nvme(),
    }
