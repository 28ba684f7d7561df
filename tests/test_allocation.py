"""AllocateResponse building and the preferred-allocation policies
(docs/kubelet-contract.md §5, §6)."""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdp_host.allocation import (
    AllocationBuilder,
    AllocationError,
    cdi_device_name,
    cdi_device_part,
)
from kdp_host.cdi_spec import build_spec
from kdp_host.command_output import ContainerExtras
from kdp_host.config import (
    AllocateConfig,
    CdiConfig,
    GlobDriverConfig,
    MountConfig,
    PreferredPolicy,
    ResourceConfig,
    render_template,
)
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceMount, DeviceNode, Snapshot
from kdp_host.k8s_names import EXTENDED_RESOURCE_NAME_PATTERN, is_extended_resource_name
from kdp_host.preferred import preferred_allocation

RESOURCE = "vendor.example/fpga"
OWN = cdi_device_name(RESOURCE, "x").removesuffix("x")
"""What the CDI device names of RESOURCE's devices start with (`<resource>:`, issue 17)."""
KIND = "vendor.example/fpga"
CDI_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
POLICIES: tuple[PreferredPolicy, ...] = ("packed", "spread", "numa", "none")


def dev(
    device_id: str,
    *,
    numa: int | None = None,
    healthy: bool = True,
    container: str | None = None,
    env: dict[str, str] | None = None,
    mounts: tuple[DeviceMount, ...] = (),
    annotations: dict[str, str] | None = None,
    nodes: bool = True,
) -> Device:
    node = DeviceNode(f"/dev/{device_id}", container or f"/dev/{device_id}")
    return Device(
        id=device_id,
        healthy=healthy,
        nodes=(node,) if nodes else (),
        numa=numa,
        env=env or {},
        mounts=mounts,
        annotations=annotations or {},
    )


def snapshot(devices: Sequence[Device], replicas: int = 1) -> Snapshot:
    table = DeviceTable(replicas=replicas)
    table.publish(devices)
    return table.snapshot


def resource(
    *,
    env: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    mounts: tuple[MountConfig, ...] = (),
    cdi: CdiConfig | None = None,
    replicas: int = 1,
    permissions: str = "rw",
) -> ResourceConfig:
    return ResourceConfig(
        name=RESOURCE,
        driver=GlobDriverConfig(paths=("/dev/fpga*",)),
        allocate=AllocateConfig(
            env=env or {},
            mounts=mounts,
            annotations=annotations or {},
            permissions=permissions,
            cdi=cdi,
        ),
        replicas=replicas,
    )


def ids(snap: Snapshot) -> list[str]:
    return [entry.id for entry in snap.advertised]


def physical(snap: Snapshot, chosen: Sequence[str]) -> list[str]:
    return [snap.by_advertised_id[i].device.id for i in chosen]


# --------------------------------------------------------------------------- Allocate


def test_replicas_map_back_to_physical_devices_and_dedup() -> None:
    snap = snapshot([dev("fpga0"), dev("fpga1"), dev("fpga2")], replicas=3)
    builder = AllocationBuilder(
        resource(
            env={"DEVS": "{ids}", "N": "{count}", "P": "{paths}", "R": "{resource}"},
            annotations={"vendor.example/devs": "{ids}"},
            replicas=3,
        )
    )
    response = builder.container_response(snap, ["fpga1::2", "fpga0::0", "fpga1::0", "fpga0::1"])
    assert [(d.host_path, d.container_path, d.permissions) for d in response.devices] == [
        ("/dev/fpga0", "/dev/fpga0", "rw"),
        ("/dev/fpga1", "/dev/fpga1", "rw"),
    ]
    assert response.envs == {
        "DEVS": "fpga0,fpga1",
        "N": "2",
        "P": "/dev/fpga0,/dev/fpga1",
        "R": RESOURCE,
    }
    assert response.annotations == {"vendor.example/devs": "fpga0,fpga1"}
    assert response.cdi_devices == []


def test_response_does_not_depend_on_request_order() -> None:
    snap = snapshot([dev(f"fpga{i}", env={"SLOT": str(i)}) for i in range(6)], replicas=2)
    builder = AllocationBuilder(resource(env={"DEVS": "{ids}"}, replicas=2))
    request = ["fpga3::1", "fpga0::0", "fpga5::0", "fpga0::1", "fpga2::1"]
    expected = bytes(builder.container_response(snap, request))
    rng = random.Random(7)
    for _ in range(20):
        shuffled = request[:]
        rng.shuffle(shuffled)
        assert bytes(builder.container_response(snap, shuffled + shuffled[:2])) == expected


