"""Glob groups (`glob.group`): one device made of several matched paths, optional members,
directories mounted, IDs from the group key, and collisions refused at load time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdp_host.allocation import AllocationBuilder, AllocationError
from kdp_host.config import (
    ConfigError,
    GlobDriverConfig,
    GlobGroupMemberConfig,
    ResourceConfig,
    load_config_text,
)
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.drivers import make_driver
from kdp_host.drivers.glob import GlobDriver
from kdp_host.drivers.glob_groups import GlobGroupScan
from kdp_host.testing import ManualClock, RecordingNotifier, driver_deps


def member(path: str, **options: object) -> GlobGroupMemberConfig:
    return GlobGroupMemberConfig(path=path, **options)  # type: ignore[arg-type]


def group_driver(
    *members: GlobGroupMemberConfig, clock: ManualClock | None = None, grace: float = 60.0
) -> GlobDriver:
    config = GlobDriverConfig(group=members, grace_period=grace)
    driver = make_driver(config, driver_deps(clock=clock))
    assert isinstance(driver, GlobDriver) and isinstance(driver.scanner, GlobGroupScan)
    return driver


async def scan(driver: GlobDriver) -> dict[str, Device]:
    """One scan and merge, as the scan loop does it: the list it publishes."""
    notifier = RecordingNotifier()
    await driver.step(notifier)
    return notifier.devices


def nodes(device: Device) -> list[tuple[str, str]]:
    return [(n.host_path, n.container_path) for n in device.nodes]


def xdma(dev: Path, card: int, *names: str) -> None:
    for name in names:
        (dev / f"xdma{card}_{name}").touch()


# --------------------------------------------------------------------------- config


def config_problems(glob_yaml: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config_text(f"resources: [{{name: a.io/b, glob: {glob_yaml}}}]\n", "t.yaml")
    return err.value.problems


def test_a_group_config_loads() -> None:
    text = """\
resources:
  - name: a.io/xdma
    glob:
      group:
        - path: /dev/xdma{key}_user
        - {path: "/dev/xdma{key}_c2h_*", containerPath: "/dev/dma/{key}/{name}"}
        - {path: "/dev/xdma{key}_events_*", optional: true, permissions: r}
        - {path: /dev/vfio/vfio}
        - {path: /opt/xdma/fw, mount: true, readOnly: false}
