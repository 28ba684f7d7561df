"""Devices of one resource at one container path (hostile22 F8): the rule (`container_paths`),
shared by Allocate's refusal and GetPreferredAllocation's steering, when a resource announces
GetPreferredAllocation for it (`PreferredNeed`), and what `kdp-host check` says."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host.allocation import AllocationBuilder, AllocationError
from kdp_host.check import CheckRow
from kdp_host.check_paths import numa_pair_warnings, shared_path_warnings
from kdp_host.config import (
    AllocateConfig,
    ConfigError,
    GlobDriverConfig,
    MountConfig,
    PreferredPolicy,
    ResourceConfig,
    ShellDriverConfig,
    SysfsDriverConfig,
    UsbMatchConfig,
    load_config_text,
)
from kdp_host.container_path_lists import SharedPathIndex, may_share_paths, shared_paths
from kdp_host.container_paths import (
    PAIRWISE_AT_MOST,
    OwnCollisions,
    PathClaims,
    collides,
    device_placements,
    nests,
)
from kdp_host.device_changes import Derived
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceMount, DeviceNode, Snapshot
from kdp_host.preferred import preferred_allocation
from kdp_host.preferred_need import PreferredNeed
from kdp_host.rules import below

USB = "vendor.example/usb"
POLICIES: tuple[PreferredPolicy, ...] = ("packed", "spread", "numa", "none")


def usb(bus: str, name: str, numa: int | None = None, *, shared: bool = False) -> Device:
    """A device found at /dev/bus/usb/<bus>/<name>, at /dev/usb/<name> in the container
    (`shared`: also the node every device passes, /dev/vfio/vfio)."""
    nodes = [DeviceNode(f"/dev/bus/usb/{bus}/{name}", f"/dev/usb/{name}")]
    if shared:
        nodes.append(DeviceNode("/dev/vfio/vfio", "/dev/vfio/vfio", shared=True))
    return Device(id=f"{bus}-{name}", nodes=tuple(nodes), numa=numa)


def snapshot(devices: Sequence[Device], replicas: int = 1) -> Snapshot:
    table = DeviceTable(replicas=replicas)
    table.publish(devices)
    return table.snapshot


def glob(
    *paths: str, container_path: str | None = "/dev/usb/{name}", **more: object
) -> ResourceConfig:
    driver = GlobDriverConfig(paths=paths, container_path=container_path)
    return ResourceConfig(name=USB, driver=driver, **more)  # type: ignore[arg-type]


def builder() -> AllocationBuilder:
    return AllocationBuilder(glob("/dev/bus/usb/*/*", allocate=AllocateConfig()))


def served(snap: Snapshot, chosen: Sequence[str]) -> bool:
    """Whether Allocate serves the set (the rule the steering follows)."""
    try:
        builder().container_response(snap, chosen)
    except AllocationError:
        return False
    return True


F8 = [usb("a", "x"), usb("b", "x"), usb("c", "z")]


@pytest.mark.parametrize("policy", POLICIES)
def test_the_answer_steers_clear_of_two_devices_at_one_container_path(
    policy: PreferredPolicy,
) -> None:
    snap = snapshot(F8)
    offered = ["a-x", "b-x", "c-z"]
    plain = preferred_allocation(policy, snap, offered, [], 2)
    assert plain == ["a-x", "b-x"] and not served(snap, plain)  # (the policies' own order)
    steered = preferred_allocation(policy, snap, offered, [], 2, steer=True)
    assert sorted(steered) == ["a-x", "c-z"] and served(snap, steered)
    # The kubelet gave the container b-x already (an init container's): c-z, never a-x.
    assert preferred_allocation(policy, snap, offered, ["b-x"], 2, steer=True) == ["b-x", "c-z"]
    # No free set without a collision: fewer IDs (the kubelet picks the rest, Allocate
    # refuses that pod, as it must).
    assert preferred_allocation(policy, snap, ["a-x", "b-x"], [], 2, steer=True) == ["a-x"]


def test_steering_keeps_replicas_and_identical_shared_nodes_together() -> None:
    """Replicas of one device and a node every device passes place the same thing: no
    collision. Under `packed` two replicas of a-x fill the container."""
    snap = snapshot([usb("a", "x", shared=True), usb("b", "x", shared=True)], replicas=2)
    offered = [e.id for e in snap.advertised]
    chosen = preferred_allocation("packed", snap, offered, [], 2, steer=True)
    assert chosen == ["a-x::0", "a-x::1"] and served(snap, chosen)
    assert preferred_allocation("spread", snap, offered, [], 2, steer=True) == ["a-x::0", "a-x::1"]


def test_steering_keeps_the_policy_among_what_fits() -> None:
    """`numa`: one node holds the request once the device that collides with the chosen
    one is out of the running."""
    snap = snapshot([usb("a", "x", 0), usb("a", "y", 1), usb("b", "x", 1), usb("b", "z", 1)])
    offered = [e.id for e in snap.advertised]
    chosen = preferred_allocation("numa", snap, offered, ["a-y"], 3, steer=True)
    assert chosen == ["a-y", "b-x", "b-z"] and served(snap, chosen)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("vwxyz")), unique=True, max_size=12),
    st.integers(1, 6),
    st.sampled_from(POLICIES),
)
def test_a_steered_answer_is_served_and_as_long_as_a_set_without_collisions(
    found: list[tuple[str, str]], size: int, policy: PreferredPolicy
) -> None:
    """One node per device: a set without collisions holds one device per name, so the
    answer has min(size, names) IDs, and Allocate serves it."""
    snap = snapshot([usb(bus, name, numa=ord(bus) % 2) for bus, name in found])
    offered = [e.id for e in snap.advertised]
    chosen = preferred_allocation(policy, snap, offered, [], size, steer=True)
    assert len(chosen) == min(size, len({name for _, name in found}))
    assert not chosen or served(snap, chosen)


def test_allocate_refuses_by_the_same_rule() -> None:
    snap = snapshot(F8)
    with pytest.raises(AllocationError, match="/dev/usb/x is claimed twice, by a-x"):
        builder().container_response(snap, ["a-x", "b-x"])
    node_over_mount = Device(
        id="m", nodes=(), mounts=(DeviceMount("/srv/m", "/dev/usb/x", read_only=True),)
    )
    snap = snapshot([*F8, node_over_mount])
    with pytest.raises(AllocationError, match="mount container path /dev/usb/x"):
        builder().container_response(snap, ["a-x", "m"])
    assert preferred_allocation("packed", snap, ["a-x", "m", "c-z"], ["m"], 2, steer=True) == [
        "m",
        "c-z",
    ]


def test_shared_paths_names_each_device_with_the_first_at_its_container_path() -> None:
    found = list(shared_paths([*F8, usb("d", "x"), usb("d", "z")]))
    assert [(s.container_path, s.first, s.second) for s in found] == [
        ("/dev/usb/x", "a-x", "b-x"),
        ("/dev/usb/x", "a-x", "d-x"),
        ("/dev/usb/z", "c-z", "d-z"),
    ]
    assert found[0].first_host == "/dev/bus/usb/a/x"
    assert found[0].second_host == "/dev/bus/usb/b/x"
    assert list(shared_paths([usb("a", "x", shared=True), usb("a", "y", shared=True)])) == []


def mounted(bus: str, name: str, read_only: bool) -> Device:
    """A device that mounts /srv/<bus>/<name> at /dev/usb/<name>."""
    mount = DeviceMount(f"/srv/{bus}/{name}", f"/dev/usb/{name}", read_only=read_only)
    return Device(id=f"{bus}-{name}", nodes=(), mounts=(mount,))


def below_x(bus: str, name: str, node: bool) -> Device:
    """A device at /dev/usb/x/<name>: below what a device named x places at /dev/usb/x."""
    inside = f"/dev/usb/x/{name}"
    if node:
        return Device(id=f"{bus}-{name}", nodes=(DeviceNode(f"/srv/{bus}/{name}", inside),))
    return Device(id=f"{bus}-{name}", nodes=(), mounts=(DeviceMount(f"/srv/{bus}", inside),))


KINDS = {
    "node": lambda bus, name: usb(bus, name),
    "node+vfio": lambda bus, name: usb(bus, name, shared=True),
    "mount": lambda bus, name: mounted(bus, name, True),
    "mount rw": lambda bus, name: mounted(bus, name, False),
    "node below x": lambda bus, name: below_x(bus, name, True),
    "mount below x": lambda bus, name: below_x(bus, name, False),
}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from("abc"),
                    st.sampled_from("xyz"),
                    st.sampled_from([None, *KINDS]),
                ),
                max_size=4,
            ),
            st.booleans(),
        ),
        max_size=12,
    )
)
def test_the_index_follows_lists_by_what_changed_as_a_walk_would(
    steps: list[tuple[list[tuple[str, str, str | None]], bool]],
) -> None:
    """Each step adds, replaces (another kind: a mount, read-only or not, a node with the
    shared /dev/vfio/vfio, either below /dev/usb/x) or removes (None) devices, in a list
    made from the last one (`Derived`: the index takes what changed) or a plain one (it
    walks); the devices it names as colliding are those a walk finds at a shared path (none
    named while two entries nest)."""
    index, current = SharedPathIndex(), {}
    listed: dict[str, Device] = {}
    for changes, derived in steps:
        for bus, name, kind in changes:
            if kind is None:
                listed.pop(f"{bus}-{name}", None)
            else:
                listed[f"{bus}-{name}"] = KINDS[kind](bus, name)
        ids = {f"{bus}-{name}" for bus, name, _ in changes}
        current = Derived(current, ids, listed) if derived else dict(listed)
        walked = next(shared_paths(current.values()), None) is not None
        assert index.update(current) == walked
        assert index.colliding() == colliding(current.values())


def colliding(devices: Iterable[Device]) -> set[str] | None:
    """The devices at a container path where two different things are placed (a walk);
    None where two entries nest."""
    entries = [(path, placed) for device in devices for path, placed in device_placements(device)]
    if any(below(q, p) and nests(a, b) for p, a in entries for q, b in entries):
        return None
    at: dict[str, dict[object, set[str]]] = {}
    for device in devices:
        for path, placed in device_placements(device):
            at.setdefault(path, {}).setdefault(placed, set()).add(device.id)
    return {i for placed in at.values() if len(placed) > 1 for ids in placed.values() for i in ids}


def test_which_configs_may_share_a_container_path() -> None:
    assert may_share_paths(glob("/dev/bus/usb/*/*"))
    assert may_share_paths(glob("/dev/a/*", "/dev/b/*"))
    assert not may_share_paths(glob("/dev/serial/by-id/usb-*", "/dev/serial/by-id/ftdi-*"))
    assert not may_share_paths(glob("/dev/bus/usb/*/*", container_path="/dev/usb{path}"))
    assert not may_share_paths(glob("/dev/bus/usb/*/*", container_path=None))
    shell = ResourceConfig(name=USB, driver=ShellDriverConfig(command=("probe",)))
    assert may_share_paths(shell)
    sysfs = SysfsDriverConfig(usb=(UsbMatchConfig(vendor="0403"),))
    assert not may_share_paths(dataclasses.replace(shell, driver=sysfs))


@pytest.mark.parametrize("policy", POLICIES)
def test_the_option_is_announced_by_the_config_and_steers_while_the_list_shares_a_path(
    policy: PreferredPolicy,
) -> None:
    """hostile25 F1: the option depends on the config alone (no list change calls for a
    registration); the answers steer only while a pair is listed."""
    table = DeviceTable()
    need = PreferredNeed(glob("/dev/bus/usb/*/*", preferred=policy), table)
    table.publish([usb("a", "x"), usb("c", "z")])
    assert need.announced and not need.shared() and not need.policy_matters(table.snapshot)
    table.publish(F8)
    assert need.announced and need.shared()
    # A config that rules it out never looks (the same list: nothing found), nor announces.
    ruled_out = PreferredNeed(glob("/dev/bus/usb/*/*", container_path=None), table)
    assert not ruled_out.shared() and not ruled_out.announced


def test_the_resource_s_need_follows_every_list_at_the_cost_of_what_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lists that change nothing the kubelet sees (a probe's runs) reach no snapshot
    listener, and only the last is held: followed through `DeviceTable.follow_lists`, a
    change after twenty of them costs its device, not a walk of the list."""
    counted: list[str] = []
    count = SharedPathIndex._count

    def counting(index: SharedPathIndex, device: Device, step: int) -> None:
        counted.append(device.id)
        count(index, device, step)

    monkeypatch.setattr(SharedPathIndex, "_count", counting)
    table = DeviceTable()
    need = PreferredNeed(glob("/dev/bus/usb/*/*"), table)
    table.follow_lists(need.follow)
    listed = Derived(None, (), {d.id: d for d in [usb("a", "x"), usb("c", "z"), usb("c", "y")]})
    table.publish(listed)
    assert not need.shared()
    for _ in range(20):
        listed = Derived(listed, (), listed)
        table.publish(listed)
    assert not need.shared() and counted == ["a-x", "c-z", "c-y"]
    listed = Derived(listed, ["b-x"], {**listed, "b-x": usb("b", "x")})
    table.publish(listed)
    assert need.shared() and counted[3:] == ["b-x"]