def test_two_devices_on_one_container_path_are_refused_not_dropped() -> None:
    """Issue 10 item 5: the old code silently kept one DeviceSpec for two charged devices."""
    snap = snapshot([dev("a", container="/dev/accel"), dev("b", container="/dev/accel")])
    with pytest.raises(AllocationError) as raised:
        AllocationBuilder(resource()).container_response(snap, ["b", "a"])
    message = str(raised.value)
    assert "/dev/accel" in message and "claimed twice" in message
    assert "by a (host path /dev/a)" in message and "by b (host path /dev/b)" in message
    # each alone is fine
    response = AllocationBuilder(resource()).container_response(snap, ["a"])
    assert [(d.host_path, d.container_path) for d in response.devices] == [("/dev/a", "/dev/accel")]


def test_a_node_shared_by_devices_is_passed_once() -> None:
    shared = DeviceNode("/dev/vfio/vfio", "/dev/vfio/vfio")
    devices = [
        Device(id=g, nodes=(DeviceNode(f"/dev/vfio/{g}", f"/dev/vfio/{g}"), shared))
        for g in ("12", "13")
    ]
    response = AllocationBuilder(resource()).container_response(snapshot(devices), ["13", "12"])
    assert [d.host_path for d in response.devices] == [
        "/dev/vfio/12",
        "/dev/vfio/vfio",
        "/dev/vfio/13",
    ]


def test_every_node_of_every_device_is_passed() -> None:
    devices = [
        Device(
            id=f"xdma{k}",
            nodes=tuple(
                DeviceNode(f"/dev/xdma{k}_{n}", f"/dev/xdma{k}_{n}", permissions=perm)
                for n, perm in (("user", None), ("c2h_0", "r"), ("h2c_0", "w"))
            ),
        )
        for k in range(2)
    ]
    response = AllocationBuilder(resource(env={"P": "{paths}", "N": "{count}"})).container_response(
        snapshot(devices), ["xdma1", "xdma0"]
    )
    assert [(d.host_path, d.permissions) for d in response.devices] == [
        ("/dev/xdma0_user", "rw"),
        ("/dev/xdma0_c2h_0", "r"),
        ("/dev/xdma0_h2c_0", "w"),
        ("/dev/xdma1_user", "rw"),
        ("/dev/xdma1_c2h_0", "r"),
        ("/dev/xdma1_h2c_0", "w"),
    ]
    assert response.envs["N"] == "2"
    assert response.envs["P"] == ",".join(d.container_path for d in response.devices)


def test_mounts_env_annotations_merge_and_dedup() -> None:
    shared = DeviceMount("/opt/fw", "/fw", True)
    devices = [
        dev(
            "fpga0",
            env={"SLOT": "0", "VENDOR": "acme", "MODE": "device"},
            mounts=(shared, DeviceMount("/var/fpga0", "/state/0", False)),
            annotations={"vendor.example/slot": "0"},
        ),
        dev(
            "fpga1",
            env={"SLOT": "1", "VENDOR": "acme"},
            mounts=(shared, DeviceMount("/var/fpga1", "/state/1", False)),
            annotations={"vendor.example/slot": "1"},
        ),
    ]
    config = resource(
        env={"MODE": "configured"},
        mounts=(MountConfig("/opt/tools", "/tools"), MountConfig("/opt/fw", "/fw")),
        replicas=2,
    )
    response = AllocationBuilder(config).container_response(
        snapshot(devices, replicas=2), ["fpga1::1", "fpga0::0", "fpga0::1", "fpga1::0"]
    )
    # configured keys win; per-device values are joined in device order, each value once
    assert response.envs == {"MODE": "configured", "SLOT": "0,1", "VENDOR": "acme"}
    assert response.annotations == {"vendor.example/slot": "0,1"}
    # configured mounts first, then device mounts; an identical mount is passed once
    assert [(m.host_path, m.container_path, m.read_only) for m in response.mounts] == [
        ("/opt/tools", "/tools", True),
        ("/opt/fw", "/fw", True),
        ("/var/fpga0", "/state/0", False),
        ("/var/fpga1", "/state/1", False),
    ]


@pytest.mark.parametrize(
    ("configured", "mounts_of", "container", "where"),
    [
        # two devices' mounts on one container path (the old code kept the first)
        ((), lambda k: (DeviceMount(f"/var/fpga{k}", "/state", False),), None, "/state"),
        # a configured mount and a device mount on one container path
        (
            (MountConfig("/opt/other", "/fw"),),
            lambda k: (DeviceMount("/opt/fw", "/fw"),),
            None,
            "/fw",
        ),
        # the same host path, mounted read-only by one and read-write by the other
        ((), lambda k: (DeviceMount("/opt/fw", "/fw", k == 0),), None, "/fw"),
        # a mount over a device node's container path
        ((), lambda k: (DeviceMount(f"/opt/fw{k}", "/dev/accel"),), "/dev/accel", "/dev/accel"),
    ],
)
def test_two_mounts_on_one_container_path_are_refused(
    configured: tuple[MountConfig, ...],
    mounts_of: Callable[[int], tuple[DeviceMount, ...]],
    container: str | None,
    where: str,
) -> None:
    devices = [
        dev(f"fpga{k}", mounts=mounts_of(k), container=container if k == 0 else None)
        for k in range(2)
    ]
    builder = AllocationBuilder(resource(mounts=configured))
    with pytest.raises(AllocationError, match=f"container path {where} is claimed twice"):
        builder.container_response(snapshot(devices), ["fpga0", "fpga1"])


