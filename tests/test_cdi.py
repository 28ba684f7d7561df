"""The CDI spec file: content against the CDI spec's rules, atomic writes, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host import atomic_files
from kdp_host.allocation import AllocationBuilder, cdi_device_name
from kdp_host.atomic_files import write_atomic
from kdp_host.cdi import CLASH_REASON, UNOWNED_REASON, CdiSpecWriter
from kdp_host.cdi_rules import cdi_kind_problem
from kdp_host.cdi_spec import build_spec, minimum_cdi_version, render_spec_file
from kdp_host.config import (
    AllocateConfig,
    CdiConfig,
    GlobDriverConfig,
    MountConfig,
    ResourceConfig,
)
from kdp_host.config.outputs import owner_path, spec_file_name, spec_path
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceMount, DeviceNode, Snapshot
from kdp_host.file_lease import read_owner
from kdp_host.inotify_watch import make_watcher
from kdp_host.k8s_names import extended_resource_name_problem
from kdp_host.logs import get_logger

from .cdi_spec import (
    missing_schema_reason,
    official_cdi_validator,
    read_spec_file,
    validate_cdi_spec,
)
from .conftest import wait_until

RESOURCE = "vendor.example/fpga"
KIND = "vendor.example/fpga"


def own(device_id: str) -> str:
    """The CDI device name of a device of RESOURCE (`<resource>:<device>`, issue 17)."""
    return cdi_device_name(RESOURCE, device_id)


# --------------------------------------------------------------------------- helpers


def resource(
    spec_dir: Path | None = None,
    *,
    kind: str = KIND,
    env: dict[str, str] | None = None,
    mounts: tuple[MountConfig, ...] = (),
    replicas: int = 1,
    also_device_specs: bool = False,
    permissions: str = "rw",
) -> ResourceConfig:
    return ResourceConfig(
        name=RESOURCE,
        driver=GlobDriverConfig(paths=("/dev/fpga*",)),
        allocate=AllocateConfig(
            env=env or {},
            mounts=mounts,
            permissions=permissions,
            cdi=CdiConfig(
                kind=kind,
                also_device_specs=also_device_specs,
                spec_dir=str(spec_dir) if spec_dir is not None else None,
            ),
        ),
        replicas=replicas,
    )


def dev(device_id: str, **extra: Any) -> Device:
    nodes = extra.pop("nodes", (DeviceNode(f"/dev/{device_id}", f"/dev/{device_id}"),))
    return Device(id=device_id, nodes=nodes, **extra)


def snapshot(devices: Sequence[Device], replicas: int = 1) -> Snapshot:
    table = DeviceTable(replicas=replicas)
    table.publish(devices)
    return table.snapshot


def cdi_names(response: Any) -> list[str]:
    return [c.name.split("=", 1)[1] for c in response.cdi_devices]


# --------------------------------------------------------------------------- content


def test_spec_content() -> None:
    config = resource(
        env={"DEVS": "{ids}", "N": "{count}", "MODE": "fast", "RES": "{resource}"},
        mounts=(MountConfig("/opt/fw", "/fw"), MountConfig("/var/state", "/state", False)),
        permissions="rwm",
    )
    devices = [
        dev("fpga0", numa=0, env={"SLOT": "0", "VENDOR": "acme"}),
        dev(
            "fpga1",
            numa=1,
            env={"SLOT": "1", "VENDOR": "acme"},
            mounts=(DeviceMount("/lib/fpga1", "/lib/fpga", True),),
        ),
    ]
    spec = build_spec(config, snapshot(devices))
    assert spec is not None
    validate_cdi_spec(spec)
    assert spec == {
        "cdiVersion": "0.5.0",
        "kind": KIND,
        "devices": [
            {
                "name": own("fpga0"),
                "containerEdits": {
                    "deviceNodes": [
                        {"path": "/dev/fpga0", "hostPath": "/dev/fpga0", "permissions": "rwm"}
                    ],
                    "env": ["VENDOR=acme"],
                },
            },
            {
                "name": own("fpga1"),
                "containerEdits": {
                    "deviceNodes": [
                        {"path": "/dev/fpga1", "hostPath": "/dev/fpga1", "permissions": "rwm"}
                    ],
                    "env": ["VENDOR=acme"],
                    "mounts": [
                        {
                            "hostPath": "/lib/fpga1",
                            "containerPath": "/lib/fpga",
                            "options": ["ro", "bind"],
                        }
                    ],
                },
            },
        ],
        # allocation-dependent templates ({ids}, {count}) and per-device values that differ
        # between devices (SLOT) only travel in the Allocate response
        "containerEdits": {
            "env": ["MODE=fast", f"RES={RESOURCE}"],
            "mounts": [
                {"hostPath": "/opt/fw", "containerPath": "/fw", "options": ["ro", "bind"]},
                {"hostPath": "/var/state", "containerPath": "/state", "options": ["rw", "bind"]},
            ],
        },
    }


def test_escaped_braces_are_text_in_the_spec_env() -> None:
    """`{{ids}}` is the text `{ids}`, not a field: it does not depend on the allocation, so
    it travels in the spec like any fixed value (and `{}` stays as it is)."""
    config = resource(env={"HINT": "{{ids}} {}", "DEVS": "{ids}"})
    spec = build_spec(config, snapshot([dev("fpga0")]))
    assert spec is not None
    assert spec["containerEdits"]["env"] == ["HINT={ids} {}"]


def test_spec_version_and_kind_rules() -> None:
    assert minimum_cdi_version("vendor.example/fpga") == "0.5.0"
    assert minimum_cdi_version("vendor.example/fpga.v2") == "0.6.0"
    spec = build_spec(resource(kind="vendor.example/fpga.v2"), snapshot([dev("0fpga")]))
    assert spec is not None and spec["cdiVersion"] == "0.6.0"
    validate_cdi_spec(spec)
    assert cdi_kind_problem("vendor.example/fpga") is None
    assert cdi_kind_problem("vendor.example/fpga.v2") is None
    for bad in ("fpga", "/fpga", "vendor/", "1vendor.example/fpga", "vendor/fpga_", "v/fpga"):
        assert cdi_kind_problem(bad) is not None, bad


def test_no_spec_without_devices_with_edits() -> None:
    config = resource()
    assert build_spec(config, snapshot([])) is None
    assert build_spec(config, snapshot([dev("bare", nodes=(), env={"K": "v"})])) is None
    assert render_spec_file(config, snapshot([])) is None


def test_spec_names_match_allocate_names() -> None:
    odd = ["dongle/1", "_hidden", "a b", "ok-1", "tail.", "x"]
    devices = [dev(i, nodes=(DeviceNode("/dev/null", f"/dev/d{n}"),)) for n, i in enumerate(odd)]
    config = resource(replicas=2)
    snap = snapshot(devices, replicas=2)
    spec = build_spec(config, snap)
    assert spec is not None
    validate_cdi_spec(spec)
    names = {d["name"] for d in spec["devices"]}
    assert names == {cdi_device_name(RESOURCE, e.id) for e in snap.advertised}  # (one per ID)
    response = AllocationBuilder(config).container_response(snap, [e.id for e in snap.advertised])
    assert set(cdi_names(response)) == {cdi_device_name(RESOURCE, f"{i}::0") for i in odd}
    assert all(c.name.startswith(f"{KIND}=") for c in response.cdi_devices)
    assert response.devices == []
    with_specs = AllocationBuilder(resource(also_device_specs=True, replicas=2))
    assert len(with_specs.container_response(snap, ["x::0", "x::1"]).devices) == 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=6, unique=True),
    st.integers(1, 3),
    st.data(),
)
def test_every_allocate_cdi_name_is_in_the_spec(
    device_ids: list[str], replicas: int, data: st.DataObject
) -> None:
    devices = [
        Device(id=i, nodes=(DeviceNode("/dev/null", f"/dev/d{n}"),))
        for n, i in enumerate(device_ids)
    ]
    config = resource(replicas=replicas)
    snap = snapshot(devices, replicas)
    spec = build_spec(config, snap)
    assert spec is not None
    validate_cdi_spec(spec)
    chosen = data.draw(
        st.lists(st.sampled_from([e.id for e in snap.advertised]), min_size=1, unique=True)
    )
    response = AllocationBuilder(config).container_response(snap, chosen)
    assert set(cdi_names(response)) <= {d["name"] for d in spec["devices"]}
    assert len(response.cdi_devices) == len({snap.by_advertised_id[i].device.id for i in chosen})


def test_file_names() -> None:
    assert spec_file_name("vendor.example/fpga") == "kdp-host_vendor.example_fpga.json"
    # one-to-one because a resource name's domain cannot hold "_" (the first "_" is the "/")
    assert spec_file_name("a.b/c_d") == "kdp-host_a.b_c_d.json"
    assert extended_resource_name_problem("a.b_c/d") is not None
    long_name = "a" * 250 + ".example/x"
    assert len(spec_file_name(long_name)) < 255
    assert spec_file_name(long_name) != spec_file_name("a" * 250 + ".example/y")
    default = ResourceConfig(
        name=RESOURCE,
        driver=GlobDriverConfig(paths=("/dev/x",)),
        allocate=AllocateConfig(cdi=CdiConfig(kind=KIND)),
    )
    assert spec_path(default) == "/var/run/cdi/kdp-host_vendor.example_fpga.json"


# --------------------------------------------------------------------------- atomic write


def test_write_atomic_replaces_by_rename(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "spec.json"
    write_atomic(str(target), b"one")
    assert target.read_bytes() == b"one"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    reader = os.open(target, os.O_RDONLY)  # an open reader keeps the old inode
    try:
        old_inode = target.stat().st_ino
        write_atomic(str(target), b"two")
        assert target.read_bytes() == b"two"
        assert target.stat().st_ino != old_inode
        assert os.read(reader, 16) == b"one"  # the old file was never modified in place
    finally:
        os.close(reader)
    assert sorted(p.name for p in target.parent.iterdir()) == ["spec.json"]


def test_write_atomic_failure_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "spec.json"
    write_atomic(str(target), b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        write_atomic(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["spec.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- the writer


class RunningWriter:
    def __init__(self, writer: CdiSpecWriter) -> None:
        self.writer = writer
        self.task = asyncio.create_task(writer.run())

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def running() -> AsyncIterator[list[RunningWriter]]:
    started: list[RunningWriter] = []
    yield started
    for item in started:
        if not item.task.done():
            await item.stop()


def start_writer(
    running: list[RunningWriter], config: ResourceConfig, table: DeviceTable, **options: Any
) -> CdiSpecWriter:
    writer = CdiSpecWriter(config, table, get_logger(), **options)
    running.append(RunningWriter(writer))
    return writer


def synced(writer: CdiSpecWriter, table: DeviceTable) -> bool:
    return writer.synced_version == table.snapshot.version


async def test_writer_keeps_file_current_and_removes_it(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    config = resource(tmp_path / "cdi")
    table = DeviceTable()
    writer = start_writer(running, config, table, debounce=0.01)
    path = Path(writer.path)
    assert path == tmp_path / "cdi" / "kdp-host_vendor.example_fpga.json"

    table.publish([dev("fpga0"), dev("fpga1")])
    await wait_until(lambda: synced(writer, table), what="first write")
    spec = read_spec_file(path)
    assert [d["name"] for d in spec["devices"]] == [own("fpga0"), own("fpga1")]
    assert writer.writes == 1

    # health does not change the spec: no write
    table.set_check_result("fpga1", False)
    await wait_until(lambda: synced(writer, table), what="health change seen")
    assert writer.writes == 1

    table.publish([dev("fpga0"), dev("fpga1"), dev("fpga2")])
    await wait_until(lambda: synced(writer, table), what="hot-plug")
    assert [d["name"] for d in read_spec_file(path)["devices"]] == [
        own("fpga0"),
        own("fpga1"),
        own("fpga2"),
    ]
    assert writer.writes == 2

    # every device gone: CDI rejects a spec without devices, so the file goes
    table.publish([])
    await wait_until(lambda: synced(writer, table), what="empty list")
    assert not path.exists()

    table.publish([dev("fpga0")])
    await wait_until(lambda: path.exists() and synced(writer, table), what="rewrite")
    await running[0].stop()
    assert not path.exists()
    assert list((tmp_path / "cdi").iterdir()) == []


async def test_writer_coalesces_a_burst(tmp_path: Path, running: list[RunningWriter]) -> None:
    table = DeviceTable()
    table.publish([dev("fpga0")])
    # A debounce far longer than the burst takes even on a loaded machine.
    writer = start_writer(running, resource(tmp_path), table, debounce=1.0)
    await wait_until(lambda: synced(writer, table), what="first write")
    assert writer.writes == 1
    for n in range(2, 30):
        table.publish([dev(f"fpga{i}") for i in range(n)])
        await asyncio.sleep(0)  # the writer runs between changes, as during a real burst
    await wait_until(lambda: synced(writer, table), what="burst written")
    assert writer.writes == 2
    assert len(read_spec_file(writer.path)["devices"]) == 29


async def test_writer_leaves_identical_file_alone(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    config = resource(tmp_path)
    table = DeviceTable()
    table.publish([dev("fpga0")])
    content = render_spec_file(config, table.snapshot)
    assert content is not None
    path = Path(spec_path(config))
    path.write_bytes(content)  # left by a previous run of the host
    inode = path.stat().st_ino
    writer = start_writer(running, config, table)
    await wait_until(lambda: synced(writer, table), what="sync")
    assert writer.writes == 0 and path.stat().st_ino == inode


async def test_writer_survives_write_errors(tmp_path: Path, running: list[RunningWriter]) -> None:
    blocker = tmp_path / "cdi"
    blocker.write_text("a file where the directory should be")
    table = DeviceTable()
    table.publish([dev("fpga0")])
    writer = start_writer(running, resource(blocker), table, retry_interval=0.01, debounce=0.0)
    await wait_until(lambda: writer.failures >= 3, what="failed attempts, retried")
    assert not running[0].task.done() and writer.writes == 0
    blocker.unlink()
    await wait_until(lambda: synced(writer, table), what="retry after the error cleared")
    assert writer.writes == 1 and Path(writer.path).exists()


async def test_writer_restores_a_spec_file_removed_behind_its_back(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """During a rolling upgrade the stopping instance removes the same file name."""
    table = DeviceTable()
    table.publish([dev("fpga0")])
    writer = start_writer(running, resource(tmp_path), table, debounce=0.01, verify_interval=0.05)
    await wait_until(lambda: synced(writer, table), what="first write")
    Path(writer.path).unlink()
    # The file reappears (atomic rename) a moment before the writer counts the write.
    await wait_until(
        lambda: Path(writer.path).exists() and writer.writes >= 2, what="file written again"
    )
    assert writer.writes == 2
    read_spec_file(writer.path)


async def test_an_unwritable_spec_file_holds_devices_unhealthy_and_is_reported(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """Issue 10 item 17: no healthy device whose CDI name cannot resolve; the failure is
    counted and reported (the resource is then not ready) with a reason naming no path."""
    blocker = tmp_path / "cdi"
    blocker.write_text("a file where the directory should be")
    table = DeviceTable()
    table.publish([dev("fpga0"), dev("fpga1")])
    reports: list[str | None] = []
    counted: list[int] = []
    writer = CdiSpecWriter(
        resource(blocker),
        table,
        get_logger(),
        retry_interval=0.01,
        debounce=0.0,
        report=reports.append,
        count_failure=lambda: counted.append(1),
    )
    running.append(RunningWriter(writer))
    await wait_until(lambda: writer.failures >= 2, what="failed attempts")
    assert table.snapshot.healthy_count == 0 and table.snapshot.unhealthy_count == 2
    assert len(counted) == writer.failures
    assert reports and reports[-1] is not None and "CDI spec file not written" in reports[-1]
    assert str(tmp_path) not in reports[-1]

    blocker.unlink()
    await wait_until(lambda: synced(writer, table), what="written after the error cleared")
    assert reports[-1] is None
    await wait_until(lambda: table.snapshot.healthy_count == 2, what="devices healthy again")


async def test_a_new_device_is_unhealthy_until_its_spec_is_written(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    table = DeviceTable()
    writer = start_writer(running, resource(tmp_path), table, debounce=0.01)
    table.publish([dev("fpga0")])
    assert table.snapshot.unhealthy_count == 1  # before the writer ran
    await wait_until(lambda: table.snapshot.healthy_count == 1, what="fpga0 written")
    assert "fpga0" in read_spec_file(writer.path)["devices"][0]["name"]
    table.publish([dev("fpga0"), dev("fpga1")])
    assert [d.healthy for d in table.snapshot.devices] == [True, False]
    await wait_until(lambda: table.snapshot.healthy_count == 2, what="fpga1 written")


async def test_a_spec_file_of_another_kind_resolves_nothing(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """A file left with the same name by a config with another kind: its names do not
    resolve for this kind until it is rewritten."""
    from kdp_host.cdi_files import spec_entries

    config = resource(tmp_path)
    table = DeviceTable()
    table.publish([dev("fpga0")])
    content = render_spec_file(config, table.snapshot)
    assert content is not None
    assert set(spec_entries(content, KIND)) == {own("fpga0")}
    assert spec_entries(content, "other.example/kind") == {}
    assert spec_entries(b"{not json", KIND) == {}
    assert spec_entries(b'{"kind": "%s", "devices": "x"}' % KIND.encode(), KIND) == {}


# --------------------------------------------------------------------------- handover


async def test_a_stopping_instance_leaves_the_spec_file_the_new_instance_owns(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """A rolling upgrade (maxSurge: two instances on one node): the old instance stops while
    the new one serves the same resource from the same file name. The old one must neither
    remove the file nor fight over it."""
    config = resource(tmp_path)
    old_table, new_table = DeviceTable(), DeviceTable()
    for table in (old_table, new_table):
        table.publish([dev("fpga0"), dev("fpga1")])
    old = start_writer(running, config, old_table, debounce=0.0, instance="old")
    await wait_until(lambda: synced(old, old_table), what="the old instance wrote")
    new = start_writer(running, config, new_table, debounce=0.0, instance="new")
    await wait_until(lambda: synced(new, new_table), what="the new instance took over")
    assert Path(new.owner_file).read_text().strip() == "new"
    # a device the old one still sees changes: it leaves the file to the owner
    old_table.publish([dev("fpga0")])
    await wait_until(lambda: synced(old, old_table), what="the old instance saw its change")
    await running[0].stop()
    path = Path(new.path)
    assert path.exists(), "the old instance removed the new instance's spec file"
    assert [d["name"] for d in read_spec_file(path)["devices"]] == [own("fpga0"), own("fpga1")]
    assert all(d.healthy for d in new_table.snapshot.devices)
    await running[1].stop()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("new_kind", [KIND, "vendor.example/other"])
async def test_an_old_instance_whose_names_the_new_owner_dropped_holds_them_and_says_so(
    tmp_path: Path, running: list[RunningWriter], new_kind: str
) -> None:
    """hostile20 F1: a rolling update that changes `allocate.cdi.kind`. The new instance owns
    the file and writes its kind; the old one must not advertise names no file defines
    (its devices Unhealthy, /readyz told why) as soon as the watcher reports the write (no
    periodic check here). With the same kind, the old one's names resolve: nothing held."""
    watcher = make_watcher(get_logger())
    watch_task = asyncio.create_task(watcher.run())
    try:
        reasons: dict[str, list[str | None]] = {"old": [], "new": []}
        tables = {"old": DeviceTable(), "new": DeviceTable()}
        writers = {}
        for instance, kind in (("old", KIND), ("new", new_kind)):
            tables[instance].publish([dev("fpga0"), dev("fpga1")])
            writers[instance] = start_writer(
                running, resource(tmp_path, kind=kind), tables[instance], debounce=0.0,
                verify_interval=3600.0, watcher=watcher, instance=instance,
                report=reasons[instance].append,
            )  # fmt: skip
            await wait_until(
                lambda i=instance: synced(writers[i], tables[i]), what=f"{instance} synced"
            )
        assert read_spec_file(writers["new"].path)["kind"] == new_kind
        if new_kind == KIND:
            await wait_until(lambda: synced(writers["old"], tables["old"]), what="old synced")
            assert all(d.healthy for d in tables["old"].snapshot.devices)
            assert UNOWNED_REASON not in reasons["old"]
            return
        await wait_until(
            lambda: not any(d.healthy for d in tables["old"].snapshot.devices),
            what="the old instance's devices held",
        )
        await wait_until(lambda: reasons["old"][-1:] == [UNOWNED_REASON], what="told why")
        assert all(d.healthy for d in tables["new"].snapshot.devices)
    finally:
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task