"""
    glob = load_config_text(text).resources[0].driver
    assert isinstance(glob, GlobDriverConfig)
    assert glob.paths == ()
    assert [m.path for m in glob.group][:2] == ["/dev/xdma{key}_user", "/dev/xdma{key}_c2h_*"]
    assert glob.group[2].optional and glob.group[2].permissions == "r"
    assert glob.group[4].mount and not glob.group[4].read_only
    assert [m.keyed for m in glob.group] == [True, True, True, False, False]
    assert [m.several_per_group for m in glob.group] == [False, True, True, False, False]


@pytest.mark.parametrize(
    ("glob_yaml", "fragment"),
    [
        ("{}", "needs exactly one of paths or group"),
        ("{paths: [/dev/a*], group: [{path: /dev/a}]}", "needs exactly one of paths or group"),
        (
            "{group: [{path: '/dev/a{key}'}], containerPath: '/c/{name}'}",
            "containerPath: with group, containerPath is set per member",
        ),
        ("{group: [{path: '/dev/a{name}'}]}", "the only placeholder of a member path is {key}"),
        ("{group: [{path: '/dev/{key}/a{key}'}]}", "{key} may appear at most once"),
        ("{group: [{path: 'dev/a{key}'}]}", "must be an absolute path"),
        (
            "{group: [{path: '/dev/a{key}', containerPath: /dev/a}]}",
            "group[0].containerPath: must contain {key}, {name}, {path} or {target}",
        ),
        (
            "{group: [{path: '/dev/a{key}_*', containerPath: '/dev/a{key}'}]}",
            "group[0].containerPath: must contain {name}, {path} or {target}",
        ),
        (
            "{group: [{path: '/dev/a{key}'}, {path: '/dev/b{key}', containerPath: '/x/{key}'}, "
            "{path: '/dev/c{key}', containerPath: '/x/{key}'}]}",
            "group[2].containerPath: is also the containerPath of group[1]",
        ),
        (
            "{group: [{path: /dev/a, containerPath: /x}, {path: /dev/b, containerPath: /x}]}",
            "group[1].containerPath: is also the containerPath of group[0]",
        ),
        ("{group: [{path: '/dev/a{key}', containerPath: 'x/{key}'}]}", "must be an absolute"),
        ("{group: [{path: '/dev/a{key}', permissions: rx}]}", "must be made of r, w and m"),
        ("{group: [{path: '/dev/a{key}', typo: 1}]}", "typo"),
    ],
)
def test_group_config_errors(glob_yaml: str, fragment: str) -> None:
    found = config_problems(glob_yaml)
    assert any(fragment in p for p in found), found


# --------------------------------------------------------------------------- scanning


async def test_a_device_is_every_path_of_its_key(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "vfio").mkdir()
    (dev / "vfio" / "vfio").touch()
    xdma(dev, 0, "user", "c2h_0", "c2h_1", "h2c_0")
    xdma(dev, 1, "user", "c2h_0", "h2c_0")
    driver = group_driver(
        member(f"{dev}/xdma{{key}}_user"),
        member(f"{dev}/xdma{{key}}_c2h_*", container_path="/dev/dma{key}/{name}"),
        member(f"{dev}/xdma{{key}}_h2c_*", permissions="w"),
        member(f"{dev}/vfio/vfio", container_path="/dev/vfio/vfio"),
    )
    devices = await scan(driver)
    assert sorted(devices) == ["0", "1"]
    assert nodes(devices["0"]) == [
        (f"{dev}/xdma0_user", f"{dev}/xdma0_user"),
        (f"{dev}/xdma0_c2h_0", "/dev/dma0/xdma0_c2h_0"),
        (f"{dev}/xdma0_c2h_1", "/dev/dma0/xdma0_c2h_1"),
        (f"{dev}/xdma0_h2c_0", f"{dev}/xdma0_h2c_0"),
        (f"{dev}/vfio/vfio", "/dev/vfio/vfio"),
    ]
    assert [n.permissions for n in devices["1"].nodes] == [None, None, "w", None]
    assert devices["0"].healthy and devices["0"].path == f"{dev}/xdma0_user"

    # Allocate passes every node of both devices; the shared node once; {paths} names all.
    resource = ResourceConfig(
        name="a.io/xdma",
        driver=driver.scanner.config,
    )
    table = DeviceTable()
    table.publish(devices.values())
    response = AllocationBuilder(resource).container_response(table.snapshot, ["1", "0"])
    assert len(response.devices) == 8
    assert [d.host_path for d in response.devices][-3:] == [
        f"{dev}/xdma1_user",
        f"{dev}/xdma1_c2h_0",
        f"{dev}/xdma1_h2c_0",
    ]


async def test_a_group_appears_member_by_member(tmp_path: Path) -> None:
    driver = group_driver(
        member(f"{tmp_path}/xdma{{key}}_user"),
        member(f"{tmp_path}/xdma{{key}}_h2c_0"),
        member(f"{tmp_path}/xdma{{key}}_c2h_0"),
    )
    assert (await scan(driver)) == {}
    xdma(tmp_path, 0, "user")
    result = await driver.scan_once()
    assert result.devices == {}
    [skip] = result.skipped
    assert skip.reason == "incomplete_group"
    assert "xdma{key}_h2c_0" in skip.message and "xdma{key}_c2h_0" in skip.message
    xdma(tmp_path, 0, "h2c_0")
    assert (await scan(driver)) == {}
    xdma(tmp_path, 0, "c2h_0")
    devices = await scan(driver)
    assert list(devices) == ["0"] and devices["0"].healthy
    assert len(devices["0"].nodes) == 3
    assert (await driver.scan_once()).skipped == ()


async def test_a_required_member_that_vanishes_makes_the_group_unhealthy_then_gone(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    driver = group_driver(
        member(f"{tmp_path}/xdma{{key}}_user"),
        member(f"{tmp_path}/xdma{{key}}_h2c_0"),
        clock=clock,
        grace=30.0,
    )
    xdma(tmp_path, 0, "user", "h2c_0")
    xdma(tmp_path, 1, "user", "h2c_0")
    assert all(d.healthy for d in (await scan(driver)).values())
    (tmp_path / "xdma0_h2c_0").unlink()
    devices = await scan(driver)
    assert not devices["0"].healthy and devices["1"].healthy
    # it comes back within the grace period: Healthy again, same ID
    xdma(tmp_path, 0, "h2c_0")
    assert (await scan(driver))["0"].healthy
    (tmp_path / "xdma0_user").unlink()
    assert not (await scan(driver))["0"].healthy
    clock.now += 31
    assert list(await scan(driver)) == ["1"]


async def test_an_optional_member_may_be_missing(tmp_path: Path) -> None:
    driver = group_driver(
        member(f"{tmp_path}/card{{key}}"),
        member(f"{tmp_path}/render{{key}}", optional=True),
    )
    (tmp_path / "card0").touch()
    (tmp_path / "card1").touch()
    (tmp_path / "render1").touch()
    devices = await scan(driver)
    assert devices["0"].healthy and nodes(devices["0"]) == [(f"{tmp_path}/card0",) * 2]
    assert [n.optional for n in devices["1"].nodes] == [False, True]
    assert len(devices["1"].nodes) == 2
    (tmp_path / "render1").unlink()
    devices = await scan(driver)
    assert devices["1"].healthy and len(devices["1"].nodes) == 1


async def test_a_group_that_loses_a_required_node_but_stays_complete(tmp_path: Path) -> None:
    """One of several paths of a required member goes: the group is still complete, but a
    node it had is gone, so it is Unhealthy for the grace period (the rule of every
    watching driver), then listed without it; a node that comes back first heals it."""
    clock = ManualClock()
    driver = group_driver(
        member(f"{tmp_path}/xdma{{key}}_user"),
        member(f"{tmp_path}/xdma{{key}}_c2h_*"),
        clock=clock,
        grace=30,
    )
    for name in ("user", "c2h_0", "c2h_1"):
        (tmp_path / f"xdma0_{name}").touch()
    assert len((await scan(driver))["0"].nodes) == 3
    (tmp_path / "xdma0_c2h_1").unlink()
    device = (await scan(driver))["0"]
    assert not device.healthy and len(device.nodes) == 2
    clock.advance(10)
    (tmp_path / "xdma0_c2h_1").touch()
    device = (await scan(driver))["0"]
    assert device.healthy and len(device.nodes) == 3
    (tmp_path / "xdma0_c2h_1").unlink()
    assert not (await scan(driver))["0"].healthy
    clock.advance(31)
    device = (await scan(driver))["0"]
    assert device.healthy and len(device.nodes) == 2


async def test_only_optional_members_need_one_path(tmp_path: Path) -> None:
    """GDP's `{"paths": [{"path": "/dev/ttyS0", "optional": true}, ...]}`: one device while
    any of them exists."""
    driver = group_driver(
        member(f"{tmp_path}/ttyS0", optional=True),
        member(f"{tmp_path}/ttyUSB0", optional=True),
    )
    assert (await scan(driver)) == {}
    (tmp_path / "ttyUSB0").touch()
    devices = await scan(driver)
    assert list(devices) == ["ttyS0"]
    assert nodes(devices["ttyS0"]) == [(f"{tmp_path}/ttyUSB0",) * 2]


async def test_directories_and_mount_members_are_mounted(tmp_path: Path) -> None:
    (tmp_path / "snd").mkdir()
    (tmp_path / "snd" / "controlC0").touch()
    (tmp_path / "fw").mkdir()
    (tmp_path / "fw" / "card0").mkdir()
    (tmp_path / "card0").touch()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "card0.cfg").touch()
    (tmp_path / "fw-link").symlink_to(tmp_path / "fw")
    driver = group_driver(
        member(f"{tmp_path}/card{{key}}"),
        member(f"{tmp_path}/fw-link/card{{key}}", container_path="/lib/firmware/card"),
        member(f"{tmp_path}/etc/card{{key}}.cfg", mount=True, container_path="/etc/card.cfg"),
        member(f"{tmp_path}/snd", container_path="/dev/snd", read_only=False),
    )
    [device] = (await scan(driver)).values()
    assert nodes(device) == [(f"{tmp_path}/card0",) * 2]
    assert device.mounts == (
        DeviceMount(f"{tmp_path}/fw/card0", "/lib/firmware/card", True),
        DeviceMount(f"{tmp_path}/etc/card0.cfg", "/etc/card.cfg", True),
        DeviceMount(f"{tmp_path}/snd", "/dev/snd", False, shared=True),
    )
    # a required directory that vanishes makes the group incomplete
    (tmp_path / "fw" / "card0").rmdir()
    assert not (await scan(driver))[device.id].healthy


async def test_group_ids_are_a_pure_function_of_the_key(tmp_path: Path) -> None:
    by_path = tmp_path / "by-path"
    by_path.mkdir()
    for address, card, render in (("0000:03:00.0", 0, 128), ("0000:04:00.0", 1, 129)):
        (tmp_path / f"card{card}").touch()
        (tmp_path / f"renderD{render}").touch()
        (by_path / f"pci-{address}-card").symlink_to(tmp_path / f"card{card}")
        (by_path / f"pci-{address}-render").symlink_to(tmp_path / f"renderD{render}")
    members = (
        member(f"{by_path}/pci-{{key}}-card", container_path="{target}"),
        member(f"{by_path}/pci-{{key}}-render", container_path="/dev/dri/{key}-render"),
    )
    driver = group_driver(*members)
    devices = await scan(driver)
    ids = {d.path: d.id for d in devices.values()}
    assert len(ids) == 2
    for device in devices.values():
        # a key that is not readable as an ID (':') gets the hashed form, never a clash
        assert device.id.startswith("0000_0") and len(device.id) == len("0000_03_00.0") + 11
        assert device.id == driver.scanner.group_id(
            device.path.rsplit("/pci-", 1)[1][: -len("-card")]
        )
    assert nodes(devices[driver.scanner.group_id("0000:04:00.0")]) == [
        (f"{tmp_path}/card1", f"{tmp_path}/card1"),
        (f"{tmp_path}/renderD129", "/dev/dri/0000:04:00.0-render"),
    ]
    # the same key gives the same ID in a driver that has only seen the other group
    for link in by_path.glob("pci-0000:03*"):
        link.unlink()
    fresh = group_driver(*members)
    second = driver.scanner.group_id("0000:04:00.0")
    assert await scan(fresh) == {second: devices[second]}
    assert group_driver(member("/dev/xdma{key}_user")).scanner.group_id("0") == "0"


async def test_a_node_reached_by_two_groups_belongs_to_the_first(tmp_path: Path) -> None:
    (tmp_path / "dev0").touch()
    (tmp_path / "dev1").symlink_to(tmp_path / "dev0")
    driver = group_driver(member(f"{tmp_path}/dev{{key}}"))
    result = await driver.scan_once()
    assert list(result.devices) == ["0"]
    assert [(s.reason, os.path.basename(s.subject)) for s in result.skipped] == [
        ("same_device", "dev1")
    ]


async def test_colliding_member_paths_are_an_allocate_error(tmp_path: Path) -> None:
    """Per-member container paths that only collide at run time ({name} of two groups'
    members in different directories): INVALID_ARGUMENT, never a dropped node."""
    for card in ("a", "b"):
        (tmp_path / card).mkdir()
        (tmp_path / card / "ctl").touch()
        (tmp_path / f"card-{card}").touch()
    driver = group_driver(
        member(f"{tmp_path}/card-{{key}}"),
        member(f"{tmp_path}/{{key}}/ctl", container_path="/dev/{name}"),
    )
    devices = await scan(driver)
    assert [d.nodes[1].container_path for d in devices.values()] == ["/dev/ctl", "/dev/ctl"]
    table = DeviceTable()
    table.publish(devices.values())
    builder = AllocationBuilder(ResourceConfig(name="a.io/b", driver=driver.scanner.config))
    with pytest.raises(AllocationError, match="/dev/ctl is claimed twice"):
        builder.container_response(table.snapshot, ["a", "b"])
    assert len(builder.container_response(table.snapshot, ["a"]).devices) == 2


def test_device_nodes_carry_optional_and_permissions_for_any_driver() -> None:
    """The shared Device model: a node's own permissions win over allocate.permissions."""
    device = Device(
        id="d",
        nodes=(DeviceNode("/dev/a", "/dev/a", "r", optional=True), DeviceNode("/dev/b", "/dev/b")),
    )
    table = DeviceTable()
    table.publish([device])
    config = load_config_text(
        "resources: [{name: a.io/b, glob: {paths: [/dev/x*]}, allocate: {permissions: rwm}}]"
    ).resources[0]
    response = AllocationBuilder(config).container_response(table.snapshot, ["d"])
    assert [(d.host_path, d.permissions) for d in response.devices] == [
        ("/dev/a", "r"),
        ("/dev/b", "rwm"),
    ]