def test_render_template_leaves_other_braces() -> None:
    values = {"ids": "a,b", "paths": "/dev/a", "count": "2", "resource": RESOURCE}
    assert render_template("{ids}|{count}|{other}|{}", values) == "a,b|2|{other}|{}"
    assert render_template("{ids}", {}) == "{ids}"


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("{}", "{}"),  # find -exec tool {} ;
        ("{{ids}}", "{ids}"),  # doubled braces are one literal brace
        ("{{{ids}}}", "{a,b}"),
        ("${{HOME}}", "${HOME}"),
        ("{ print $1 }", "{ print $1 }"),  # not a field name: literal
        ("${1}", "${1}"),
        ("{", "{"),
        ("}", "}"),
        ("{{}}", "{}"),
        ("{ids", "{ids"),
        ("{{ids}", "{ids}"),  # `{{` is a brace, then `ids}` is text
    ],
)
def test_template_escapes(template: str, rendered: str) -> None:
    assert render_template(template, {"ids": "a,b"}) == rendered


def test_unknown_and_unhealthy_ids_are_refused() -> None:
    table = DeviceTable(replicas=2)
    table.publish([dev("fpga0"), dev("fpga1")])
    table.set_check_result("fpga1", False)
    builder = AllocationBuilder(resource(replicas=2))
    with pytest.raises(AllocationError, match=r"unknown device ID\(s\) fpga0, fpga9::0"):
        builder.container_response(table.snapshot, ["fpga9::0", "fpga0::0", "fpga0"])
    with pytest.raises(AllocationError, match=r"unhealthy device ID\(s\) fpga1::0, fpga1::1"):
        builder.container_response(table.snapshot, ["fpga1::1", "fpga0::1", "fpga1::0"])
    with pytest.raises(AllocationError, match="no device IDs"):
        builder.container_response(table.snapshot, [])
    assert builder.container_response(table.snapshot, ["fpga0::1"]).devices


def test_cdi_names_without_device_specs() -> None:
    snap = snapshot([dev("fpga0"), dev("fpga1"), dev("fpga2")], replicas=2)
    builder = AllocationBuilder(resource(cdi=CdiConfig(kind=KIND), replicas=2))
    response = builder.container_response(snap, ["fpga2::0", "fpga0::1", "fpga0::0"])
    # one name per device: that of the first of its IDs asked for (hostile14 N6: per ID)
    names = [f"{KIND}={cdi_device_name(RESOURCE, i)}" for i in ("fpga0::0", "fpga2::0")]
    assert [c.name for c in response.cdi_devices] == names
    assert response.devices == []


def test_cdi_names_with_device_specs() -> None:
    snap = snapshot([dev("fpga0"), dev("fpga1")])
    builder = AllocationBuilder(resource(cdi=CdiConfig(kind=KIND, also_device_specs=True)))
    response = builder.container_response(snap, ["fpga1", "fpga0"])
    assert [c.name for c in response.cdi_devices] == [f"{KIND}={OWN}fpga0", f"{KIND}={OWN}fpga1"]
    assert [d.container_path for d in response.devices] == ["/dev/fpga0", "/dev/fpga1"]


def test_cdi_names_of_shell_style_ids_are_valid_and_stable() -> None:
    odd = ["dongle/1", "_x", "a b", "x.", "ünï", "ok-1", "1", "a:b"]
    devices = [dev("n" + str(i)) for i in range(2)] + [
        Device(id=i, nodes=(DeviceNode("/dev/null", f"/dev/d{n}"),)) for n, i in enumerate(odd)
    ]
    snap = snapshot(devices)
    response = AllocationBuilder(resource(cdi=CdiConfig(kind=KIND))).container_response(snap, odd)
    names = [c.name.split("=", 1)[1] for c in response.cdi_devices]
    assert len(names) == len(set(names)) == len(odd)
    assert all(CDI_NAME.fullmatch(name) for name in names)
    assert cdi_device_part("ok-1") == "ok-1" and cdi_device_part("a:b") == "a:b"
    assert cdi_device_part("dongle/1") == "dongle_1::" + b"dongle/1".hex()
    assert cdi_device_part("dongle/1") == cdi_device_part("dongle/1")
    assert cdi_device_part("dongle/1") != cdi_device_part("dongle_1")


