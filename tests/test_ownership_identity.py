"""What a claim is (issue 17, hostile findings F5 and F15): a file or a directory by its
inode, so a hard link or a rename is the same claim; a sysfs device by its own sysfs
directory, so a device that passes no node is still one device of one resource."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdp_host.devices import Device
from kdp_host.holdings import Holder, Holdings
from kdp_host.ownership_claims import Owner, device_claims, reach
from kdp_host.ownership_document import (
    OWNERSHIP_FILE,
    SavedBooking,
    bookings_document,
    read_saved,
)
from kdp_host.ownership_overlaps import overlap_warnings

from .fake_nodes import FakeNodes
from .test_ownership import R1, R2, Host, booked_ids, dev, node, restarted


def inode(path: Path) -> tuple[str, int]:
    st = os.stat(path)
    return ("d" if path.is_dir() else "f", st.st_dev << 64 | st.st_ino)


def pci(device_id: str, sysfs: str, *paths: str) -> Device:
    """A sysfs device: its sysfs directory, and its nodes (none: handed out by address)."""
    return Device(
        device_id, nodes=dev(device_id, *paths).nodes, env={"PCI_ADDR": device_id}, sysfs_path=sysfs
    )


def test_a_hard_link_is_the_same_file_across_resources_and_check_says_so(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").touch()
    os.link(tmp_path / "a" / "f", tmp_path / "b" / "g")
    host = Host()
    host.publish(R1, node(f"{tmp_path}/a/f"))
    host.publish(R2, node(f"{tmp_path}/b/g"))
    assert host.ids(R1) == ["f"] and host.ids(R2) == [] and host.held(R2) == 1
    devices = [(R1, node(f"{tmp_path}/a/f")), (R2, node(f"{tmp_path}/b/g"))]
    [warning] = overlap_warnings(devices, {}, str)
    assert f"{tmp_path}/b/g" in warning and R1 in warning and R2 in warning


def test_a_mount_through_a_hard_link_clashes_with_the_file(tmp_path: Path) -> None:
    """A probe's mount source that is a hard link to another device's file is that file."""
    (tmp_path / "f").touch()
    (tmp_path / "node").touch()
    os.link(tmp_path / "f", tmp_path / "g")
    host = Host()
    host.publish(R1, node(f"{tmp_path}/f"))
    host.publish(R2, dev("m0", f"{tmp_path}/node", mounts=(f"{tmp_path}/g",)))
    assert host.ids(R2) == [] and host.held(R2) == 1


def test_a_directory_renamed_or_bind_reached_keeps_its_claim_and_its_containment(
    tmp_path: Path,
) -> None:
    (tmp_path / "dri").mkdir()
    (tmp_path / "dri" / "card0").touch()
    (tmp_path / "x").touch()
    (tmp_path / "y").touch()
    host = Host()
    host.publish(R1, dev("all", f"{tmp_path}/x", mounts=(f"{tmp_path}/dri",)))
    [claim] = [
        c
        for c in device_claims(host.tables[R1].snapshot.devices[0]).exclusive
        if c[1] != f"{tmp_path}/x"
    ]
    assert claim[0] == inode(tmp_path / "dri")
    host.publish(R2, dev("card0", f"{tmp_path}/dri/card0"))
    assert host.ids(R2) == [], "a node below a mounted directory is still held"
    os.rename(tmp_path / "dri", tmp_path / "dri2")
    host.publish(R2, dev("all2", f"{tmp_path}/y", mounts=(f"{tmp_path}/dri2",)))
    assert host.ids(R2) == [], "the renamed directory is the mounted one"


async def test_a_file_renamed_under_a_pod_stays_booked_and_unbooked_ones_go(
    tmp_path: Path,
) -> None:
    """F5 (t25): pod1 holds a/x; `mv a/x b/x` is the same file, not a new device of b. A
    claim no pod booked lingers only while its path reaches it: renamed away, it goes."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    (tmp_path / "a" / "x").touch()
    (tmp_path / "a" / "y").touch()
    host, _ = restarted(tmp_path, reach)
    host.publish(R1, node(f"{tmp_path}/a/x"), node(f"{tmp_path}/a/y"))
    await host.index.book(R1, ["x"])
    for name in ("x", "y"):
        os.rename(tmp_path / "a" / name, tmp_path / "b" / name)
    host.publish(R1)
    host.publish(R2, node(f"{tmp_path}/b/x"), node(f"{tmp_path}/b/y"))
    assert host.ids(R2) == ["y"], "the booked file went to a second pod"
    # and across a restart, from ownership.json
    again, _ = restarted(tmp_path, reach)
    again.publish(R2, node(f"{tmp_path}/b/x"), node(f"{tmp_path}/b/y"))
    assert again.ids(R2) == ["y"]
    assert booked_ids(tmp_path) == [f"{R1}/x"]
    [claim] = json.loads((tmp_path / OWNERSHIP_FILE).read_text())["bookings"][0]["claims"]
    assert (claim["kind"], claim["key"]) == inode(tmp_path / "b" / "x")