async def test_a_group_whose_own_paths_collide_is_not_listed(tmp_path: Path) -> None:
    for directory in ("a", "b"):
        (tmp_path / directory / "0").mkdir(parents=True)
        (tmp_path / directory / "0" / "ctl").touch()
    driver = group_driver(
        member(f"{tmp_path}/a/{{key}}/ctl", container_path="/dev/{key}/{name}"),
        member(f"{tmp_path}/b/{{key}}/ctl", container_path="/dev/{key}/{name}", optional=True),
    )
    result = await driver.scan_once()
    assert result.devices == {}
    [skip] = result.skipped
    assert skip.reason == "path_collision"
    assert "container path /dev/0/ctl is claimed twice" in skip.message
    (tmp_path / "b" / "0" / "ctl").unlink()
    assert list(await scan(driver)) == ["0"]


async def test_a_stray_match_that_forms_no_group_takes_no_node(tmp_path: Path) -> None:
    """`card{key}` also matches `card0.cfg` (key `0.cfg`); the file stays with group 0, whose
    `card{key}.cfg` member needs it."""
    (tmp_path / "card0").touch()
    (tmp_path / "card0.cfg").touch()
    driver = group_driver(
        member(f"{tmp_path}/card{{key}}"),
        member(f"{tmp_path}/card{{key}}.cfg", mount=True, container_path="/etc/card.cfg"),
    )
    result = await driver.scan_once()
    assert list(result.devices) == ["0"]
    assert result.devices["0"].mounts == (
        DeviceMount(f"{tmp_path}/card0.cfg", "/etc/card.cfg", True),
    )
    # group `0.cfg` has nothing left: no group at all, nothing to report
    assert result.skipped == ()