def test_an_escaped_cdi_name_is_never_the_name_of_another_id() -> None:
    """An ID made readable (`dongle/1` -> `dongle_1...`) may be another device's raw ID: the
    two devices must still get two names, or one spec entry is dropped."""
    escaped = cdi_device_part("dongle/1")
    assert cdi_device_part(escaped) != escaped
    assert cdi_device_part("a::b") != "a::b"
    snap = snapshot(
        [
            Device(id="dongle/1", nodes=(DeviceNode("/dev/ttyA0", "/dev/ttyA0"),)),
            Device(id=escaped, nodes=(DeviceNode("/dev/ttyA1", "/dev/ttyA1"),)),
        ]
    )
    config = resource(cdi=CdiConfig(kind=KIND))
    spec = build_spec(config, snap)
    assert spec is not None and len(spec["devices"]) == 2
    response = AllocationBuilder(config).container_response(snap, ["dongle/1", escaped])
    assert len({c.name for c in response.cdi_devices}) == 2


def test_devices_without_nodes_or_mounts_get_no_cdi_name() -> None:
    snap = snapshot(
        [
            dev("bare", nodes=False, env={"K": "v"}),
            dev("mounted", nodes=False, mounts=(DeviceMount("/srv/m", "/m"),)),
        ]
    )
    response = AllocationBuilder(resource(cdi=CdiConfig(kind=KIND))).container_response(
        snap, ["bare", "mounted"]
    )
    assert [c.name for c in response.cdi_devices] == [f"{KIND}={OWN}mounted"]
    assert response.envs == {"K": "v"}


@given(st.text(min_size=1, max_size=40))
def test_cdi_device_name_is_always_valid(device_id: str) -> None:
    name = cdi_device_part(device_id)
    assert CDI_NAME.fullmatch(name), name
    assert name == cdi_device_part(device_id)
    if CDI_NAME.fullmatch(device_id):
        assert name == device_id


@given(st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=12))
def test_cdi_device_names_are_distinct(a: str, b: str) -> None:
    if a != b:
        assert cdi_device_part(a) != cdi_device_part(b)
    # an escaped name, taken as an ID, is escaped again: never someone else's name
    for name in (cdi_device_part(a), cdi_device_part(b)):
        if name not in (a, b):
            assert cdi_device_part(name) not in (cdi_device_part(a), cdi_device_part(b))


_PATHS = st.sampled_from(["/dev/a", "/dev/b", "/dev/c", "/m/x", "/m/y"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(_PATHS, _PATHS), max_size=3),
            st.lists(st.tuples(_PATHS, _PATHS, st.booleans()), max_size=2),
        ),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.tuples(_PATHS, _PATHS), max_size=2, unique_by=lambda m: m[1]),
)
def test_allocate_never_returns_less_than_it_charges(
    shapes: list[tuple[list[tuple[str, str]], list[tuple[str, str, bool]]]],
    configured: list[tuple[str, str]],
) -> None:
    """Whatever the devices' nodes and mounts: either every node and mount of every charged
    device (and every configured mount) is in the response, each container path once, or
    Allocate refuses."""
    devices = [
        Device(
            id=f"d{index}",
            nodes=tuple(DeviceNode(host, container) for host, container in node_shapes),
            mounts=tuple(DeviceMount(h, c, ro) for h, c, ro in mount_shapes),
        )
        for index, (node_shapes, mount_shapes) in enumerate(shapes)
    ]
    builder = AllocationBuilder(
        resource(mounts=tuple(MountConfig(host, container) for host, container in configured))
    )
    try:
        response = builder.container_response(snapshot(devices), [device.id for device in devices])
    except AllocationError as error:
        assert "claimed twice" in str(error)
        return
    passed_nodes = {(d.host_path, d.container_path) for d in response.devices}
    passed_mounts = {(m.host_path, m.container_path, m.read_only) for m in response.mounts}
    for device in devices:
        assert {(n.host_path, n.container_path) for n in device.nodes} <= passed_nodes
        assert {(m.host_path, m.container_path, m.read_only) for m in device.mounts} <= (
            passed_mounts
        )
    assert {(h, c, True) for h, c in configured} <= passed_mounts
    container_paths = [d.container_path for d in response.devices] + [
        m.container_path for m in response.mounts
    ]
    assert len(container_paths) == len(set(container_paths))


# --------------------------------------------------------------------------- preferred: packed