async def test_a_booked_inode_whose_path_vanished_holds_a_file_that_reuses_its_number(
    tmp_path: Path,
) -> None:
    """As a booked device number: a booked file that is deleted stays booked while its pod
    runs (its container still has it); a new file that gets the same inode number waits
    (fail closed) until PodResources shows no pod holding the booked ID."""
    now = [100.0]
    nodes = FakeNodes({"/srv/x": ("f", 7), "/srv/other": ("f", 8)})
    host, _ = restarted(tmp_path, nodes, now)
    host.publish(R1, node("/srv/x"), node("/srv/other"))
    await host.index.book(R1, ["x"])
    del nodes.nodes["/srv/x"]  # deleted; its inode number is reused by a new file
    nodes.nodes["/srv/new"] = ("f", 7)
    host.publish(R1, node("/srv/other"))
    host.publish(R2, node("/srv/new"))
    assert host.ids(R2) == []
    holder = (Holder("ns", "p1", "c", 0.0),)
    host.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"x": holder}}))
    host.publish(R2, node("/srv/new"))
    assert host.ids(R2) == []
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))
    assert host.ids(R2) == ["new"]


def test_ownership_json_of_an_older_version_is_read_as_files_now(tmp_path: Path) -> None:
    """Older versions wrote a file's claim by real path (`path`) and a directory's as `dir`:
    read back, each is what its path is now (its inode), so a hard link to a booked file
    stays held across the upgrade; a path where nothing is now stays a claim by text."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").touch()
    (tmp_path / "d").mkdir()

    def old(path: Path, kind: str) -> dict[str, str]:
        return {"kind": kind, "key": str(path), "path": str(path), "real": str(path)}

    entry = {"resource": R1, "id": "f", "device": "f"}
    claims = [old(tmp_path / "a" / "f", "path"), old(tmp_path / "d", "dir")]
    claims.append(old(tmp_path / "gone", "dir"))
    document = {"version": 1, "bookings": [{**entry, "claims": claims}]}
    [saved] = read_saved(document)
    read = saved.claims
    assert (saved.owner, saved.device, saved.places) == (Owner(R1, "f"), "f", ())
    assert [claim[0] for claim in read] == [
        inode(tmp_path / "a" / "f"),
        inode(tmp_path / "d"),
        ("path", str(tmp_path / "gone")),
    ]
    (tmp_path / OWNERSHIP_FILE).write_text(json.dumps(document))
    os.link(tmp_path / "a" / "f", tmp_path / "g")
    host, _ = restarted(tmp_path, reach)
    host.publish(R2, node(f"{tmp_path}/g"))
    assert host.ids(R2) == []
    host.publish(R1, node(f"{tmp_path}/a/f"))
    assert host.ids(R1) == ["f"]


def test_new_claim_kinds_are_written_and_read_back_as_they_are(tmp_path: Path) -> None:
    (tmp_path / "f").touch()
    (tmp_path / "d").mkdir()
    device = pci("0000:01:00.0", "/sys/devices/pci0000:00/0000:01:00.0", f"{tmp_path}/f")
    claims = device_claims(
        Device("x", nodes=device.nodes, mounts=dev("m", mounts=(f"{tmp_path}/d",)).mounts,
               sysfs_path=device.sysfs_path)
    ).exclusive  # fmt: skip
    assert sorted(claim[0][0] for claim in claims) == ["d", "f", "sysfs"]
    booking = SavedBooking(Owner(R1, "x"), "x", claims)
    written = json.loads(json.dumps(bookings_document([booking])))
    [saved] = read_saved(written)
    assert sorted(saved.claims) == sorted(claims)


@pytest.mark.parametrize("kind", ["d", "f", "sysfs", "path"])
def test_a_claim_kind_with_the_wrong_key_is_refused(kind: str) -> None:
    key: object = "/x" if kind in ("d", "f") else (True if kind == "sysfs" else 7)
    claim = {"kind": kind, "key": key, "path": "/x", "real": "/x"}
    document = {"bookings": [{"resource": R1, "id": "a", "device": "a", "claims": [claim]}]}
    with pytest.raises(TypeError, match="c/b/d/f/sysfs with a number or path/sysfs with a path"):
        read_saved(document)


def test_a_pci_device_without_a_node_is_advertised_by_one_resource(tmp_path: Path) -> None:
    """F15: two resources matching one PCI device that passes no node (handed out by its
    address): it claims its sysfs directory, so the later one is held, logged, counted, and
    `check` warns."""
    sysfs = tmp_path / "sys" / "devices" / "pci0000:00" / "0000:01:00.0"
    sysfs.mkdir(parents=True)
    host = Host()
    host.publish(R1, pci("0000:01:00.0", str(sysfs)))
    host.publish(R2, pci("0000:01:00.0", str(sysfs)))
    assert host.ids(R1) == ["0000:01:00.0"] and host.ids(R2) == [] and host.held(R2) == 1
    devices = [(R1, pci("0000:01:00.0", str(sysfs))), (R2, pci("0000:01:00.0", str(sysfs)))]
    [warning] = overlap_warnings(devices, {}, str)
    assert str(sysfs) in warning
    # another device is another claim; the same device with nodes is still the same one
    other = tmp_path / "sys" / "devices" / "pci0000:00" / "0000:02:00.0"
    other.mkdir()
    (tmp_path / "vfio7").touch()
    host.publish(
        R2, pci("0000:02:00.0", str(other)), pci("0000:01:00.0", str(sysfs), f"{tmp_path}/vfio7")
    )
    assert host.ids(R2) == ["0000:02:00.0"]


@pytest.mark.parametrize("spelling", ["root_link", "device_link"])
def test_a_pci_device_found_through_another_spelling_of_sysfs_is_the_same(
    tmp_path: Path, spelling: str
) -> None:
    """Hostile4 H5: one resource's `sysfsRoot` a link to the other's, or another path to the
    device's directory itself: the device is one claim, so the later resource is held and
    `check` warns. The claim is the directory's inode (asserted last), which a bind mount
    of the tree (root only, not made here) reaches too."""
    sys = tmp_path / "sys"
    sysfs = sys / "devices" / "pci0000:00" / "0000:03:00.0"
    sysfs.mkdir(parents=True)
    if spelling == "root_link":
        (tmp_path / "sys2").symlink_to(sys)
        other = tmp_path / "sys2" / "devices" / "pci0000:00" / "0000:03:00.0"
    else:
        (tmp_path / "mnt" / "devices" / "pci0000:00").mkdir(parents=True)
        other = tmp_path / "mnt" / "devices" / "pci0000:00" / "0000:03:00.0"
        other.symlink_to(sysfs)
    host = Host()
    host.publish(R1, pci("0000:03:00.0", str(sysfs)))
    host.publish(R2, pci("0000:03:00.0", str(other)))
    assert host.ids(R1) == ["0000:03:00.0"] and host.ids(R2) == [] and host.held(R2) == 1
    devices = [(R1, pci("0000:03:00.0", str(sysfs))), (R2, pci("0000:03:00.0", str(other)))]
    [warning] = overlap_warnings(devices, {}, str)
    assert str(other) in warning and R1 in warning and R2 in warning
    [claim] = device_claims(devices[1][1]).exclusive
    assert claim == (("sysfs", inode(sysfs)[1]), str(other), str(sysfs))


def test_a_sysfs_claim_booked_by_an_older_version_is_read_as_its_directory(
    tmp_path: Path,
) -> None:
    """`ownership.json` of a version that claimed a sysfs device by its path: the booking
    holds the device's directory now (a resource finding it through a link is held)."""
    sysfs = tmp_path / "sys" / "0000:03:00.0"
    sysfs.mkdir(parents=True)
    claim = {"kind": "sysfs", "key": str(sysfs), "path": str(sysfs), "real": str(sysfs)}
    document = {"bookings": [{"resource": R1, "id": "a", "device": "a", "claims": [claim]}]}
    [saved] = read_saved(document)
    assert saved.claims == ((("sysfs", inode(sysfs)[1]), str(sysfs), str(sysfs)),)
    gone = {**claim, "key": str(tmp_path / "gone"), "path": str(tmp_path / "gone")}
    [saved] = read_saved({"bookings": [{**document["bookings"][0], "claims": [gone]}]})
    assert saved.claims[0][0] == ("sysfs", str(tmp_path / "gone"))


def test_a_sysfs_devices_claim_lingers_while_its_directory_is_there(tmp_path: Path) -> None:
    """The resource stops listing it (its match changed): a pod may hold it, so another
    resource waits while the device is present; once it left sysfs, the claim goes."""
    sysfs = tmp_path / "0000:01:00.0"
    sysfs.mkdir()
    host = Host()
    host.publish(R1, pci("0000:01:00.0", str(sysfs)))
    host.publish(R1)
    host.publish(R2, pci("0000:01:00.0", str(sysfs)))
    assert host.ids(R2) == []
    sysfs.rmdir()
    host.publish(R2, pci("0000:01:00.0", str(sysfs)))
    assert host.ids(R2) == ["0000:01:00.0"]