async def test_a_killed_owners_file_naming_our_devices_elsewhere_holds_them_until_its_lease_ends(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """hostile20 F3: the new instance (the file's owner) is killed after its list changed
    (fpga0 and fpga1 swapped nodes); its file stays, its lease runs for up to 30 s. The
    survivor's Allocates are refused meanwhile (the answer waits for the file): its devices
    are Unhealthy and /readyz says why, not Healthy and ready."""
    watcher = make_watcher(get_logger())
    watch_task = asyncio.create_task(watcher.run())
    try:
        reasons: list[str | None] = []
        table = DeviceTable()
        table.publish([dev("fpga0"), dev("fpga1")])
        config = resource(tmp_path)
        writer = start_writer(
            running, config, table, debounce=0.0, verify_interval=3600.0, watcher=watcher,
            instance="survivor", report=reasons.append,
        )  # fmt: skip
        await wait_until(lambda: synced(writer, table), what="first write")
        swapped = snapshot(
            [
                dev("fpga0", nodes=(DeviceNode("/dev/fpga1", "/dev/fpga0"),)),
                dev("fpga1", nodes=(DeviceNode("/dev/fpga0", "/dev/fpga1"),)),
            ]
        )
        write_atomic(writer.owner_file, b"killed\n")  # (its lease fresh: a live owner)
        write_atomic(writer.path, render_spec_file(config, swapped))
        await wait_until(
            lambda: not any(d.healthy for d in table.snapshot.devices), what="devices held"
        )
        await wait_until(lambda: reasons[-1:] == [UNOWNED_REASON], what="told why")
    finally:
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task


async def test_a_spec_file_removed_behind_the_writers_back_is_seen_at_once(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """The spec dir is watched: a removal is noticed (devices held Unhealthy) and repaired
    without waiting for the periodic check (here: never)."""
    log = get_logger()
    watcher = make_watcher(log)
    watch_task = asyncio.create_task(watcher.run())
    try:
        table = DeviceTable()
        table.publish([dev("fpga0")])
        writer = start_writer(
            running, resource(tmp_path), table, debounce=0.0, verify_interval=3600.0,
            watcher=watcher,
        )  # fmt: skip
        await wait_until(lambda: synced(writer, table), what="first write")
        Path(writer.path).unlink()
        await wait_until(
            lambda: Path(writer.path).exists() and writer.writes == 2, what="written again"
        )
        read_spec_file(writer.path)
    finally:
        for item in running:
            await item.stop()
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task


async def test_an_owner_whose_lease_ran_out_is_taken_over(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """An instance killed without cleanup leaves its owner file: once its lease is over,
    another instance writes the spec file again."""
    config = resource(tmp_path)
    owner = Path(owner_path(spec_path(config)))
    owner.write_text("killed\n")
    os.utime(owner, (0, 0))
    assert read_owner(str(owner), lease=30.0) is None
    table = DeviceTable()
    table.publish([dev("fpga0")])
    writer = start_writer(running, config, table, debounce=0.0, instance="live")
    await wait_until(lambda: synced(writer, table), what="written")
    assert owner.read_text().strip() == "live" and Path(writer.path).exists()
    os.utime(owner)
    assert read_owner(str(owner), lease=30.0) == "live"


# --------------------------------------------------------------------------- official schema


def _every_shape() -> list[ResourceConfig]:
    """One resource per way the host can fill a spec: every key `build_spec` can write.

    The spec file carries only what holds for a device whatever else the container gets
    (kdp_host/cdi.py): `allocate.command` output, `allocate.annotations`, per-device
    annotations and allocation-dependent env travel in the Allocate response only, so the
    resources that have them must still write a valid spec without them."""
    full = AllocateConfig(
        env={"MODE": "fast", "IDS": "{ids}", "RES": "{resource}"},
        mounts=(MountConfig("/opt/fw", "/fw"), MountConfig("/var/state", "/state", False)),
        annotations={"vendor.example/slot": "{ids}", "plain": "x"},
        permissions="rwm",
        command=("/bin/true", "{ids}"),
        cdi=CdiConfig(
            kind="vendor.example/fpga.v2",
            device_gid=44,
            device_file_mode="0660",
            additional_gids=(44, 107),
        ),
    )
    return [
        resource(),
        resource(kind="vendor.example/fpga.v2", permissions="r"),
        ResourceConfig(name=RESOURCE, driver=GlobDriverConfig(paths=("/dev/x*",)), allocate=full),
        ResourceConfig(
            name=RESOURCE,
            driver=GlobDriverConfig(paths=("/dev/x*",)),
            allocate=AllocateConfig(cdi=CdiConfig(kind=KIND, device_gid=0)),
        ),
    ]


SHAPE_DEVICES = [
    dev("fpga0", env={"SLOT": "0", "VENDOR": "acme"}, annotations={"a.example/b": "c"}),
    dev("fpga1", env={"SLOT": "1", "VENDOR": "acme"}),
    dev("0dev", nodes=(DeviceNode("/dev/a", "/dev/x", "r"), DeviceNode("/dev/b", "/dev/y"))),
    dev("dongle/1", nodes=(), mounts=(DeviceMount("/srv/d1", "/d", read_only=False),)),
    dev("both", mounts=(DeviceMount("/srv/b", "/b"),)),
    dev("bare", nodes=(), env={"ONLY": "env"}),
]


def _keys(value: Any, at: str = "") -> set[str]:
    """Every key path of a spec (`devices[].containerEdits.deviceNodes[].gid`)."""
    if isinstance(value, dict):
        found: set[str] = set()
        for key, item in value.items():
            path = f"{at}.{key}" if at else key
            found |= {path} | _keys(item, path)
        return found
    if isinstance(value, list):
        return set().union(*(_keys(item, f"{at}[]") for item in value))
    return set()


WRITTEN_KEYS = {
    "cdiVersion",
    "kind",
    "devices",
    "devices[].name",
    "devices[].containerEdits",
    *(
        f"{at}.{key}"
        for at in ("devices[].containerEdits", "containerEdits")
        for key in ("env", "mounts", "mounts[].hostPath", "mounts[].containerPath")
    ),
    "devices[].containerEdits.mounts[].options",
    "containerEdits.mounts[].options",
    *(
        f"devices[].containerEdits.deviceNodes{suffix}"
        for suffix in ("", "[].path", "[].hostPath", "[].permissions", "[].gid", "[].fileMode")
    ),
    "containerEdits",
    "containerEdits.additionalGids",
}
"""Every key the host writes into a spec file (kdp_host/cdi.py `build_spec`)."""


def test_specs_validate_against_the_official_cdi_schema() -> None:
    """Every shape of spec the host writes, as the bytes it writes, against the official CDI
    JSON schema (issue 20 item 10), and every key the host writes is among them. The schema
    is not copied into the repository: `make test` fetches it (`make cdi-schema`), and the
    test runs where it is present (tests/cdi_spec.py says where)."""
    validator = official_cdi_validator()
    if validator is None:
        pytest.skip(missing_schema_reason())
    seen: set[str] = set()
    for config in _every_shape():
        content = render_spec_file(config, snapshot(SHAPE_DEVICES))
        assert content is not None
        spec = json.loads(content)
        assert not list(validator.iter_errors(spec)), config
        validate_cdi_spec(spec)
        seen |= _keys(spec)
    assert seen == WRITTEN_KEYS
    # not vacuous: what CDI refuses, the schema refuses
    good = json.loads(render_spec_file(resource(), snapshot(SHAPE_DEVICES[:1])) or b"")
    for breakage in (
        lambda spec: spec.pop("devices"),
        lambda spec: spec.pop("cdiVersion"),
        lambda spec: spec["devices"][0]["containerEdits"]["deviceNodes"][0].pop("path"),
        lambda spec: spec["devices"][0].pop("containerEdits"),
        lambda spec: spec["devices"][0]["containerEdits"].update(env="A=b"),
        lambda spec: spec["devices"][0]["containerEdits"]["deviceNodes"][0].update(gid="44"),
    ):
        broken = json.loads(json.dumps(good))
        breakage(broken)
        assert list(validator.iter_errors(broken)), broken


_PATHS = st.from_regex(r"/[a-z0-9_.-]{1,8}(/[a-z0-9_.-]{1,8}){0,2}", fullmatch=True)
_ENV_KEYS = st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True)


@st.composite
def _any_device(draw: st.DrawFn, device_id: str) -> Device:
    nodes = draw(
        st.lists(
            st.builds(
                DeviceNode,
                _PATHS,
                _PATHS,
                st.sampled_from([None, "r", "rw", "rwm", "m"]),
            ),
            max_size=3,
        )
    )
    mounts = draw(st.lists(st.builds(DeviceMount, _PATHS, _PATHS, st.booleans()), max_size=2))
    env = draw(st.dictionaries(_ENV_KEYS, st.text(max_size=5), max_size=2))
    return Device(id=device_id, nodes=tuple(nodes), mounts=tuple(mounts), env=env)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5, unique=True),
    st.dictionaries(_ENV_KEYS, st.sampled_from(["x", "{ids}", "{resource}", "{{ids}}"])),
    st.lists(st.builds(MountConfig, _PATHS, _PATHS, st.booleans()), max_size=2),
    st.sampled_from([KIND, "vendor.example/fpga.v2", "a-b.c/d_e"]),
    st.one_of(st.none(), st.integers(0, 65535)),
    st.one_of(st.none(), st.sampled_from(["0660", "600", "0777"])),
    st.lists(st.integers(0, 65535), max_size=3),
    st.data(),
)
def test_any_spec_the_host_writes_is_a_valid_cdi_spec(
    device_ids: list[str],
    env: dict[str, str],
    mounts: list[MountConfig],
    kind: str,
    gid: int | None,
    mode: str | None,
    gids: list[int],
    data: st.DataObject,
) -> None:
    """Whatever the devices and the allocate section, the file is a spec CDI accepts: the
    official schema where present, and CDI's own rules always (tests/cdi_spec.py)."""
    config = ResourceConfig(
        name=RESOURCE,
        driver=GlobDriverConfig(paths=("/dev/x*",)),
        allocate=AllocateConfig(
            env=env,
            mounts=tuple(mounts),
            cdi=CdiConfig(
                kind=kind, device_gid=gid, device_file_mode=mode, additional_gids=tuple(gids)
            ),
        ),
    )
    devices = [data.draw(_any_device(device_id)) for device_id in device_ids]
    content = render_spec_file(config, snapshot(devices))
    if content is None:
        assert not any(d.nodes or d.mounts for d in devices)
        return
    spec = json.loads(content)
    validate_cdi_spec(spec)
    assert len(spec["devices"]) == sum(1 for d in devices if d.nodes or d.mounts)


