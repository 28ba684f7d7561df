"""Two devices of one resource at one container path (hostile22 F8), through the kubelet's
real device manager (v1.32, tests/kubelet_harness.py): GetPreferredAllocation steers its
pick to a set the Allocate can serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import glob_config
from .kubelet_harness import RealKubelet, healthy

USB = "vendor.example/usb"
PODS = 12
"""Two-device pods, one after the other: the kubelet's own pick (Go map order) takes both
`x` in one of three, so twelve pods without steering are all admitted in 0.8% of runs."""


def _usb_config(socket_dir: Path, root: Path) -> str:
    config = glob_config(socket_dir, (USB, f"{root}/a/*"))
    return config.replace(
        f'paths: ["{root}/a/*"]',
        f'paths: ["{root}/a/*", "{root}/b/*", "{root}/c/*"], containerPath: "/dev/usb/{{name}}"',
    )


async def test_two_device_pods_are_all_admitted_while_a_set_without_collisions_is_free(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """The shape of /dev/bus/usb/*/* with /dev/usb/{name}: a/x and c/z first (no two devices
    share a container path yet; the config allows it, so GetPreferredAllocation is announced
    from the first registration), then b/x appears (a/x and b/x both at /dev/usb/x): no
    registration (hostile25 F1: registering again refused every admission of the resource
    until it was in), and every two-device pod gets a set the runtime can hold (a/x or b/x,
    with c/z). Before the steering, the kubelet picked a/x and b/x in one pod of three and
    Allocate refused it for good."""
    root = short_dir / "usb"
    for bus in ("a", "b", "c"):
        (root / bus).mkdir(parents=True)
    (root / "a" / "x").touch()
    (root / "c" / "z").touch()
    kubelet = real_kubelet_factory()
    await start_host(_usb_config(kubelet.socket_dir, root))
    await kubelet.await_for(healthy(USB, 2), what="a/x and c/z")
    seen = await kubelet.acall(kubelet.resource, USB)
    assert seen is not None and seen["options"]["get_preferred_allocation_available"] is True
    one = await kubelet.acall(kubelet.allocate, "one", {USB: 1})  # (no pair: no preference)
    assert one["error"] == ""
    await kubelet.acall(kubelet.release, "one")
    registered = sum(e["kind"] == "registered" for e in await kubelet.acall(kubelet.events))

    (root / "b" / "x").touch()

    await kubelet.await_for(healthy(USB, 3), what="b/x listed")
    events = await kubelet.acall(kubelet.events)
    assert sum(e["kind"] == "registered" for e in events) == registered
    assert not [e for e in events if e["kind"] == "disconnected"]
    refused: list[str] = []
    for number in range(PODS):
        pod = f"p{number}"
        answer = await kubelet.acall(kubelet.allocate, pod, {USB: 2})
        if answer["error"]:
            refused.append(answer["error"])
        else:
            inside = sorted(node["PathInContainer"] for node in answer["devices"])
            assert inside == ["/dev/usb/x", "/dev/usb/z"]
        await kubelet.acall(kubelet.release, pod)
    assert refused == []


SELF = "example.com/self"


@pytest.mark.parametrize(
    "shape", ["own_mount", "config_mount", "own_mount_above", "config_mount_above", "node_above"]
)
async def test_a_device_no_container_can_be_given_is_not_listed(
    shape: str, real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """hostile25 F8: d1's node at /dev/x and a mount at /dev/x (its own, from a json probe;
    or the config's `allocate.mounts`): no container can be given d1. It was advertised
    Healthy, counted as a pair, steered to, and every pod the kubelet gave it refused while
    d2 was free. Now it is left out of the list (`path_collision`), and the pod gets d2.
    hostile27 F2: the same for d1's node at /dev/x/n below such a mount at /dev/x (the
    runtime would make the node inside the mount's host directory: a real node on the host),
    and for d1's nodes at /dev/x and /dev/x/n (nothing can be made below a node); both were
    advertised Healthy and handed out."""
    (short_dir / "mnt").mkdir()
    (short_dir / "a").touch()
    (short_dir / "b").touch()
    (short_dir / "c").touch()
    below = shape.endswith("_above")
    d1: dict[str, object] = {"id": "d1", "paths": [f"{short_dir}/a:/dev/x{'/n' if below else ''}"]}
    if shape == "node_above":
        d1["paths"] = [f"{short_dir}/a:/dev/x", f"{short_dir}/b:/dev/x/n"]
    mount = {"hostPath": f"{short_dir}/mnt", "containerPath": "/dev/x", "readOnly": False}
    allocate = ""
    if shape.startswith("own_mount"):
        d1["mounts"] = [mount]
    elif shape.startswith("config_mount"):
        allocate = f", allocate: {{mounts: [{json.dumps(mount)}]}}"
    probe = json.dumps([d1, {"id": "d2", "paths": [f"{short_dir}/c:/dev/z"]}])
    kubelet = real_kubelet_factory()
    config = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {short_dir}/state\n"
        f"resources:\n  - {{name: {SELF}, shell: {{command: [echo, '{probe}'], format: json}}"
        f"{allocate}}}\n"
    )
    await start_host(config)

    def listed(k: RealKubelet) -> bool:
        seen = k.resource(SELF)
        return seen is not None and seen["healthy"] + seen["unhealthy"] > 0

    await kubelet.await_for(listed, what="the probe's list")
    seen = await kubelet.acall(kubelet.resource, SELF)
    assert sorted(seen["device_numa"]) == ["d2"]
    answer = await kubelet.acall(kubelet.allocate, "p0", {SELF: 1})
    assert answer["error"] == "" and answer["device_ids"][SELF] == ["d2"]
    assert list((short_dir / "mnt").iterdir()) == []


MULTI = "vendor.example/multi"


async def test_two_device_pods_get_the_set_that_fits_where_the_first_pick_fits_nothing(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """hostile25 F3: d1 places nodes at /dev/x and /dev/y, d2 at /dev/x, d3 at /dev/y. The
    steering began with d1 and found nothing to add; the kubelet added d2 or d3 and Allocate
    refused every two-device pod (10 of 10) though {d2, d3} was free. Now all are admitted."""
    for name in ("d1x", "d1y", "d2x", "d3y"):
        (short_dir / name).touch()
    probe = json.dumps(
        [
            {"id": "d1", "paths": [f"{short_dir}/d1x:/dev/x", f"{short_dir}/d1y:/dev/y"]},
            {"id": "d2", "paths": [f"{short_dir}/d2x:/dev/x"]},
            {"id": "d3", "paths": [f"{short_dir}/d3y:/dev/y"]},
        ]
    )
    for chosen in await _two_device_pods(real_kubelet_factory(), start_host, short_dir, probe, 4):
        assert chosen == ["d2", "d3"]


async def _two_device_pods(
    kubelet: RealKubelet, start_host, short_dir: Path, probe: str, pods: int
) -> list[list[str]]:
    """Serve the three devices a json `probe` prints, then admit `pods` two-device pods one
    after the other (each released before the next): the IDs each got (sorted)."""
    await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {short_dir}/state\n"
        f"resources:\n  - {{name: {MULTI}, shell: {{command: [echo, '{probe}'], format: json}}}}\n"
    )
    await kubelet.await_for(healthy(MULTI, 3), what="d1, d2 and d3")
    chosen = []
    for number in range(pods):
        answer = await kubelet.acall(kubelet.allocate, f"p{number}", {MULTI: 2})
        assert answer["error"] == ""
        chosen.append(sorted(answer["device_ids"][MULTI]))
        await kubelet.acall(kubelet.release, f"p{number}")
    return chosen


async def test_two_device_pods_never_get_a_node_and_a_mount_below_it(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """hostile27 F2: d1's node at /dev/x, d2's mount at /dev/x/sub, d3's node at /dev/z. No
    container can hold d1 and d2 (nothing can be mounted below a device node): the list
    holds a pair, GetPreferredAllocation steers clear of it, and every two-device pod gets
    d3 with one of them. Before, only equal container paths counted: the kubelet's own pick
    (d1 and d2 in one pod of three) was answered with both."""
    (short_dir / "mnt").mkdir()
    for name in ("a", "c"):
        (short_dir / name).touch()
    probe = json.dumps(
        [
            {"id": "d1", "paths": [f"{short_dir}/a:/dev/x"]},
            {
                "id": "d2",
                "mounts": [{"hostPath": f"{short_dir}/mnt", "containerPath": "/dev/x/sub"}],
            },
            {"id": "d3", "paths": [f"{short_dir}/c:/dev/z"]},
        ]
    )
    kubelet = real_kubelet_factory()
    for chosen in await _two_device_pods(kubelet, start_host, short_dir, probe, PODS):
        assert "d3" in chosen