def test_check_names_the_devices_that_share_a_container_path() -> None:
    rows = [CheckRow(USB, "glob", "", device=d) for d in F8]
    rows.append(CheckRow("other/r", "glob", "", device=usb("a", "x")))
    [line] = shared_path_warnings(rows)
    assert line.startswith(
        "warning: vendor.example/usb: devices a-x (/dev/bus/usb/a/x) and b-x "
        "(/dev/bus/usb/b/x) share container path /dev/usb/x:"
    )
    assert "never both in one container" in line
    assert numa_pair_warnings(rows) == []  # (no NUMA node)


def test_check_names_colliding_devices_on_one_numa_node() -> None:
    """hostile25 F2: the pairs of one node, by the same rule (a-x and b-x on node 0; c-x
    collides with them but sits on node 1; then d-x on node 1 too: a pair with c-x; and a
    node below c-z's on node 0: a pair that nests)."""
    devices = [usb("a", "x", 0), usb("b", "x", 0), usb("c", "x", 1), usb("c", "z", 0)]
    rows = [CheckRow(USB, "glob", "", device=d) for d in devices]
    [zero] = numa_pair_warnings(rows)
    assert zero.startswith(
        "warning: vendor.example/usb: devices a-x (/dev/bus/usb/a/x) and b-x "
        "(/dev/bus/usb/b/x) share container path /dev/usb/x and sit on NUMA node 0:"
    )
    rows.append(CheckRow(USB, "glob", "", device=usb("d", "x", 1)))
    assert [line.split(" share ")[0] for line in numa_pair_warnings(rows)] == [
        f"warning: {USB}: devices a-x (/dev/bus/usb/a/x) and b-x (/dev/bus/usb/b/x)",
        f"warning: {USB}: devices c-x (/dev/bus/usb/c/x) and d-x (/dev/bus/usb/d/x)",
    ]
    inside = Device(id="e-y", nodes=(DeviceNode("/dev/bus/usb/e/y", "/dev/usb/z/y"),), numa=0)
    rows.append(CheckRow(USB, "glob", "", device=inside))  # (below c-z's node, on node 0)
    assert numa_pair_warnings(rows)[1].startswith(
        f"warning: {USB}: devices c-z (/dev/bus/usb/c/z) at /dev/usb/z and e-y "
        "(/dev/bus/usb/e/y) at /dev/usb/z/y nest and sit on NUMA node 0:"
    )