def test_packed_fills_one_physical_device_first() -> None:
    snap = snapshot([dev("fpga0"), dev("fpga1"), dev("fpga2")], replicas=4)
    # docs/kubelet-contract.md §5, no NUMA info: available = every free healthy ID, nothing
    # allocated yet
    first = preferred_allocation("packed", snap, ids(snap), [], 2)
    assert first == ["fpga0::0", "fpga0::1"]
    free = [i for i in ids(snap) if i not in first]
    # a request one device can hold goes to one device (fpga0 has only 2 free)
    assert preferred_allocation("packed", snap, free, [], 3) == ["fpga1::0", "fpga1::1", "fpga1::2"]
    # one no device can hold: the fullest devices first (fpga0: 2 free, then fpga1)
    assert physical(snap, preferred_allocation("packed", snap, free, [], 5)) == (
        ["fpga0"] * 2 + ["fpga1"] * 3
    )


def test_packed_picks_the_fullest_device_that_fits() -> None:
    snap = snapshot([dev("fpga0"), dev("fpga1"), dev("fpga2")], replicas=4)
    taken = {"fpga0::0", "fpga1::0", "fpga1::1"}  # held by other containers
    free = [i for i in ids(snap) if i not in taken]
    assert physical(snap, preferred_allocation("packed", snap, free, [], 2)) == ["fpga1"] * 2
    assert physical(snap, preferred_allocation("packed", snap, free, [], 3)) == ["fpga0"] * 3
    assert physical(snap, preferred_allocation("packed", snap, free, [], 4)) == ["fpga2"] * 4


def test_packed_uses_natural_replica_order() -> None:
    snap = snapshot([dev("fpga0")], replicas=12)
    assert preferred_allocation("packed", snap, ids(snap)[::-1], [], 3) == [
        "fpga0::0",
        "fpga0::1",
        "fpga0::2",
    ]


def test_packed_adds_as_few_devices_as_possible_to_must_include() -> None:
    snap = snapshot([dev("A"), dev("B"), dev("C")], replicas=4)
    # the container already has A::0 (A is otherwise taken), B has 2 free, C 4
    available = ["A::0", "B::2", "B::3", "C::0", "C::1", "C::2", "C::3"]
    assert preferred_allocation("packed", snap, available, ["A::0"], 4) == [
        "A::0",
        "C::0",
        "C::1",
        "C::2",
    ]
    # the rest fits on no single device: fullest first
    assert physical(snap, preferred_allocation("packed", snap, available, ["A::0"], 7)) == [
        "A",
        "B",
        "B",
        "C",
        "C",
        "C",
        "C",
    ]


def test_small_request_against_a_large_table() -> None:
    """A few IDs out of many (the NUMA-aligned call pattern) take the lookup path."""
    snap = snapshot([dev(f"d{i:02d}") for i in range(50)], replicas=12)
    available = ["d07::11", "d07::2", "d07::10", "d03::5", "nope", "d03::5"]
    assert preferred_allocation("packed", snap, available, [], 3) == [
        "d07::2",
        "d07::10",
        "d07::11",
    ]
    assert preferred_allocation("spread", snap, available, [], 2) == ["d07::2", "d03::5"]
    assert preferred_allocation("numa", snap, available, ["d03::0"], 3) == [
        "d03::0",
        "d03::5",
        "d07::2",
    ]


def test_packed_prefers_devices_and_nodes_of_must_include() -> None:
    snap = snapshot(
        [dev("a0", numa=0), dev("a1", numa=0), dev("b0", numa=1), dev("b1", numa=1)],
        replicas=2,
    )
    # allocatedSoFar (must_include) is on b1 and NUMA node 1: fill b1, then node 1
    result = preferred_allocation("packed", snap, ids(snap), ["b1::0"], 4)
    assert result == ["b1::0", "b1::1", "b0::0", "b0::1"]
    # without must_include: node 0 first, one device at a time
    assert physical(snap, preferred_allocation("packed", snap, ids(snap), [], 3)) == [
        "a0",
        "a0",
        "a1",
    ]


def test_packed_fills_numa_node_before_the_next() -> None:
    snap = snapshot([dev(f"d{i}", numa=i % 2) for i in range(6)])
    result = preferred_allocation("packed", snap, ids(snap), [], 3)
    assert [snap.by_advertised_id[i].device.numa for i in result] == [0, 0, 0]
    result = preferred_allocation("packed", snap, ids(snap), [], 4)
    assert [snap.by_advertised_id[i].device.numa for i in result] == [0, 0, 0, 1]


# --------------------------------------------------------------------------- preferred: spread