async def test_a_member_without_key_may_match_several_nodes(tmp_path: Path) -> None:
    """generic-device-plugin's `{"path": "/dev/snd"}`: every node of the directory, as device
    nodes of one device (a bind mount would grant no device access)."""
    snd = tmp_path / "snd"
    snd.mkdir()
    for name in ("controlC0", "pcmC0D0c", "pcmC0D0p"):
        (snd / name).touch()
    driver = group_driver(member(f"{snd}/*"))
    devices = await scan(driver)
    assert list(devices) == ["snd"]
    assert [host for host, _ in nodes(devices["snd"])] == [
        f"{snd}/controlC0",
        f"{snd}/pcmC0D0c",
        f"{snd}/pcmC0D0p",
    ]
    assert devices["snd"].mounts == ()


async def test_a_link_that_appears_never_takes_a_node_from_its_group(tmp_path: Path) -> None:
    """A node belongs to the group whose member matches the node itself: a link to it with
    another key (even one sorted first, `-1` before `0`) appearing or vanishing never moves
    it to another group (which a second pod could then be given)."""
    (tmp_path / "dev0").touch()
    driver = group_driver(member(f"{tmp_path}/dev{{key}}"), grace=60.0)
    before = await scan(driver)
    assert list(before) == ["0"]
    (tmp_path / "dev-1").symlink_to("dev0")
    result = await driver.scan_once()
    assert list(result.devices) == ["0"]
    assert result.devices["0"] == before["0"]
    (tmp_path / "dev-1").unlink()
    assert (await scan(driver)) == before