def test_a_device_that_collides_with_itself_or_the_config_s_mounts_is_named() -> None:
    """hostile25 F8: the one rule (`PathClaims`) over a device's own nodes and mounts, and
    the config's `allocate.mounts`: such a device no container can be given (the reporter
    leaves it out, `path_collision`); the same node or mount twice is no collision."""
    own = OwnCollisions()
    node = DeviceNode("/srv/a", "/dev/x")
    assert own.collision(Device(id="one", nodes=(node,))) is None
    twice = Device(id="twice", nodes=(node, node))
    assert own.collision(twice) is None
    with_mount = Device(id="d1", nodes=(node,), mounts=(DeviceMount("/srv/mnt", "/dev/x"),))
    why = own.collision(with_mount)
    assert why is not None and "by d1 (host path /srv/a) and by d1 (host path /srv/mnt)" in why
    mounts = AllocateConfig(mounts=(MountConfig(host_path="/srv/mnt", container_path="/dev/x"),))
    configured = OwnCollisions.of(glob("/dev/bus/usb/*/*", allocate=mounts))
    why = configured.collision(Device(id="one", nodes=(node,)))
    assert why is not None and "by allocate.mounts (host path /srv/mnt)" in why
    assert configured.collision(usb("a", "x")) is None  # (at /dev/usb/x)