def test_spread_balances_across_physical_devices() -> None:
    snap = snapshot([dev("fpga0"), dev("fpga1"), dev("fpga2")], replicas=4)
    assert physical(snap, preferred_allocation("spread", snap, ids(snap), [], 3)) == [
        "fpga0",
        "fpga1",
        "fpga2",
    ]
    assert physical(snap, preferred_allocation("spread", snap, ids(snap), [], 5)) == [
        "fpga0",
        "fpga1",
        "fpga2",
        "fpga0",
        "fpga1",
    ]
    # others hold 3 replicas of fpga0 and 1 of fpga1: the least loaded device first
    free = [i for i in ids(snap) if i not in {"fpga0::0", "fpga0::1", "fpga0::2", "fpga1::0"}]
    assert physical(snap, preferred_allocation("spread", snap, free, [], 2)) == [
        "fpga2",
        "fpga1",
    ]


def test_spread_counts_must_include_as_load() -> None:
    snap = snapshot([dev("fpga0"), dev("fpga1"), dev("fpga2")], replicas=2)
    result = preferred_allocation("spread", snap, ids(snap), ["fpga0::0"], 3)
    assert result[0] == "fpga0::0"
    assert sorted(physical(snap, result)) == ["fpga0", "fpga1", "fpga2"]


# --------------------------------------------------------------------------- preferred: numa


def numa_snapshot() -> Snapshot:
    # node 0: 2 devices, node 1: 4 devices, node 2: 3 devices
    layout = {"n0a": 0, "n0b": 0, "n1a": 1, "n1b": 1, "n1c": 1, "n1d": 1}
    layout |= {"n2a": 2, "n2b": 2, "n2c": 2}
    return snapshot([dev(name, numa=node) for name, node in layout.items()])


def nodes_of(snap: Snapshot, chosen: Sequence[str]) -> list[int | None]:
    return [snap.by_advertised_id[i].device.numa for i in chosen]


def test_numa_one_node_when_possible_best_fit() -> None:
    snap = numa_snapshot()
    assert nodes_of(snap, preferred_allocation("numa", snap, ids(snap), [], 2)) == [0, 0]
    assert nodes_of(snap, preferred_allocation("numa", snap, ids(snap), [], 3)) == [2, 2, 2]
    assert nodes_of(snap, preferred_allocation("numa", snap, ids(snap), [], 4)) == [1] * 4


def test_numa_fewest_nodes_when_none_fits() -> None:
    snap = numa_snapshot()
    # 5: the largest node (4) and the smallest that holds the rest (node 0)
    assert sorted(nodes_of(snap, preferred_allocation("numa", snap, ids(snap), [], 5))) == [
        0,
        1,
        1,
        1,
        1,
    ]
    # 7: 4 + 3, two nodes
    assert set(nodes_of(snap, preferred_allocation("numa", snap, ids(snap), [], 7))) == {1, 2}
    assert len(preferred_allocation("numa", snap, ids(snap), [], 9)) == 9


def test_numa_prefers_node_of_must_include() -> None:
    snap = numa_snapshot()
    # docs/kubelet-contract.md §5 first call: aligned devices already taken are must_include
    result = preferred_allocation("numa", snap, ids(snap), ["n2a"], 3)
    assert result[0] == "n2a" and nodes_of(snap, result) == [2, 2, 2]
    # node 2 cannot hold the rest: it is used up first, then the fewest other nodes
    result = preferred_allocation("numa", snap, ids(snap), ["n2a"], 6)
    assert sorted(nodes_of(snap, result)) == [1, 1, 1, 2, 2, 2]


def test_numa_aligned_subset_call_pattern() -> None:
    snap = numa_snapshot()
    # topology manager chose node 1: available = aligned + allocatedSoFar (nothing yet)
    aligned = [i for i in ids(snap) if snap.by_advertised_id[i].device.numa == 1]
    for policy in POLICIES:
        result = preferred_allocation(policy, snap, aligned, [], 2)
        assert len(result) == 2 and set(result) <= set(aligned)


def test_numa_without_topology_behaves_like_packed() -> None:
    snap = snapshot([dev("a"), dev("b"), dev("c")], replicas=3)
    for size in range(1, 10):
        assert preferred_allocation("numa", snap, ids(snap), [], size) == preferred_allocation(
            "packed", snap, ids(snap), [], size
        )


