"""Hooks against the kubelet's real device manager (v1.32, tests/kubelet_harness.py): issue 17
items 7 (lists in templates), 9 (a hung allocate.command), 11 (collisions in its output) and
14a (a literal `{}` in an argv)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from .conftest import process_gone, script, wait_until
from .test_hooks import _counter

SHELL = "t.io/shell"
GLOB = "t.io/glob"
HANG = "t.io/hang"
QUICK = "t.io/quick"


def _resource(name: str, driver: str, *extra: str) -> list[str]:
    return [f"  - name: {name}", f"    {driver}", *(f"    {line}" for line in extra)]


def _yaml(socket_dir: Path, *resources: list[str]) -> str:
    lines = [f"kubelet: {{socketDir: {socket_dir}}}", "resources:"]
    for resource in resources:
        lines += resource
    return "\n".join(lines) + "\n"


async def test_an_id_or_a_path_holding_the_list_separator_never_reaches_a_hook(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """`{ids}` and `{hostPaths}` join with `,`: a probe ID `fpga0,fpga1` or a device file
    named `odd,1` would name other devices in the hook's argv. The probe's output is refused
    (the resource keeps no devices, the error is counted), the file is left out (bad_name),
    and the hook gets lists that split back into exactly the container's devices."""
    kubelet = real_kubelet_factory()
    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("fpga0", "fpga1", "odd,1"):
        (dev / name).touch()
    record = short_dir / "record"
    hook = script(short_dir, "record.sh", f'printf "%s\\n" "$@" > "{record}"\n')
    probe = json.dumps([{"id": "fpga0,fpga1"}, {"id": "fpga1"}])
    config = _yaml(
        kubelet.socket_dir,
        _resource(SHELL, f"shell: {{command: [echo, '{probe}'], format: json}}"),
        _resource(
            GLOB,
            f'glob: {{paths: ["{dev}/*"]}}',
            f'preStart: {{command: ["{hook}", "{{ids}}", "{{hostPaths}}", "{{count}}"]}}',
        ),
    )
    running = await start_host(config)

    def registered(k) -> bool:
        return k.resource(SHELL) is not None and k.resource(GLOB) is not None

    await kubelet.await_for(registered, what="both resources registered")
    await kubelet.await_for(lambda k: k.resource(GLOB)["healthy"] == 2, what="two glob devices")
    await wait_until(
        lambda: _counter(running, "kdp_driver_errors_total", resource=SHELL, reason="parse") > 0,
        what="the probe output refused",
    )
    assert kubelet.resource(SHELL)["capacity"] == 0
    assert _counter(running, "kdp_driver_skipped_total", resource=GLOB, reason="bad_name") == 1
    assert sorted(kubelet.resource(GLOB)["device_numa"]) == ["fpga0", "fpga1"]

    allocated = await kubelet.acall(kubelet.allocate, "p1", {GLOB: 2})
    assert allocated["error"] == ""
    ids, host_paths, count = record.read_text().splitlines()
    assert ids.split(",") == sorted(allocated["device_ids"][GLOB])
    assert host_paths.split(",") == [f"{dev}/fpga0", f"{dev}/fpga1"]
    assert count == "2"