async def test_a_node_that_only_links_of_several_groups_reach_belongs_to_none(
    tmp_path: Path,
) -> None:
    (tmp_path / "by-path").mkdir()
    (tmp_path / "card1").touch()
    (tmp_path / "by-path" / "pci-b-card").symlink_to("../card1")
    driver = group_driver(member(f"{tmp_path}/by-path/pci-{{key}}-card"), grace=0.0)
    assert [nodes(d) for d in (await scan(driver)).values()] == [
        [(f"{tmp_path}/card1", f"{tmp_path}/by-path/pci-b-card")]
    ]
    (tmp_path / "by-path" / "pci-a-card").symlink_to("../card1")
    assert (await scan(driver)) == {}, (
        "never two groups, nor the node moved to the new link's group"
    )


# --------------------------------------------------------------------------- issue 17 item 4


async def test_a_member_reached_through_a_directory_link_takes_no_node(tmp_path: Path) -> None:
    """`card-1 -> card0` makes `card-1/user` match with key `-1` (before `0` in key order):
    the node is card0's own, so it stays with group 0 and `-1` gets nothing (resolved before
    grouping: a path through a directory link is a link, like a leaf link)."""
    (tmp_path / "card0").mkdir()
    (tmp_path / "card0" / "user").touch()
    members = (member(f"{tmp_path}/card{{key}}/user"),)
    driver = group_driver(*members)
    assert list(await scan(driver)) == ["0"]
    (tmp_path / "card-1").symlink_to(tmp_path / "card0")
    devices = await scan(driver)
    assert list(devices) == ["0"] and devices["0"].healthy
    assert list(await scan(group_driver(*members))) == ["0"], "a restart agrees"
    result = await driver.scan_once()
    assert {s.reason for s in result.skipped} == {"same_device"}