def node_device(device_id: str, *container_paths: str) -> Device:
    nodes = tuple(DeviceNode(f"/srv/{device_id}{p}", p) for p in container_paths)
    return Device(id=device_id, nodes=nodes)


F3 = [
    node_device("d1", "/dev/x", "/dev/y"),
    node_device("d2", "/dev/x"),
    node_device("d3", "/dev/y"),
]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_fitting_set_is_found_where_the_policy_s_first_pick_fits_nothing(
    policy: PreferredPolicy,
) -> None:
    """hostile25 F3: the policy picks d1 first, which collides with every device left; the
    answer was [d1] (the kubelet added d2 or d3, Allocate refused every pod) though {d2, d3}
    fits. A bounded search finds it."""
    snap = snapshot(F3)
    chosen = preferred_allocation(policy, snap, ["d1", "d2", "d3"], [], 2, steer=True)
    assert sorted(chosen) == ["d2", "d3"]
    # what the container has is kept: with d2, only d3 fits (not d1)
    assert preferred_allocation(policy, snap, ["d1", "d3"], ["d2"], 2, steer=True) == ["d2", "d3"]
    # a one-device request keeps the policy's own first pick
    assert len(preferred_allocation(policy, snap, ["d1", "d2", "d3"], [], 1, steer=True)) == 1