def test_devices_without_numa_info_are_used_last_by_numa() -> None:
    snap = snapshot([dev("x"), dev("y", numa=0), dev("z", numa=1)])
    assert nodes_of(snap, preferred_allocation("numa", snap, ids(snap), [], 3)) == [0, 1, None]
    assert nodes_of(snap, preferred_allocation("packed", snap, ids(snap), [], 3)) == [0, 1, None]


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("policy", POLICIES)
def test_edge_cases(policy: PreferredPolicy) -> None:
    table = DeviceTable(replicas=2)
    table.publish([dev("a", numa=0), dev("b", numa=1), dev("c")])
    table.set_check_result("c", False)
    snap = table.snapshot
    every = ids(snap)
    assert preferred_allocation(policy, snap, every, [], 0) == []
    assert preferred_allocation(policy, snap, every, [], -5) == []
    assert preferred_allocation(policy, snap, [], [], 3) == []
    assert preferred_allocation(policy, snap, every, ["a::0", "a::0"], 1) == ["a::0"]
    # must_include larger than size: all of must_include, nothing else
    assert preferred_allocation(policy, snap, every, ["b::1", "a::0"], 1) == ["b::1", "a::0"]
    # unknown and unhealthy IDs are never proposed; must_include is kept whatever it is
    result = preferred_allocation(policy, snap, ["zz", "c::0", "a::1", "a::1"], ["ghost"], 5)
    assert result == ["ghost", "a::1"]
    # size beyond what is usable: every usable ID, no error
    result = preferred_allocation(policy, snap, every + every, [], 100)
    assert sorted(result) == ["a::0", "a::1", "b::0", "b::1"]
    # must_include that is not in available
    result = preferred_allocation(policy, snap, ["b::0"], ["a::0"], 2)
    assert result == ["a::0", "b::0"]


# --------------------------------------------------------------------------- properties