async def test_a_directory_member_linked_to_root_or_outside_is_never_mounted(
    tmp_path: Path,
) -> None:
    (tmp_path / "card0").touch()
    (tmp_path / "fw").mkdir()
    (tmp_path / "elsewhere").mkdir()
    driver = group_driver(member(f"{tmp_path}/card{{key}}"), member(f"{tmp_path}/fw/{{key}}"))
    for target in ("/", str(tmp_path / "elsewhere"), str(tmp_path / "fw")):
        (tmp_path / "fw" / "0").symlink_to(target)
        assert await scan(driver) == {}, f"{target} mounted"
        result = await driver.scan_once()
        [unsafe] = [s for s in result.skipped if s.reason == "unsafe_mount"]
        assert unsafe.subject == f"{tmp_path}/fw/0"
        assert unsafe.message.endswith(
            "is / (the host's root)" if target == "/" else f"outside {tmp_path}/fw"
        )
        (tmp_path / "fw" / "0").unlink()
    # a link to a directory inside the member's directory is mounted (as its real path)
    (tmp_path / "fw" / "versions" / "7").mkdir(parents=True)
    (tmp_path / "fw" / "0").symlink_to(tmp_path / "fw" / "versions" / "7")
    [device] = (await scan(driver)).values()
    assert [m.host_path for m in device.mounts] == [f"{tmp_path}/fw/versions/7"]


async def test_a_mount_member_file_linked_out_of_its_directory_is_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "card0").touch()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "card0.cfg").symlink_to("/etc/passwd")
    driver = group_driver(
        member(f"{tmp_path}/card{{key}}"),
        member(f"{tmp_path}/etc/card{{key}}.cfg", mount=True, optional=True),
    )
    [device] = (await scan(driver)).values()
    assert device.mounts == ()