# ------------------------------------------------------------- other files of the spec dir


def _spec(kind: str, *names: str) -> str:
    devices = [
        {"name": name, "containerEdits": {"deviceNodes": [{"path": "/dev/x"}]}} for name in names
    ]
    return json.dumps({"cdiVersion": "0.5.0", "kind": kind, "devices": devices})


async def test_a_stale_spec_file_of_the_kind_is_removed_a_live_ones_kept(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """hostile6 M5: a SIGKILLed instance served the kind under another resource name; its
    file stays next to the new one. Once no live instance owns it (no owner file, or its
    lease ran out) the writer removes it; one a live instance owns (a rolling update) stays,
    and so do files of other kinds."""
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    dead = spec_dir / spec_file_name("vendor.example/old")
    dead.write_text(_spec(KIND, "vendor.example_old:fpga0"))
    expired = spec_dir / spec_file_name("vendor.example/gone")
    expired.write_text(_spec(KIND, "vendor.example_gone:fpga0"))
    Path(owner_path(str(expired))).write_text("dead\n")
    os.utime(owner_path(str(expired)), (1, 1))
    live = spec_dir / spec_file_name("vendor.example/live")
    live.write_text(_spec(KIND, "vendor.example_live:fpga0"))
    Path(owner_path(str(live))).write_text("other\n")
    other_kind = spec_dir / spec_file_name("vendor.example/gpu")
    other_kind.write_text(_spec("vendor.example/gpu", "vendor.example_gpu:gpu0"))
    table = DeviceTable()
    writer = start_writer(running, resource(spec_dir), table, debounce=0.0)
    table.publish([dev("fpga0")])
    await wait_until(lambda: synced(writer, table), what="first write")
    assert not dead.exists() and not expired.exists()
    assert not Path(owner_path(str(expired))).exists()
    assert live.exists() and other_kind.exists()


async def test_a_name_another_file_defines_holds_the_device_and_the_resource_not_ready(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """hostile6 M5: CDI drops a name two files of one spec dir define (every container
    naming it fails to start). The device is held Unhealthy and /readyz says why, until the
    other file goes."""
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    reasons: list[str | None] = []
    table = DeviceTable()
    writer = start_writer(
        running, resource(spec_dir), table, debounce=0.0, verify_interval=0.05,
        report=reasons.append,
    )  # fmt: skip
    table.publish([dev("fpga0"), dev("fpga1")])
    await wait_until(lambda: synced(writer, table), what="first write")
    assert table.snapshot.healthy_count == 2
    vendor = spec_dir / "vendor.json"
    vendor.write_text(_spec(KIND, own("fpga0")))
    await wait_until(lambda: reasons[-1:] == [CLASH_REASON], what="the clash reported")
    assert table.snapshot.healthy_count == 1
    assert vendor.exists()  # not kdp-host's: never removed
    vendor.unlink()
    await wait_until(lambda: reasons[-1:] == [None], what="the clash cleared")
    await wait_until(lambda: table.snapshot.healthy_count == 2, what="fpga0 healthy again")


async def test_a_spec_file_linked_from_elsewhere_is_written_again_as_a_fresh_file(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """hostile11 K4: a hard link made outside the spec dir lets a write reach the file with
    no event in the spec dir. At the next check the file is written again as a fresh file
    even when its content is still right, so the link no longer names what runtimes read."""
    table = DeviceTable()
    table.publish([dev("fpga0")])
    writer = start_writer(running, resource(tmp_path), table, debounce=0.0, verify_interval=0.05)
    await wait_until(lambda: synced(writer, table), what="first write")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = elsewhere / "spec.json"
    os.link(writer.path, link)
    await wait_until(lambda: os.stat(writer.path).st_nlink == 1, what="the link broken")
    good = Path(writer.path).read_bytes()
    link.write_bytes(b'{"tampered": true}')
    assert Path(writer.path).read_bytes() == good
    assert writer.writes == 2
