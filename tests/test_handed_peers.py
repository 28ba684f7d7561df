"""Another host's uses of `handed-out.json` taken up (hostile15 F7, F10; `handed_peers`).

Two hosts share the state directory in a rolling update and number a device's nodes
otherwise (a probe upgrade that enumerates slots in another order). A use the old host
handed out after the new one started was not known to the new one: its release reset the
node the new host lists the ID at (the pod's node went to the next pod unreleased), and its
CDI spec named that node for the pod's name. The new host takes such a use up when the
other host writes the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.files import DaemonThreads
from kdp_host.handed_out import HandedRecord
from kdp_host.logs import get_logger
from kdp_host.state_lock import hold_instance
from kdp_host.state_presence import look

from .conftest import wait_until
from .test_shared_state_dir import SHELL

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

R = "ex.com/p"


def _listing(path: str) -> DeviceTable:
    table = DeviceTable()
    table.publish([Device("fpga0", nodes=(DeviceNode(path, path),))])
    return table


async def test_a_use_another_host_hands_out_after_this_ones_start_is_taken_up(
    short_dir: Path,
) -> None:
    state = short_dir / "state"
    state.mkdir()
    names = ("aaaa0001", "bbbb0002")
    locks = [hold_instance(str(state), name, get_logger()) for name in names]
    try:
        old, new = (HandedRecord(str(state), get_logger(), DaemonThreads(), n) for n in names)
        new.load()  # (the new host starts: nothing handed out yet)
        old.load()
        old.hand_out(R, _listing("/dev/n0").snapshot, ["fpga0"])  # (the old host's Allocate)
        assert await old.written() is None
        assert new.file is not None
        why, written = look(new.file, True)
        assert why is None and written is not None  # (a file this host never wrote: the other's)
        assert new.of(R).entry("fpga0") is None
        new.peers_wrote(written)
        entry = new.of(R).entry("fpga0")
        assert entry is not None and entry.device.nodes[0].host_path == "/dev/n0"

        # the uses before (not released) stay earlier ones
        new.hand_out(R, _listing("/dev/n1").snapshot, ["fpga0"])
        assert await new.written() is None
        old.hand_out(R, _listing("/dev/n2").snapshot, ["fpga0"])  # (later, on the old host)
        assert await old.written() is None
        why, written = look(new.file, True)
        assert why is None and written is not None
        new.peers_wrote(written)
        entry = new.of(R).entry("fpga0")
        assert entry is not None and entry.device.nodes[0].host_path == "/dev/n2"
        assert [u.device.nodes[0].host_path for u in entry.earlier] == ["/dev/n0", "/dev/n1"]
        taken = entry
        new.peers_wrote(written)
        assert new.of(R).entry("fpga0") is taken  # (nothing later: nothing taken again)
    finally:
        for fd in locks:
            os.close(fd)


async def test_hostile15_f10_the_new_host_releases_the_old_hosts_use_on_its_node(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """Through the kubelet's real device manager: the old host lists fpga0 at n0, the new
    one (started beside it, its first list held back) at n1. pod1 is answered by the old
    host (n0); the old host stops; pod1 ends: the new host's release acts on n0, pod1's
    node (before: on n1, its own list's, and n0 went unreleased to the next pod)."""
    from .test_shared_state_dir import probe, view  # (its hosts: a probe each)

    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    n0, n1 = short_dir / "n0", short_dir / "n1"
    n0.touch()
    n1.touch()
    state, work, log = short_dir / "state", short_dir / "probes", short_dir / "released"
    work.mkdir()

    def config(command: Path) -> str:
        return (
            f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
            f"{kubelet.pod_resources_socket}, podResourcesInterval: 1s}}\n"
            f"stateDir: {state}\nresources:\n"
            f"  - name: {SHELL}\n    shell: {{command: [{command}], interval: 1s}}\n"
            f'    release: {{command: [sh, -c, "echo {{hostPaths}} >> {log}"]}}\n'
        )

    old = await start_host(config(probe(work, "old", "fpga0", n0, None)), instance_id="old")
    await kubelet.await_for(lambda k: view(k).get("healthy") == 1, what="the old host serves")
    gate = work / "go"
    await start_host(config(probe(work, "new", "fpga0", n1, gate)), instance_id="new")
    await wait_until(lambda: (work / "new.started").exists(), what="the new host's first probe")
    first = await kubelet.acall(kubelet.allocate, "pod1", {SHELL: 1})
    assert first["error"] == "" and [d["PathOnHost"] for d in first["devices"]] == [str(n0)]
    gate.touch()
    await old.shutdown()
    await kubelet.acall(kubelet.release, "pod1")
    await wait_until(  # (the shell makes the file before echo writes its line)
        lambda: log.exists() and log.read_text().endswith("\n"),
        timeout=60,
        what="the release of pod1's use",
    )
    assert log.read_text().split() == [str(n0)]