async def test_a_hung_allocate_command_is_cut_at_its_timeout_and_admission_goes_on(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """The kubelet admits one pod at a time and gives Allocate no deadline: a hung command
    would hold up every admission. The command's timeout (at most 10 s) ends it: the pod
    asking for the hung resource fails with the command's own error, its processes are
    gone, and the pod waiting behind it for another resource is admitted."""
    kubelet = real_kubelet_factory()
    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("a0", "b0"):
        (dev / name).touch()
    pids = short_dir / "pids"
    hang = script(short_dir, "hang", f'sleep 1000 &\necho "$$ $!" > "{pids}"\nwait\n')
    quick = script(short_dir, "quick", "echo '{}'\n")
    hang_allocate = f'allocate: {{command: ["{hang}"], timeout: 1s}}'
    config = _yaml(
        kubelet.socket_dir,
        _resource(HANG, f'glob: {{paths: ["{dev}/a*"]}}', hang_allocate),
        _resource(QUICK, f'glob: {{paths: ["{dev}/b*"]}}', f'allocate: {{command: ["{quick}"]}}'),
    )
    running = await start_host(config)
    await kubelet.await_for(
        lambda k: all((k.resource(r) or {}).get("healthy") == 1 for r in (HANG, QUICK)),
        what="both resources registered",
    )
    finished: list[str] = []

    async def admit(pod: str, resource: str) -> dict[str, object]:
        result: dict[str, object] = await kubelet.acall(kubelet.allocate, pod, {resource: 1})
        finished.append(pod)
        return result

    hung = asyncio.create_task(admit("p-hang", HANG))
    await wait_until(pids.exists, what="the hung command started")
    behind = asyncio.create_task(admit("p-quick", QUICK))
    hung_result, behind_result = await asyncio.wait_for(asyncio.gather(hung, behind), 60)
    # the kubelet admitted the second pod only once the first one's Allocate had failed
    assert finished == ["p-hang", "p-quick"]

    assert "FailedPrecondition" in str(hung_result["error"])
    assert "allocate.command for a0: timed out after 1s" in str(hung_result["error"])
    assert behind_result["error"] == "" and behind_result["device_ids"] == {QUICK: ["b0"]}
    for pid in map(int, pids.read_text().split()):
        await wait_until(lambda pid=pid: process_gone(pid), what=f"process {pid} gone")
    assert _counter(running, "kdp_allocate_hook_runs_total", resource=HANG, result="timeout") == 1
    assert _counter(running, "kdp_allocate_hook_runs_total", resource=QUICK, result="ok") == 1
    # the device of the failed pod went back to the kubelet: the next pod gets it
    kubelet_view = await kubelet.acall(kubelet.resource, HANG)
    assert kubelet_view["allocated"] == 0


async def test_allocate_command_output_cannot_claim_a_taken_container_path(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """What an allocate.command prints goes through the same collision check as the
    driver's nodes and the configured mounts: a mount over a device node, or a node over a
    configured mount, is INVALID_ARGUMENT naming both; an identical node is passed once."""
    kubelet = real_kubelet_factory()
    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("m0", "n0", "s0", "ok0"):
        (dev / name).touch()
    srv = short_dir / "srv"
    srv.mkdir()
    cases = {
        "t.io/mount-on-node": {"mounts": [{"hostPath": str(srv), "containerPath": f"{dev}/m0"}]},
        "t.io/node-on-mount": {"paths": [f"{dev}/ok0:/session"]},
        "t.io/same-node": {"paths": [f"{dev}/s0"], "env": {"SESSION": "s-1"}},
    }
    resources = []
    for (name, output), device in zip(cases.items(), ("m0", "n0", "s0"), strict=True):
        hook = script(short_dir, name.replace("/", "_"), f"echo '{json.dumps(output)}'\n")
        mounts = f"mounts: [{{hostPath: {srv}, containerPath: /session}}], "
        resources.append(
            _resource(
                name,
                f'glob: {{paths: ["{dev}/{device}"]}}',
                f'allocate: {{{mounts}command: ["{hook}"]}}',
            )
        )
    running = await start_host(_yaml(kubelet.socket_dir, *resources))
    await kubelet.await_for(
        lambda k: all((k.resource(r) or {}).get("healthy") == 1 for r in cases),
        what="every resource registered",
    )
    over_node = await kubelet.acall(kubelet.allocate, "p1", {"t.io/mount-on-node": 1})
    assert "InvalidArgument" in over_node["error"]
    assert f"mount container path {dev}/m0 is claimed twice" in over_node["error"]
    assert (
        f"by m0 (host path {dev}/m0) and by allocate.command (host path {srv})"
        in (over_node["error"])
    )
    over_mount = await kubelet.acall(kubelet.allocate, "p2", {"t.io/node-on-mount": 1})
    assert "InvalidArgument" in over_mount["error"]
    assert "device node container path /session is claimed twice" in over_mount["error"]
    assert f"by allocate.mounts (host path {srv}) and by allocate.command" in over_mount["error"]
    same = await kubelet.acall(kubelet.allocate, "p3", {"t.io/same-node": 1})
    assert same["error"] == ""
    assert [(d["PathOnHost"], d["PathInContainer"]) for d in same["devices"]] == [
        (f"{dev}/s0", f"{dev}/s0")
    ]
    assert same["envs"]["SESSION"] == "s-1"
    for name, result in (("t.io/mount-on-node", "parse"), ("t.io/same-node", "ok")):
        assert _counter(running, "kdp_allocate_hook_runs_total", resource=name, result=result) == 1
    assert (
        _counter(
            running, "kdp_allocations_total", resource="t.io/node-on-mount", result="hook_failed"
        )
        == 1
    )


async def test_a_literal_brace_pair_reaches_a_pre_start_command(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """`{}` is not a field (`find ... -exec tool {} ;`), `{{ids}}` is the text `{ids}`."""
    kubelet = real_kubelet_factory()
    dev = short_dir / "dev"
    dev.mkdir()
    (dev / "fpga0").touch()
    record = short_dir / "record"
    hook = script(short_dir, "record.sh", f'printf "%s\\n" "$@" > "{record}"\n')
    argv = f'["{hook}", "-exec", "{{}}", ";", "{{{{ids}}}}", "{{ids}}", "${{{{HOME}}}}"]'
    config = _yaml(
        kubelet.socket_dir,
        _resource(GLOB, f'glob: {{paths: ["{dev}/fpga*"]}}', f"preStart: {{command: {argv}}}"),
    )
    await start_host(config)
    await kubelet.await_for(lambda k: (k.resource(GLOB) or {}).get("healthy") == 1, what="fpga0")
    allocated = await kubelet.acall(kubelet.allocate, "p1", {GLOB: 1})
    assert allocated["error"] == ""  # the kubelet called PreStartContainer (its options ask)
    assert record.read_text().splitlines() == ["-exec", "{}", ";", "{ids}", "fpga0", "${HOME}"]
