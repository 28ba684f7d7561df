"""A mount every pod of a resource gets, removed and made again while pods hold it (issue 17,
resready F2b): an `allocate.mounts` source (a firmware directory) re-made (`rm -r fw; mkdir
fw`) while a pod held a device refused every later Allocate of the resource ("hands out
.../fw, which device fpga0 owns") while its devices stayed Healthy. The source is shared by
every device of its resource whatever its inode history (`SharedTrees.mounts_shared_by`);
what it reaches of another device is still refused. The same for a glob group's member
without `{key}` and a shell probe's mount with `shared: true` (booked as shared claims)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

R, OTHER = "mr.example/fpga", "mr.example/other"


def _seen(kubelet: Any, resource: str, key: str) -> int | None:
    return (kubelet.resource(resource) or {}).get(key)


def _remade(directory: Path) -> None:
    """`rm -r` and `mkdir` (a new inode at the same path), with a file in it."""
    shutil.rmtree(directory)
    directory.mkdir()
    (directory / "blob.bin").write_bytes(b"fw")


async def _answered(kubelet: Any, pod: str, resource: str = R) -> dict[str, Any]:
    answer: dict[str, Any] = await kubelet.acall(kubelet.allocate, pod, {resource: 1})
    assert answer["error"] == "" and answer["device_ids"], answer
    return answer


async def _answered_soon(kubelet: Any, pod: str, timeout: float = 15.0) -> None:
    """Answered within `timeout`: a device's claim of the re-made directory is stale until
    its driver lists it again (refused meanwhile, "claimed anew"), never for good."""
    deadline = asyncio.get_running_loop().time() + timeout
    for attempt in itertools.count():
        answer = await kubelet.acall(kubelet.allocate, f"{pod}-{attempt}", {R: 1})
        if answer["error"] == "":
            return
        assert "claimed anew" in answer["error"], answer
        assert asyncio.get_running_loop().time() < deadline, answer
        await asyncio.sleep(0.1)  # (polling an outcome: the next list)


async def _remade_while_held(kubelet: Any, fw: Path) -> None:
    """Three devices listed: p1 holds one; `fw`, which every device shares, is made again;
    the next pod is answered as soon as the driver lists the device again, and the one after
    it at once."""
    await kubelet.await_for(lambda k: _seen(k, R, "healthy") == 3, what="registered")
    await _answered(kubelet, "p1")
    _remade(fw)
    await _answered_soon(kubelet, "p2")
    await _answered(kubelet, "p3")


async def test_an_allocate_mounts_source_is_shared_by_every_pod_also_remade(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """Two pods get the source at once; made again while they hold it, a third pod gets it
    (both refused on the old code); a node of another resource's device linked into it is
    still refused, naming its owner."""
    kubelet = real_kubelet_factory()
    dev, other, fw = short_dir / "dev", short_dir / "other", short_dir / "fw"
    for directory in (dev, other, fw):
        directory.mkdir()
    for name in ("fpga0", "fpga1", "fpga2", "fpga3"):
        (dev / name).touch()
    (other / "o0").touch()
    config = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nresources:\n  - name: {R}\n"
        f"    glob: {{paths: ['{dev}/fpga*']}}\n"
        f"    allocate: {{mounts: [{{hostPath: {fw}, containerPath: /fw}}]}}\n"
        f"  - name: {OTHER}\n    glob: {{paths: ['{other}/o*']}}\n"
    )
    await start_host(config, fast=True)
    await kubelet.await_for(lambda k: _seen(k, R, "healthy") == 4, what="registered")
    for pod in ("p1", "p2"):
        answer = await _answered(kubelet, pod)
        assert [m["HostPath"] for m in answer["mounts"]] == [str(fw)], answer

    _remade(fw)
    await _answered(kubelet, "p3")
    assert _seen(kubelet, R, "healthy") == 4

    os.link(other / "o0", fw / "o0")  # (another resource's device, below the shared source)
    refused = await kubelet.acall(kubelet.allocate, "p4", {R: 1})
    assert "o0" in refused["error"] or OTHER in refused["error"], refused
    assert not refused["device_ids"], refused


async def test_a_glob_groups_shared_member_remade_while_held(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """A member without `{key}` (a firmware directory every group has) made again while a
    pod holds a group: the next group is still answered with it."""
    kubelet = real_kubelet_factory()
    dev, fw = short_dir / "dev", short_dir / "fw"
    dev.mkdir()
    fw.mkdir()
    for key in ("0", "1", "2"):
        (dev / f"fpga{key}").touch()
    group = f"{{group: [{{path: '{dev}/fpga{{key}}'}}, {{path: '{fw}'}}]}}"
    config = f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nresources:\n  - name: {R}\n"
    await start_host(config + f"    glob: {group}\n", fast=True)
    await _remade_while_held(kubelet, fw)


async def test_a_probes_shared_mount_remade_while_held(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """A shell probe's mount with `shared: true` made again while a pod holds a device:
    the next device is still answered with it."""
    kubelet = real_kubelet_factory()
    dev, fw = short_dir / "dev", short_dir / "fw"
    dev.mkdir()
    fw.mkdir()
    devices = []
    for name in ("fpga0", "fpga1", "fpga2"):
        (dev / name).touch()
        mount = {"hostPath": str(fw), "containerPath": "/fw", "shared": True}
        devices.append({"id": name, "paths": [str(dev / name)], "mounts": [mount]})
    (short_dir / "p.json").write_text(json.dumps(devices))
    config = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nresources:\n  - name: {R}\n"
        f"    shell: {{command: [cat, {short_dir / 'p.json'}], format: json, interval: 1s}}\n"
    )
    await start_host(config, fast=True)
    await _remade_while_held(kubelet, fw)


async def test_a_source_two_resources_configure_is_still_one_resources_at_a_time(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """The sharing is among the devices of the resource that configures the source: an
    Allocate of a second resource configuring the same directory is still refused while a
    pod of the first holds it (re-made or not): every answer of the second would be, so it
    is withheld meanwhile (its need `mounts`: hostile24 F1)."""
    kubelet = real_kubelet_factory()
    dev, other, fw = short_dir / "dev", short_dir / "other", short_dir / "fw"
    for directory in (dev, other, fw):
        directory.mkdir()
    (dev / "fpga0").touch()
    (other / "o0").touch()
    mounts = f"    allocate: {{mounts: [{{hostPath: {fw}, containerPath: /fw}}]}}\n"
    config = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nresources:\n  - name: {R}\n"
        f"    glob: {{paths: ['{dev}/fpga*']}}\n{mounts}"
        f"  - name: {OTHER}\n    glob: {{paths: ['{other}/o*']}}\n{mounts}"
    )
    running = await start_host(config, fast=True)
    await kubelet.await_for(lambda k: _seen(k, OTHER, "healthy") == 1, what="registered")
    await kubelet.await_for(lambda k: _seen(k, R, "healthy") == 1, what="registered")
    await _answered(kubelet, "p1")
    _remade(fw)
    refused = await kubelet.acall(kubelet.allocate, "p2", {OTHER: 1})
    assert refused["error"] != "" and not refused["device_ids"], refused
    await kubelet.await_for(lambda k: _seen(k, OTHER, "healthy") == 0, what="OTHER withheld")
    assert running.host.not_ready()[OTHER] == "allocate.mounts source reaches another device's node"
