"""What a pod holds is its device as its driver reports it now, through the kubelet's real
device manager (issue 17, hostile27): a node made later below a booked device (a partition
made under a held disk) is the booking's before any other resource's listing of it is
(F8), and an IOMMU group is one claim, however its functions are split between resources
(F7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdp_host.cli import main

from .fake_sysfs import FakeSysfs
from .kubelet_harness import healthy
from .test_held_inherit import _settled, _shown
from .test_ownership_kubelet import booked_head, grants

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

DISK = "example.com/disk"
PART = "example.com/part"
GPU = "example.com/gpu"
AUDIO = "example.com/audio"


async def test_a_partition_made_under_a_held_disk_is_the_disks_pods(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """F8: resource disk passes vdb with its partitions (one sysfs device), resource part
    each partition (a glob). p0 holds the disk; a partition made then (partprobe) is a
    window onto p0's sectors: it joins p0's booking, the disk stays advertised (Healthy,
    its ID in the kubelet's list) and part holds the partition back (`owned`), so no
    second pod gets it. It was part's: p1 got vdb1 while p0 wrote the whole disk, and the
    disk fell out of the kubelet's list."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    fake = FakeSysfs(short_dir / "m")
    pci = fake.virtio_disk("0000:00:05.0", index=1, disk="vdb")
    running = await start_host(
        booked_head(kubelet, short_dir)
        + f"  - name: {DISK}\n    sysfs:\n      devices: [{{class: block, name: vdb}}]\n"
        f"      sysfsRoot: {fake.sys}\n      devRoot: {fake.dev}\n"
        f'  - name: {PART}\n    glob: {{paths: ["{fake.dev}/vdb[0-9]*"]}}\n'
    )
    await kubelet.await_for(healthy(DISK, 1), what="the disk advertised")
    assert await grants(kubelet, DISK, "p0") == [{"/dev/vdb"}]
    block = pci / "virtio1" / "block" / "vdb"
    fake.node(block / "vdb1", "vdb1", klass="block", major=253, minor=17, devtype="partition")
    (block / "vdb1" / "partition").write_text("1\n")
    await _settled(running, PART, "vdb1")

    shown = _shown(running, PART)
    assert shown["vdb1"]["health"] == "held", shown
    assert await grants(kubelet, PART, "p1") == [], "vdb1 is a window onto p0's disk"
    seen = kubelet.resource(DISK)
    assert seen["healthy"] == 1 and "vdb" in seen["device_numa"], seen
    disk = _shown(running, DISK)["vdb"]
    assert disk["health"] == "Healthy" and [h["pod"] for h in disk["holders"]] == ["p0"], disk


def _split_group(short_dir: Path, head: str) -> tuple[FakeSysfs, str]:
    """A GPU (0000:5e:00.0) and its audio function (.1), both vfio-pci in IOMMU group 42,
    each with its iommufd cdev; resource gpu passes only the GPU's cdev (`vfio0`), resource
    audio only the audio function's (`vfio1`): neither passes the group node /dev/vfio/42."""
    fake = FakeSysfs(short_dir / "m")
    fake.pci_vfio("0000:5e:00.0", group=42, vfio_dev=0)
    fake.pci_vfio("0000:5e:00.1", group=42, ids=("10de", "10fa"), pci_class="0x040300", vfio_dev=1)
    roots = f"sysfsRoot: {fake.sys}, devRoot: {fake.dev}"
    return fake, head + "".join(
        f'  - name: {name}\n    sysfs: {{pci: [{{class: "{klass}", driver: vfio-pci}}], '
        f'nodes: {{names: ["vfio/devices/vfio{n}"]}}, {roots}}}\n'
        for n, (name, klass) in enumerate(((GPU, "03"), (AUDIO, "04")))
    )


async def test_an_iommu_group_split_between_two_resources_is_one_device(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """F7: the IOMMU group is the unit of assignment, whatever nodes each resource passes:
    the group is a claim of its own, so the audio function's resource holds its device
    back (`owned` by the GPU's) and no second pod is admitted to a device whose bind the
    kernel refuses (EBUSY) while p0 runs. Both were Healthy, p0 and p1 admitted."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    _, config = _split_group(short_dir, booked_head(kubelet, short_dir))
    running = await start_host(config)
    listed = {GPU: "0000:5e:00.0", AUDIO: "0000:5e:00.1"}
    await kubelet.await_for(
        lambda k: (
            all(k.resource(name) is not None for name in listed)
            and sum(k.resource(name)["healthy"] for name in listed) == 1
        ),
        what="one function of the group advertised",
    )
    await _settled(running, AUDIO, listed[AUDIO])
    first = GPU if kubelet.resource(GPU)["healthy"] == 1 else AUDIO  # (the first to list it)
    (second,) = set(listed) - {first}
    assert await grants(kubelet, first, "p0") != []
    assert await grants(kubelet, second, "p1") == [], "the group is p0's"
    assert _shown(running, second)[listed[second]]["health"] == "held"
    assert kubelet.resource(second)["healthy"] == 0


def test_check_warns_of_an_iommu_group_split_between_two_resources(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """F7: `check` names the group's two resources (it was silent, rc 0, both Healthy)."""
    fake, text = _split_group(short_dir, f"kubelet: {{socketDir: {short_dir}/dp}}\nresources:\n")
    config = short_dir / "kdp.yaml"
    config.write_text(text)
    assert main(["check", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    (warning,) = [line for line in captured.err.splitlines() if "is reachable from" in line]
    assert f"{fake.sys}/devices/pci0000:5e/0000:5e:00." in warning, warning
    assert "/iommu_group is reachable from" in warning, warning
    assert GPU in warning and AUDIO in warning, warning
    assert captured.out.count(" held(owned) ") == 1, captured.out  # (the second to list it)
