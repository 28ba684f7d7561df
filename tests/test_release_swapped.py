"""The release of a use resets the node that use was handed (its identity), wherever the
driver lists it now (issue 17, hostile20 F5): p1 holds n0; a driver reload swaps the two
cards' nodes (n0's path reaches n1's node now, n1's path the node p1 used); p1 ends. The
release was refused for ever (`place_changed`: the path handed out reaches another device
now), while the node p1 used was listed at n1's path, held for the owed release: both cards
out of service. It runs on that node at its path now, and both cards come back."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until
from .release_setup import R1, release_config
from .test_release_handed_reach import _runs  # (its release counter)

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)


async def test_a_release_runs_on_the_node_handed_out_where_a_reload_lists_it_now(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    kubelet, a, log = pod_resources_kubelet, short_dir / "a", short_dir / "hooks.log"
    a.mkdir()
    (a / "n0").touch()
    (a / "n1").touch()
    running = await start_host(release_config(socket_dir, short_dir, log))
    await kubelet.wait_for(lambda: kubelet.resource(R1).healthy_ids == {"n0", "n1"})
    answer = await kubelet.allocate(R1, 1, pod_uid="p1")
    assert answer is not None
    mine = Path(answer.devices[0].host_path)
    other, used = a / ({"n0": "n1", "n1": "n0"}[mine.name]), mine.stat().st_ino
    # the reload: each path reaches the other card's node now (the same files, swapped)
    os.rename(mine, a / "swap")
    os.rename(other, mine)
    os.rename(a / "swap", other)
    assert other.stat().st_ino == used
    await wait_until(
        lambda: other.name not in kubelet.resource(R1).healthy_ids, timeout=60, what="held"
    )
    await kubelet.release("p1")
    await wait_until(
        lambda: _runs(running, "ok") >= 1 or _runs(running, "place_changed") >= 3,
        timeout=60,
        what="the release of p1's use tried",
    )
    assert _runs(running, "ok") == 1, "the release was refused: both cards stay out"
    assert log.read_text().split() == [mine.name, str(other)]  # (p1's node, there now)
    await kubelet.wait_for(lambda: kubelet.resource(R1).healthy_ids == {"n0", "n1"})


class _Runs:
    """A command runner that records each argv and succeeds."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    async def run(self, argv: Any, **_: Any) -> Any:
        from kdp_host.process import CommandResult

        self.argvs.append(list(argv))
        return CommandResult(0, b"", "")


async def test_the_release_acts_on_the_number_handed_out_at_its_listed_path_else_fails_closed() -> (
    None
):
    """The index's part (device numbers, as the glob driver lists them after the reload: an
    ID keeps its number, `fpga0` at `/d/fpga1` now): the release of fpga0's use, handed
    `/d/fpga0` as 3, runs on `/d/fpga1` (3 there now), checked again; with 3 listed
    nowhere and `/d/fpga0` reaching fpga1's 5, it is not run (`place_changed`)."""
    import functools

    from kdp_host.allocation import HookFailed
    from kdp_host.config import ReleaseConfig
    from kdp_host.device_table import DeviceTable
    from kdp_host.handed_entries import Handed
    from kdp_host.logs import get_logger
    from kdp_host.release_command import ReleaseCommand
    from kdp_host.release_use import DeviceUse
    from kdp_host.testing import ManualWatcher

    from .fake_nodes import FakeNodes, indexed, node

    nodes, watcher = FakeNodes({"/d/fpga0": ("c", 3), "/d/fpga1": ("c", 5)}), ManualWatcher()
    fpga0 = node("/d/fpga0")
    index, _ = await indexed({R1: [fpga0, node("/d/fpga1")]}, nodes, watcher=watcher)
    await index.book(R1, ["fpga0"])
    nodes.nodes.update({"/d/fpga0": ("c", 5), "/d/fpga1": ("c", 3)})  # the reload
    watcher.change("/d")
    index.publish(R1, {"fpga0": node("/d/fpga1", "fpga0"), "fpga1": node("/d/fpga0", "fpga1")})
    await asyncio.sleep(0)  # (the watcher's recheck runs soon after the report)
    await index.quiet()
    runs = _Runs()
    command = ReleaseCommand(
        R1,
        ReleaseConfig(command=("reset", "{hostPaths}")),
        runs,
        DeviceTable(),
        get_logger(),
        functools.partial(index.changed_places, R1),
        None,
        functools.partial(index.listed_at, R1),
    )
    handed = Handed(fpga0, frozenset({"fpga0"}), 0.0, {"/d/fpga0": ("c", 3)})
    await command.run("fpga0", DeviceUse(owed=True), [handed])
    assert runs.argvs == [["reset", "/d/fpga1"]]  # (the node it was handed, there now)
    nodes.nodes.pop("/d/fpga1")  # 3 listed nowhere
    watcher.change("/d")
    index.publish(R1, {"fpga1": node("/d/fpga0", "fpga1")})
    await asyncio.sleep(0)
    await index.quiet()
    with pytest.raises(HookFailed, match="reaches another device now"):
        await command.run("fpga0", DeviceUse(owed=True), [handed])
    assert len(runs.argvs) == 1


async def test_a_release_under_a_driver_that_names_devices_by_path_resets_the_node_handed_out(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """A driver that names its devices by their paths (a probe: its ID stays with the path,
    not with the node): after the swap the driver lists the node p1 used under the other
    ID; the index keeps it advertised under p1's ID (booked on that node), the driver's
    device of that ID held back. The release runs on that node at its path now; while it
    fails, p1's ID is the device `/devices` shows owing it (and marked Unhealthy): the node
    it resets. Before, it was refused for ever (`place_changed`)."""
    from kdp_host.status import devices_document

    kubelet, a, ok = pod_resources_kubelet, short_dir / "a", short_dir / "ok"
    log = short_dir / "h.log"
    a.mkdir()
    (a / "n0").touch()
    (a / "n1").touch()
    probe = f"echo n0 path={a}/n0; echo n1 path={a}/n1"
    hook = f'[sh, -c, "test -e {ok} && echo {{ids}} {{hostPaths}} >> {log}"]'
    running = await start_host(
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: "
        f"{short_dir}/pr/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {short_dir}/state\nresources:\n"
        f"  - name: {R1}\n"
        f'    shell: {{command: [sh, -c, "{probe}"], interval: 1s}}\n'
        f"    release: {{command: {hook}}}\n"
    )
    await kubelet.wait_for(lambda: kubelet.resource(R1).healthy_ids == {"n0", "n1"})
    answer = await kubelet.allocate(R1, 1, pod_uid="p1")
    assert answer is not None
    mine = Path(answer.devices[0].host_path)
    other = a / ({"n0": "n1", "n1": "n0"}[mine.name])
    os.rename(mine, a / "swap")
    os.rename(other, mine)
    os.rename(a / "swap", other)
    await kubelet.release("p1")
    await wait_until(lambda: _runs(running, "exit") >= 1, timeout=60, what="a failed release")
    document = devices_document(running.host)
    shown = {d["id"]: d for r in document["resources"] for d in r["devices"]}
    assert shown[mine.name]["release"]["state"] in ("failed", "running")
    assert _runs(running, "place_changed") == 0
    ok.touch()
    await wait_until(lambda: _runs(running, "ok") >= 1, timeout=60, what="the release done")
    assert log.read_text().split() == [mine.name, str(other)]  # (p1's node, there now)
    await kubelet.wait_for(lambda: kubelet.resource(R1).healthy_ids == {"n0", "n1"})