def fits_together(devices: Sequence[Device]) -> bool:
    claims = PathClaims()
    for device in devices:
        if not claims.fits(device):
            return False
        claims.add(device)
    return True


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sets(st.sampled_from("wxyz"), min_size=1, max_size=3), min_size=1, max_size=7),
    st.integers(1, 4),
    st.sampled_from(POLICIES),
)
def test_a_steered_answer_is_full_whenever_some_set_fits(
    shapes: list[set[str]], size: int, policy: PreferredPolicy
) -> None:
    """Devices of several nodes at partly shared container paths: the answer has `size` IDs
    whenever some `size` devices fit side by side (found by brute force), and is served."""
    devices = [
        node_device(f"d{i}", *(f"/dev/{p}" for p in sorted(s))) for i, s in enumerate(shapes)
    ]
    snap = snapshot(devices)
    chosen = preferred_allocation(policy, snap, [d.id for d in devices], [], size, steer=True)
    possible = any(
        fits_together(group) for group in itertools.combinations(devices, min(size, len(devices)))
    )
    if possible:
        assert len(chosen) == min(size, len(devices))
    by_id = {d.id: d for d in devices}
    assert fits_together([by_id[i] for i in chosen])


def test_paths_that_nest_collide_unless_both_are_mounts() -> None:
    """hostile27 F2, the one rule (`container_paths.nests`): a node below a mount (the runtime
    mounts first, then makes the node inside the mount's host directory), anything below a
    node; mounts nested in mounts stay allowed (the runtime orders them by depth), and a
    path that only starts with another's text is not below it."""
    node, mount = "/srv/node", ("/srv/dir", False)
    for outer, inner, expected in [
        (mount, node, True),
        (node, node, True),
        (node, mount, True),
        (mount, ("/srv/other", True), False),
    ]:
        for first, second in [
            (("/dev/x", outer), ("/dev/x/y/n", inner)),
            (("/dev/x/y/n", inner), ("/dev/x", outer)),
        ]:
            claims = PathClaims()
            assert claims.claim("d1", *first)
            clash = claims.clash(*second)
            assert (clash is not None) == expected, (first, second)
            assert collides(*first, *second) == expected
            if clash is not None:
                assert (clash.owner, clash.path) == ("d1", first[0])
                why = clash.describe("d2", *second)
                assert "container path /dev/x/y/n of " in why and "is below /dev/x, " in why
    claims = PathClaims()
    claims.claim("d1", "/dev/x", mount)
    assert claims.clash("/dev/xy", node) is None and claims.clash("/dev/x", mount) is None
    trial = claims.copy()
    assert trial.claim("d2", "/dev/z/n", node)
    trial.unclaim("/dev/z/n")
    assert trial.clash("/dev/z", mount) is None
    assert claims.clash("/dev/z/n", node) is None and trial.clash("/dev/x/n", node) is not None


