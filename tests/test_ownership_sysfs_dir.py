"""A sysfs device's own claim (its sysfs directory, by inode) and a mount of that very
directory are one thing a container reaches (hostile18 F14): two resources never both hand
it out, whichever comes first, and `check` says so. Devices nested in sysfs (a hub and the
stick behind it) stay two devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdp_host.ownership_overlaps import overlap_warnings
from kdp_host.ownership_shared import PlaceOwned

from .test_ownership import R1, R2, Host, dev
from .test_ownership_identity import pci

ADDRESS = "0000:03:00.0"


def sysfs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "sys" / "devices" / "pci0000:00" / ADDRESS
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("first", ["sysfs_device", "mount"])
def test_a_sysfs_devices_directory_mounted_by_another_device_clashes(
    tmp_path: Path, first: str
) -> None:
    sysfs = sysfs_dir(tmp_path)
    fpga = pci(ADDRESS, str(sysfs))
    mounting = dev("sysdir", mounts=(str(sysfs),))
    host = Host()
    order = [(R1, fpga), (R2, mounting)]
    if first == "mount":
        order.reverse()
    for resource, device in order:
        host.publish(resource, device)
    (winner, kept), (loser, _) = order
    assert host.ids(winner) == [kept.id] and host.ids(loser) == []
    assert host.held(loser) == 1
    [warning] = overlap_warnings(order, {}, str)
    assert str(sysfs) in warning and R1 in warning and R2 in warning


def test_a_sysfs_device_behind_another_is_still_a_device_of_its_own(tmp_path: Path) -> None:
    """A sysfs device holds no other below its directory (only a mount does)."""
    hub = tmp_path / "sys" / "usb1" / "1-1"
    stick = hub / "1-1.2"
    stick.mkdir(parents=True)
    host = Host()
    host.publish(R1, pci("1-1", str(hub)))
    host.publish(R2, pci("1-1.2", str(stick)))
    assert host.ids(R1) == ["1-1"] and host.ids(R2) == ["1-1.2"]
    assert (
        overlap_warnings([(R1, pci("1-1", str(hub))), (R2, pci("1-1.2", str(stick)))], {}, str)
        == []
    )


async def test_an_answer_mounting_an_advertised_sysfs_devices_directory_is_refused(
    tmp_path: Path,
) -> None:
    sysfs = sysfs_dir(tmp_path)
    (tmp_path / "m0").touch()
    host = Host()
    host.publish(R1, pci(ADDRESS, str(sysfs)))
    host.publish(R2, dev("m0", f"{tmp_path}/m0"))
    with pytest.raises(PlaceOwned, match=f"device {ADDRESS} of {R1}"):
        await host.index.book(R2, ["m0"], {"m0": [str(sysfs)]})
    await host.index.book(R2, ["m0"], {"m0": [str(sysfs.parent / "other")]})