@st.composite
def requests(draw: st.DrawFn) -> tuple[PreferredPolicy, Snapshot, list[str], list[str], int]:
    replicas = draw(st.integers(1, 4))
    count = draw(st.integers(0, 8))
    devices = [
        dev(
            f"d{i}",
            numa=draw(st.none() | st.integers(0, 3)),
            healthy=draw(st.booleans() | st.just(True)),
        )
        for i in range(count)
    ]
    snap = snapshot(devices, replicas)
    known = ids(snap)
    pool = [*known, "unknown", "d99::0", "d0::99"]
    available = draw(st.lists(st.sampled_from(pool), max_size=40))
    must_include = draw(st.lists(st.sampled_from(pool), max_size=4))
    size = draw(st.integers(-2, 40))
    policy = draw(st.sampled_from(POLICIES))
    return policy, snap, available, must_include, size


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.randoms(use_true_random=False))
def test_preferred_allocation_is_always_a_valid_subset(
    request: tuple[PreferredPolicy, Snapshot, list[str], list[str], int],
    rng: random.Random,
) -> None:
    policy, snap, available, must_include, size = request
    result = preferred_allocation(policy, snap, available, must_include, size)
    must = list(dict.fromkeys(must_include))
    usable = {
        i
        for i in available
        if i not in must and i in snap.by_advertised_id and snap.by_advertised_id[i].healthy
    }
    assert result[: len(must)] == must
    assert len(result) == len(set(result))
    assert set(result[len(must) :]) <= usable
    assert len(result) == max(len(must), min(size, len(must) + len(usable)))
    # deterministic, whatever the order and duplicates of the lists
    shuffled = available[:] + available[: len(available) // 2]
    rng.shuffle(shuffled)
    assert preferred_allocation(policy, snap, shuffled, must_include + must, size) == result


@settings(max_examples=200, deadline=None)
@given(requests())
def test_numa_policy_stays_on_one_node_when_one_fits(
    request: tuple[PreferredPolicy, Snapshot, list[str], list[str], int],
) -> None:
    _, snap, available, _, size = request
    result = preferred_allocation("numa", snap, available, [], size)
    per_node: dict[int, int] = {}
    for i in set(available):
        entry = snap.by_advertised_id.get(i)
        if entry is not None and entry.healthy and entry.device.numa is not None:
            per_node[entry.device.numa] = per_node.get(entry.device.numa, 0) + 1
    if size > 0 and any(n >= size for n in per_node.values()):
        assert len({snap.by_advertised_id[i].device.numa for i in result}) == 1


# --------------------------------------------------------------------------- lists (issue 17)


def test_per_device_values_holding_the_separator_are_not_joined() -> None:
    """A USB serial `A,B` joined with another stick's serial `B` would read as three
    serials, one of them another pod's: such a list is refused; alone it passes as it is."""
    devices = [dev("usb0", env={"SERIAL": "A,B"}), dev("usb1", env={"SERIAL": "B"})]
    builder = AllocationBuilder(resource())
    with pytest.raises(AllocationError, match=r"env SERIAL of device usb0 is 'A,B'"):
        builder.container_response(snapshot(devices), ["usb0", "usb1"])
    alone = builder.container_response(snapshot(devices), ["usb0"])
    assert alone.envs["SERIAL"] == "A,B"
    # a configured key wins, so nothing is joined
    configured = AllocationBuilder(resource(env={"SERIAL": "{ids}"}))
    response = configured.container_response(snapshot(devices), ["usb0", "usb1"])
    assert response.envs["SERIAL"] == "usb0,usb1"
    same = [dev("usb0", env={"MODE": "a,b"}), dev("usb1", env={"MODE": "a,b"})]
    assert builder.container_response(snapshot(same), ["usb0", "usb1"]).envs["MODE"] == "a,b"


def _extras(**fields: object) -> ContainerExtras:
    return ContainerExtras(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extras", "claimed"),
    [
        # a mount over a device node's container path
        (_extras(mounts=(DeviceMount("/srv/x", "/dev/fpga0", True),)), "/dev/fpga0"),
        # a node over a configured mount's path
        (_extras(nodes=(DeviceNode("/dev/other", "/tools"),)), "/tools"),
        # a node over a device's own mount
        (_extras(nodes=(DeviceNode("/dev/other", "/state"),)), "/state"),
        # another node on a device node's path
        (_extras(nodes=(DeviceNode("/dev/other", "/dev/fpga0"),)), "/dev/fpga0"),
        # another mount on a configured mount's path
        (_extras(mounts=(DeviceMount("/srv/y", "/tools", True),)), "/tools"),
    ],
)
def test_allocate_command_output_cannot_take_a_claimed_container_path(
    extras: ContainerExtras, claimed: str
) -> None:
    devices = [dev("fpga0", mounts=(DeviceMount("/var/fpga0", "/state", False),))]
    builder = AllocationBuilder(resource(mounts=(MountConfig("/opt/tools", "/tools"),)))
    with pytest.raises(AllocationError) as caught:
        builder.container_response(snapshot(devices), ["fpga0"], extras)
    message = str(caught.value)
    assert f"container path {claimed} is claimed twice" in message
    assert "by allocate.command" in message
    assert "by fpga0" in message or "by allocate.mounts" in message


def test_allocate_command_output_identical_to_what_is_there_is_passed_once() -> None:
    devices = [dev("fpga0")]
    builder = AllocationBuilder(resource(mounts=(MountConfig("/opt/tools", "/tools"),)))
    extras = _extras(
        env={"SESSION": "s1"},
        nodes=(DeviceNode("/dev/fpga0", "/dev/fpga0"), DeviceNode("/dev/mgr", "/dev/mgr")),
        mounts=(DeviceMount("/opt/tools", "/tools", True), DeviceMount("/run/s", "/s", False)),
        cdi_devices=("vendor.example/fpga-mgr=mgr0",),
    )
    response = builder.container_response(snapshot(devices), ["fpga0"], extras)
    assert [(d.host_path, d.container_path) for d in response.devices] == [
        ("/dev/fpga0", "/dev/fpga0"),
        ("/dev/mgr", "/dev/mgr"),
    ]
    assert [(m.host_path, m.container_path) for m in response.mounts] == [
        ("/opt/tools", "/tools"),
        ("/run/s", "/s"),
    ]
    assert response.envs["SESSION"] == "s1"
    assert [c.name for c in response.cdi_devices] == ["vendor.example/fpga-mgr=mgr0"]


_RESOURCES = st.from_regex(EXTENDED_RESOURCE_NAME_PATTERN, fullmatch=True).filter(
    is_extended_resource_name
)


@settings(max_examples=300, deadline=None)
@given(_RESOURCES, st.text(min_size=1, max_size=12), _RESOURCES, st.text(min_size=1, max_size=12))
def test_cdi_names_are_unique_per_resource_and_device(
    resource_a: str, device_a: str, resource_b: str, device_b: str
) -> None:
    """Issue 17: a CDI name stands for one (resource, device) by construction, so a reload
    that gives a kind to another resource, or renames a resource, cannot make a name a pod
    holds (the kubelet reuses it at a container restart) resolve to another resource's
    device with the same ID."""
    name_a = cdi_device_name(resource_a, device_a)
    assert CDI_NAME.fullmatch(name_a), name_a
    if (resource_a, device_a) != (resource_b, device_b):
        assert name_a != cdi_device_name(resource_b, device_b)


def test_one_device_id_under_two_resources_gets_two_cdi_names() -> None:
    assert cdi_device_name("example.com/a", "fpga0") == "example.com_a:fpga0"
    assert cdi_device_name("example.com/b", "fpga0") == "example.com_b:fpga0"
    snap = snapshot([dev("fpga0")])
    names = {
        c.name
        for name in ("example.com/a", "example.com/b")
        for c in AllocationBuilder(
            dataclasses.replace(resource(cdi=CdiConfig(kind=KIND)), name=name)
        )
        .container_response(snap, ["fpga0"])
        .cdi_devices
    }
    assert names == {f"{KIND}=example.com_a:fpga0", f"{KIND}=example.com_b:fpga0"}