def test_a_device_or_a_pair_whose_paths_nest_is_named() -> None:
    """A device whose own node is below its own or the config's mount, or below its own node,
    is never listed (`OwnCollisions`); two devices that nest are a pair `check` names."""
    below = DeviceNode("/srv/a", "/dev/x/n")
    own = OwnCollisions()
    why = own.collision(Device(id="d1", nodes=(below,), mounts=(DeviceMount("/srv/m", "/dev/x"),)))
    assert (
        why is not None
        and "container path /dev/x/n of d1 (host path /srv/a) is below /dev/x, a mount of d1" in why
    )
    why = own.collision(Device(id="d1", nodes=(DeviceNode("/srv/b", "/dev/x"), below)))
    assert why is not None and "nothing can be placed below a device node" in why
    mounts = AllocateConfig(mounts=(MountConfig(host_path="/srv/mnt", container_path="/dev"),))
    configured = OwnCollisions.of(glob("/dev/bus/usb/*/*", allocate=mounts))
    why = configured.collision(Device(id="one", nodes=(below,)))
    assert why is not None and "is below /dev, a mount of allocate.mounts" in why
    nested_mount = Device(id="m", nodes=(), mounts=(DeviceMount("/srv/m", "/dev/x/n/sub"),))
    assert OwnCollisions().collision(nested_mount) is None
    pair = [node_device("d1", "/dev/x"), mounted_at("d2", "/dev/x/sub")]
    [found] = shared_paths(pair)
    assert (found.first, found.first_path, found.second, found.container_path) == (
        "d1",
        "/dev/x",
        "d2",
        "/dev/x/sub",
    )
    assert SharedPathIndex().update({d.id: d for d in pair})
    rows = [CheckRow(USB, "shell", "", device=d) for d in pair]
    [line] = shared_path_warnings(rows)
    assert line.startswith(
        "warning: vendor.example/usb: devices d1 (/srv/d1/dev/x) at /dev/x and d2 (/srv/m) at "
        "/dev/x/sub nest: never both in one container"
    )
    assert not SharedPathIndex().update(
        {d.id: d for d in [mounted_at("m1", "/dev/x"), mounted_at("m2", "/dev/x/sub")]}
    )


def mounted_at(device_id: str, container_path: str) -> Device:
    return Device(id=device_id, nodes=(), mounts=(DeviceMount("/srv/m", container_path),))


def test_a_mount_at_or_above_every_node_of_a_glob_is_refused_at_load() -> None:
    """hostile27 F2: `allocate.mounts` at /dev/fpga (or /dev) with nodes at /dev/fpga/{name}:
    known from the config, refused at load; a mount beside the nodes, or below their
    directory (it collides only with a device of that name: left out at listing), loads."""

    def config(container_path: str | None, mount_at: str) -> str:
        template = f', containerPath: "{container_path}"' if container_path else ""
        return (
            "resources:\n  - name: example.com/a\n"
            f'    glob: {{paths: ["/tmp/r/dev/fpga/*"]{template}}}\n'
            f"    allocate: {{mounts: [{{hostPath: /tmp, containerPath: {mount_at}}}]}}\n"
        )

    for template, mount_at in [
        ("/dev/fpga/{name}", "/dev/fpga"),
        ("/dev/fpga/{name}", "/dev"),
        (None, "/tmp/r/dev"),
    ]:
        with pytest.raises(ConfigError, match=r"mounts\[0\]\.containerPath: is at or above /"):
            load_config_text(config(template, mount_at))
    for template, mount_at in [
        ("/dev/fpga/{name}", "/dev/fpga/sub"),
        ("/dev/fpga/{name}", "/etc/x"),
        ("/dev/fpga{name}", "/dev/fpga"),
    ]:
        load_config_text(config(template, mount_at))


NESTED_PATHS = ["/", "/a", "/a/b", "/a/b/c", "/a/c", "/ab", "/a/bc"]
PLACED = ["/h/1", "/h/2", ("/m/1", True), ("/m/1", False), ("/m/2", True)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NESTED_PATHS), st.sampled_from(PLACED)), max_size=10))
def test_claims_find_what_the_pairwise_rule_finds(entries: list) -> None:
    """`PathClaims` (indexed: a container's many entries) and `collides` (pair by pair: a
    device's few, `OwnCollisions`) are one rule; a trial's claims undone leave none behind."""
    claims, claimed = PathClaims(), {}
    for path, placed in entries:
        clash = claims.clash(path, placed)
        assert (clash is not None) == any(
            collides(path, placed, other_path, other) for other_path, other in claimed.items()
        )
        if clash is not None:
            assert collides(path, placed, clash.path, claimed[clash.path])
            continue
        trial = claims.copy()
        if trial.claim("trial", path, placed):
            trial.unclaim(path)
        claims = trial
        if claims.claim("d", path, placed):
            claimed[path] = placed


def test_a_device_of_many_entries_is_checked_by_claims_as_by_pairs() -> None:
    many = [DeviceNode(f"/srv/{n}", f"/dev/n{n}") for n in range(PAIRWISE_AT_MOST)]
    fine = Device(id="many", nodes=tuple(many))
    assert OwnCollisions().collision(fine) is None
    nested = Device(id="many", nodes=(*many, DeviceNode("/srv/x", "/dev/n0/x")))
    why = OwnCollisions().collision(nested)
    assert why is not None and "container path /dev/n0/x of many" in why
