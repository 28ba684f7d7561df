"""What a pod holds is its device as its driver reports it now, through the kubelet's real
device manager (issue 17, hostile27): a node made later below a booked device (a partition
made under a held disk) is the booking's before any other resource's listing of it is
(F8), and an IOMMU group is one claim, however its functions are split between resources
(F7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .fake_sysfs import FakeSysfs
from .kubelet_harness import healthy
from .test_held_inherit import _settled, _shown
from .test_ownership_kubelet import booked_head, grants

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

DISK = "example.com/disk"
PART = "example.com/part"


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
